"""The cache folder: fingerprint, constants, safetensors shards and the index that maps records to them.

    CACHE_DIR/fingerprint.json      what the tensors were computed from (`fingerprint.py`)
    CACHE_DIR/constants.safetensors run-level tensors of the family (e.g. the empty prompt's embedding)
    CACHE_DIR/shards/shard-FIRST-LAST.safetensors
                                    the tensors of records FIRST..LAST, named "RECORD/NAME"; records
                                    that could not be loaded are listed in the header's metadata
    CACHE_DIR/index.json            per record: its clip (manifest index, media, size, frames), its
                                    shard and its tensors' names, dtypes and shapes; written last,
                                    so its presence means the cache is complete

A record is one planned sample of epoch 0, numbered in plan order (global batch by global batch).
Every file is written beside its destination and renamed into place: a killed run leaves whole
shards or none, and a rerun finds the finished shards by name and encodes only the rest.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidctrl.errors import UserError
from vidctrl.integrity import SHA256_KEY, digest_damage, safetensors_damage, tensor_digest

FINGERPRINT = "fingerprint.json"
CONSTANTS = "constants.safetensors"
INDEX = "index.json"
SHARDS = "shards"
SHARD_PATTERN = re.compile(r"^shard-(\d{8})-(\d{8})\.safetensors$")
SHARD_FORMAT = "vidctrl-cache-1"


class CacheError(UserError):
    """A cache that cannot be used or written as asked (the message says what to do)."""


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 1) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(value, indent=indent, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write a safetensors file beside `path` and rename it into place; returns its size. The file's
    metadata carries a checksum of its tensors, verified when a rerun reuses the file."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    save_file(tensors, str(tmp), metadata={**metadata, SHA256_KEY: tensor_digest(tensors)})
    os.replace(tmp, path)
    return path.stat().st_size


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)


def shard_name(first: int, last: int) -> str:
    return f"shard-{first:08d}-{last:08d}.safetensors"


def finished_records(cache_dir: Path) -> set[int]:
    """Records held by the finished shards (their names say which)."""
    done: set[int] = set()
    folder = cache_dir / SHARDS
    if folder.is_dir():
        for path in folder.iterdir():
            match = SHARD_PATTERN.match(path.name)
            if match:
                done.update(range(int(match.group(1)), int(match.group(2)) + 1))
    return done


def remove_damaged_files(cache_dir: Path) -> list[str]:
    """Check every finished shard and the constants file (framing, then the checksum written with
    each) and delete the damaged ones, so that the run re-encodes them; returns what was wrong.

    A damaged file invalidates the index too: it is removed and rebuilt once the records are back.
    """
    damaged: list[str] = []
    files = [cache_dir / CONSTANTS]
    if (cache_dir / SHARDS).is_dir():
        files += sorted(p for p in (cache_dir / SHARDS).iterdir() if SHARD_PATTERN.match(p.name))
    for path in files:
        if not path.is_file():
            continue
        damage = digest_damage(path)
        if damage:
            damaged.append(f"{path}: {damage}")
            path.unlink()
    if damaged:
        (cache_dir / INDEX).unlink(missing_ok=True)
    return damaged


def cache_file_damage(cache_dir: Path, shards: list[str]) -> list[str]:
    """The framing check of `remove_damaged_files` (header against size; no tensor is read), for a
    training run about to read the cache."""
    paths = [cache_dir / CONSTANTS, *(cache_dir / SHARDS / name for name in shards)]
    found = []
    for path in paths:
        damage = safetensors_damage(path) if path.is_file() else "missing"
        if damage:
            found.append(f"{path}: {damage}")
    return found


def remove_partial_files(cache_dir: Path) -> None:
    """Temporary files of a killed run (never renamed into place)."""
    for folder in (cache_dir, cache_dir / SHARDS):
        if folder.is_dir():
            for path in folder.glob(".tmp-*"):
                path.unlink(missing_ok=True)


class ShardWriter:
    """Collects encoded records in RAM and writes them as shards of consecutive records, each about
    `max_bytes` (a shard also ends where the records this rank writes stop being consecutive)."""

    def __init__(self, cache_dir: Path, *, max_bytes: int) -> None:
        self.folder = cache_dir / SHARDS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.tensors: dict[str, torch.Tensor] = {}
        self.skipped: dict[int, str] = {}
        self.first: int | None = None
        self.last: int | None = None
        self.pending_bytes = 0
        self.written_bytes = 0
        self.shards: list[Path] = []

    def add(self, record: int, tensors: dict[str, torch.Tensor] | None, *, skipped: str | None = None) -> None:
        """Add one record's tensors (or, for a sample that could not be loaded, the reason)."""
        if self.last is not None and record != self.last + 1:
            self.flush()
        if self.first is None:
            self.first = record
        self.last = record
        if tensors is None:
            self.skipped[record] = skipped or "could not be loaded"
        else:
            for name, tensor in tensors.items():
                # A copy of its own: samples are often views into one batch tensor, which safetensors refuses.
                own = tensor.detach().to("cpu").clone().contiguous()
                self.tensors[f"{record}/{name}"] = own
                self.pending_bytes += own.numel() * own.element_size()
        if self.pending_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.first is None or self.last is None:
            return
        path = self.folder / shard_name(self.first, self.last)
        metadata = {"format": SHARD_FORMAT, "skipped": json.dumps({str(k): v for k, v in self.skipped.items()})}
        self.written_bytes += save_tensors_atomic(path, self.tensors, metadata)
        self.shards.append(path)
        self.tensors, self.skipped = {}, {}
        self.first = self.last = None
        self.pending_bytes = 0


@dataclass(frozen=True)
class PlannedRecord:
    """One planned sample: which manifest record, its file, the size and frame count of its batch."""

    index: int
    media: str
    height: int
    width: int
    frames: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.frames)


@dataclass
class CacheIndex:
    """`index.json`: where each record's tensors are, and what they are."""

    records: list[PlannedRecord]
    shards: list[str]
    shard_of: list[int]  # per record: position in `shards`
    specs: list[dict[str, list[Any]]]  # distinct {tensor name: [dtype, shape]} of records
    spec_of: list[int]  # per record: position in `specs`, -1 for a skipped record
    skipped: dict[int, str] = field(default_factory=dict)
    global_batch_size: int = 1
    excluded: int = 0  # dataset records left out when the dataset was loaded
    total_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT,
            "global_batch_size": self.global_batch_size,
            "excluded": self.excluded,
            "bytes": self.total_bytes,
            "shards": self.shards,
            "specs": self.specs,
            "skipped": {str(k): v for k, v in self.skipped.items()},
            # index, media, height, width, frames, shard, spec
            "records": [[r.index, r.media, r.height, r.width, r.frames, self.shard_of[i], self.spec_of[i]]
                        for i, r in enumerate(self.records)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheIndex:
        rows = data["records"]
        return cls(
            records=[PlannedRecord(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows],
            shards=list(data["shards"]),
            shard_of=[int(r[5]) for r in rows],
            specs=list(data["specs"]),
            spec_of=[int(r[6]) for r in rows],
            skipped={int(k): v for k, v in data.get("skipped", {}).items()},
            global_batch_size=int(data["global_batch_size"]),
            excluded=int(data.get("excluded", 0)),
            total_bytes=int(data.get("bytes", 0)),
        )

    def tensor_names(self, record: int) -> list[str]:
        spec = self.spec_of[record]
        return [] if spec < 0 else list(self.specs[spec])


def build_index(cache_dir: Path, records: list[PlannedRecord], *, global_batch_size: int,
                excluded: int) -> CacheIndex:
    """Read every shard's header and map each planned record to its shard and tensors. A record that
    no shard holds means a rank did not finish: the error says to rerun `vidctrl cache`."""
    shards: list[str] = []
    shard_of = [-1] * len(records)
    spec_of = [-1] * len(records)
    specs: list[dict[str, list[Any]]] = []
    spec_ids: dict[str, int] = {}
    skipped: dict[int, str] = {}
    total = 0
    paths = sorted(p for p in (cache_dir / SHARDS).iterdir() if SHARD_PATTERN.match(p.name))
    for path in paths:
        per_record: dict[int, dict[str, list[Any]]] = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != SHARD_FORMAT:
                raise CacheError(f"{path} is not a vidctrl cache shard; remove it or use another --cache_dir")
            for key in handle.keys():  # noqa: SIM118 (not a dict)
                record, name = key.split("/", 1)
                view = handle.get_slice(key)
                per_record.setdefault(int(record), {})[name] = [view.get_dtype(), list(view.get_shape())]
            shard_skipped = {int(k): v for k, v in json.loads(metadata.get("skipped", "{}")).items()}
        match = SHARD_PATTERN.match(path.name)
        assert match is not None
        held = range(int(match.group(1)), int(match.group(2)) + 1)
        position = len(shards)
        shards.append(path.name)
        total += path.stat().st_size
        for record in held:
            if record >= len(records) or shard_of[record] >= 0:
                continue  # a record encoded twice (reruns with another number of processes): keep the first
            shard_of[record] = position
            if record in shard_skipped:
                skipped[record] = shard_skipped[record]
                continue
            spec = per_record.get(record)
            if not spec:
                raise CacheError(f"{path} names record {record} but holds no tensor of it; delete the shard and "
                                 "rerun `vidctrl cache`")
            key = json.dumps(spec, sort_keys=True)
            if key not in spec_ids:
                spec_ids[key] = len(specs)
                specs.append(dict(sorted(spec.items())))
            spec_of[record] = spec_ids[key]
    missing = [i for i, shard in enumerate(shard_of) if shard < 0]
    if missing:
        raise CacheError(
            f"{len(missing)} of {len(records)} records are not in the cache at {cache_dir} (the first: record "
            f"{missing[0]}, {records[missing[0]].media}); a process did not finish. Rerun `vidctrl cache` with the "
            "same flags: it encodes only what is missing"
        )
    return CacheIndex(records=records, shards=shards, shard_of=shard_of, specs=specs, spec_of=spec_of,
                      skipped=skipped, global_batch_size=global_batch_size, excluded=excluded, total_bytes=total)


def remove_cache_files(cache_dir: Path) -> None:
    """Delete a previous cache's files (only vidctrl's own: fingerprint, constants, index, shards)."""
    for name in (INDEX, CONSTANTS, FINGERPRINT):
        (cache_dir / name).unlink(missing_ok=True)
    shards = cache_dir / SHARDS
    if shards.is_dir():
        for path in shards.iterdir():
            if SHARD_PATTERN.match(path.name) or path.name.startswith(".tmp-"):
                path.unlink()
        if not any(shards.iterdir()):
            shards.rmdir()


def foreign_files(cache_dir: Path) -> list[Path]:
    """Entries of `cache_dir` that are not part of a vidctrl cache (to refuse clobbering a user's folder)."""
    known = {INDEX, CONSTANTS, FINGERPRINT, SHARDS}
    return sorted(p for p in cache_dir.iterdir() if p.name not in known and not p.name.startswith("."))

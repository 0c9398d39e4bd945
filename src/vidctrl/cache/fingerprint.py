"""What decides the tensors of a latent cache, so that a stale cache is refused, naming what changed.

A cache holds, for every sample of a planned epoch, what the frozen encoders computed from one clip
at one size. Those tensors change when the encoders change (their files), when the encoding changes
(precision, VAE tiling, the family options that `encode_deterministic` reads, the train mode), and
when the plan changes (dataset files, every sampling and bucket flag, the seed, the global batch
size, which decides how batches and their sizes are drawn). All of that goes into the fingerprint;
the run length, the optimizer, logging and validation do not.

Files are compared by (size, modification time), not by content: hashing 30 GB of encoder weights
on every run would cost minutes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

FORMAT = 1

# DataConfig fields that do not change which clips are planned or what they contain. The plan depends
# on the global batch size only (fingerprinted as such): 2 processes x 1 sample plan what 1 x 2 does.
DATA_FIELDS_NOT_FINGERPRINTED = frozenset({"dataloader_num_workers", "train_batch_size"})
# DataConfig fields naming dataset files whose size and modification time are fingerprinted.
DATA_SOURCE_FIELDS = ("train_data_meta", "data_root", "meta_info_path", "manifest")


def file_stamp(path: Path) -> list[int]:
    """[size in bytes, modification time in ns] of a file."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def data_files(data: Any) -> dict[str, list[int]]:
    """Stamps of the dataset's index files (metadata JSON/CSV, DynamiCtrl's video and prompt lists,
    ControlNeXt's meta_info, a manifest); folders are compared by the flags that name them."""
    files: list[Path] = []
    for name in DATA_SOURCE_FIELDS:
        value = getattr(data, name, None)
        if value is not None and Path(value).is_file():
            files.append(Path(value))
    if data.data_root is not None:
        files += [Path(data.data_root) / data.video_column, Path(data.data_root) / data.caption_column]
    return {str(f.resolve()): file_stamp(f) for f in files if f.is_file()}


def cache_fingerprint(config: Any, family: Any, *, world_size: int) -> dict[str, Any]:
    """Everything that decides a cache's tensors for this run (see the module docstring)."""
    model = config.model
    if model.pretrained_model_name_or_path is None:
        raise ValueError("--pretrained_model_name_or_path is required (a local folder; `vidctrl model tiny` writes one)")
    root = Path(model.pretrained_model_name_or_path)
    data = {f.name: _plain(getattr(config.data, f.name)) for f in dataclasses.fields(config.data)
            if f.name not in DATA_FIELDS_NOT_FINGERPRINTED}
    return {
        "format": FORMAT,
        "preset": config.preset,
        "train_mode": family.train_mode,
        "family": {name: _plain(getattr(family.options, name)) for name in family.cache_options},
        "encoders": {
            "model": str(root.resolve()),
            "files": {str(f.relative_to(root)): file_stamp(f) for f in family.encoder_files(root)},
            "mixed_precision": config.run.mixed_precision,
            "enable_tiling": model.enable_tiling,
            "enable_slicing": model.enable_slicing,
        },
        "data": data,
        "data_files": data_files(config.data),
        "frame_multiple": family.frame_multiple,
        "global_batch_size": config.data.train_batch_size * world_size,
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _describe(key: str, value: Any) -> str:
    if value is None:
        return "unset"
    if key.startswith(("encoders.files.", "data_files.")) and isinstance(value, list) and len(value) == 2:
        return f"{value[0]} bytes"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_changes(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a cache's fingerprint and this run's, one readable line per setting."""
    old, new = _flatten(cached), _flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        if key not in new:
            changes.append(f"{key} is gone")
        elif key not in old:
            changes.append(f"{key} is new")
        elif key.startswith(("encoders.files.", "data_files.")) and old[key][0] == new[key][0]:
            changes.append(f"{key} was modified")
        else:
            changes.append(f"{key} {_describe(key, old[key])} -> {_describe(key, new[key])}")
    return changes

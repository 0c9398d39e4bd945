"""From data flags to batches: import, probe, plan buckets, sample, decode in workers, resume.

`build_loader(config)` is what training, `vidctrl demo` and the benchmarks use. Its `ClipLoader`
counts the batches the consumer actually took (not the ones DataLoader workers prefetched), so
`state_dict()` pins the exact position and `load_state_dict()` continues with the next batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import DataLoader

from vidctrl.data.check import InspectSettings, inspect_record, inspect_records, record_problems
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.dataset import ClipDataset, collate_clips
from vidctrl.data.manifest import Manifest
from vidctrl.data.records import PROBED_FIELDS, DataError, Problem, Record
from vidctrl.data.sampler import BucketBatchSampler
from vidctrl.data.sampling import repeat_indices
from vidctrl.data.shapes import BucketShaper

log = logging.getLogger(__name__)


@dataclass
class LoadedDataset:
    """The usable records of a dataset, and what was left out of it and why."""

    manifest: Manifest
    layout: str
    excluded: list[Problem] = field(default_factory=list)


def load_manifest(config: DataConfig, *, workers: int | None = None, hand_boxes: bool = False) -> LoadedDataset:
    """Import the dataset named by the flags, probe what is unprobed, drop (or refuse) bad records.

    A sample is bad by the same rules, and the same functions, as `vidctrl data check` applies
    (`vidctrl.data.check`): strict mode raises on the first bad sample, lenient mode leaves every bad
    one out and reports it. Either way no record is replaced by another. `hand_boxes`: the preset
    reads ControlNeXt meta_info, so a bad one is a bad sample.

    Under torch.distributed only rank 0 opens the files; the other ranks receive its findings, so
    a dataset on shared storage is probed once, not once per GPU, and every rank keeps the same records.
    """
    from vidctrl.data.layouts import load_dataset

    imported = load_dataset(config)
    # A caption that is not text (a number, a list) is the per-sample error `data check` reports, not a
    # crash when the manifest table is built.
    from vidctrl.data.check import record_problems

    imported.problems.extend(p for p in record_problems(imported.records, require_captions=False)
                             if p.code == "caption_not_text")
    strict = config.bad_sample_policy == "strict"
    import_errors = [p for p in imported.problems if p.severity == "error"]
    if (strict and import_errors) or any(p.sample is None for p in import_errors):
        # A metadata file that cannot be parsed as a whole is never "lenient".
        imported.raise_for_errors()
    settings = InspectSettings(
        rules=ClipRules.from_config(config, layout=imported.layout),
        control_frame_policy=config.control_frame_policy,
        deep=False,  # decoding each file's end is `data check`'s; a truncated file is skipped when read
        hand_boxes=hand_boxes,
        trust_probed=True,
    )
    records = imported.records
    findings = on_main_process(lambda: _validate(records, settings, workers))
    errors = sorted(import_errors + [p for p in findings.problems if p.severity == "error"],
                    key=lambda p: p.sample if p.sample is not None else -1)
    if strict and errors:
        more = f" (and {len(errors) - 1} more; run `vidctrl data check` with the same flags)" if len(errors) > 1 else ""
        raise DataError(dataclasses.replace(errors[0], message=errors[0].message + more,
                                            fix=errors[0].fix or "train with --bad_sample_policy lenient to leave it out"))
    excluded: dict[int | None, Problem] = {}
    for problem in errors:  # one problem (the first) per sample left out
        excluded.setdefault(problem.sample, problem)
    bad = set(excluded)
    usable = [dataclasses.replace(r, **findings.fields(i)) for i, r in enumerate(records) if i not in bad]
    if not usable:
        raise DataError("no usable samples: every record has a problem; run `vidctrl data check` with the same flags")
    if errors:
        log.warning("left out %d of %d samples with problems (run `vidctrl data check` for details)",
                    len(bad), len(records))
    return LoadedDataset(Manifest.from_records(usable), imported.layout, excluded=list(excluded.values()))


@dataclass
class _Findings:
    """What probing and validating the records found: per record, the probed fields (as a tuple in
    `PROBED_FIELDS` order: it crosses to every rank, so it is kept small), and the problems."""

    probed: list[tuple[Any, ...]]
    problems: list[Problem]

    def fields(self, index: int) -> dict[str, Any]:
        return {k: v for k, v in zip(PROBED_FIELDS, self.probed[index], strict=True) if v is not None}


def _validate(records: list[Record], settings: InspectSettings, workers: int | None) -> _Findings:
    unprobed_count = sum(not r.probed for r in records)
    if unprobed_count > 1000:
        log.info("probing %d files for their frames, fps and size; `vidctrl data convert --to manifest` "
                 "stores this once so that runs start at once", unprobed_count)
    problems = record_problems(records, require_captions=False)
    probed: list[tuple[Any, ...]] = [(None,) * len(PROBED_FIELDS)] * len(records)
    # Records with stored facts (a manifest) open no media file: inspected here, not in a worker pool.
    stored = [i for i, r in enumerate(records) if settings.trust_probed and r.probed]
    todo = [i for i, r in enumerate(records) if not (settings.trust_probed and r.probed)]
    inspections = [inspect_record(i, records[i], settings) for i in stored]
    if todo:
        inspections += inspect_records([records[i] for i in todo], settings, workers=workers, indices=todo)
    for inspection in inspections:
        problems += inspection.problems
        found = inspection.probed_fields()
        probed[inspection.index] = tuple(found.get(k) for k in PROBED_FIELDS)
    problems.sort(key=lambda p: p.sample if p.sample is not None else -1)
    return _Findings(probed, problems)


T = TypeVar("T")


def on_main_process(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0 only; the other ranks of an initialised process group receive its result.

    A `DataError` on rank 0 is raised on every rank (with rank 0's message), so no rank waits for a
    result that never comes.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload[0] = ("ok", compute())
        except DataError as exc:
            payload[0] = ("data_error", exc.problem)
        except Exception as exc:
            payload[0] = ("error", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "data_error":
        raise DataError(value)
    if status == "error":
        raise RuntimeError(f"rank 0 failed while reading the dataset: {value}")
    return value


class ClipLoader:
    """A DataLoader over planned, same-shape batches whose position survives a restart."""

    def __init__(self, dataset: ClipDataset, sampler: BucketBatchSampler, *, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position to the end of the current epoch."""
        epoch = self.sampler.epoch
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate_clips,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        for batch in loader:
            batch["epoch"] = epoch
            batch["step_in_epoch"] = self.sampler.position
            self.sampler.advance()
            yield batch
            if self.sampler.epoch != epoch:
                break

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_loader(
    config: DataConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    frame_multiple: int = 4,
    loaded: LoadedDataset | None = None,
    pin_memory: bool = False,
    hand_boxes: bool = False,
) -> ClipLoader:
    """The training data pipeline for `config` on `rank` of `world_size` processes.

    `hand_boxes`: batches carry ControlNeXt hand boxes and scores from each sample's meta_info (for
    a preset that weighs hands); otherwise meta_info is not read at all.
    """
    loaded = loaded or load_manifest(config, hand_boxes=hand_boxes)
    manifest = loaded.manifest
    rules = ClipRules.from_config(config, layout=loaded.layout)
    shaper = BucketShaper(manifest, config, rules, frame_multiple=frame_multiple)
    order = repeat_indices(np.where(manifest.is_video(), "video", "image"), config.video_repeat)
    sampler = BucketBatchSampler(
        shaper,
        order,
        batch_size=config.train_batch_size,
        seed=config.seed if config.seed is not None else 0,
        num_replicas=world_size,
        rank=rank,
    )
    if len(sampler) == 0:
        raise DataError(
            f"no full batch of {config.train_batch_size * world_size} samples fits any bucket "
            f"({len(manifest)} samples); lower --train_batch_size or add data"
        )
    dataset = ClipDataset(
        manifest, rules, control_frame_policy=config.control_frame_policy,
        strict=config.bad_sample_policy == "strict", hand_boxes=hand_boxes,
    )
    return ClipLoader(dataset, sampler, num_workers=config.dataloader_num_workers, pin_memory=pin_memory)

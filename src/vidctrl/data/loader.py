"""From data flags to batches: import, probe, plan buckets, sample, decode in workers, resume.

`build_loader(config)` is what training, `vidctrl demo` and the benchmarks use. Its `ClipLoader`
counts the batches the consumer actually took (not the ones DataLoader workers prefetched), so
`state_dict()` pins the exact position and `load_state_dict()` continues with the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.dataset import ClipDataset, collate_clips
from vidctrl.data.manifest import Manifest
from vidctrl.data.probe import probe_into
from vidctrl.data.records import DataError, Problem, Record
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


def load_manifest(config: DataConfig, *, workers: int | None = None) -> LoadedDataset:
    """Import the dataset named by the flags, probe what is unprobed, drop (or refuse) bad records.

    Strict mode raises on the first problem; lenient mode leaves the record out and reports it.
    Either way no record is replaced by another.
    """
    from vidctrl.data.layouts import load_dataset

    imported = load_dataset(config)
    # A caption that is not text (a number, a list) is the per-sample error `data check` reports, not a
    # crash when the manifest table is built.
    from vidctrl.data.check import record_problems

    imported.problems.extend(p for p in record_problems(imported.records, require_captions=False)
                             if p.code == "caption_not_text")
    strict = config.bad_sample_policy == "strict"
    if strict:
        imported.raise_for_errors()
    errors = [p for p in imported.problems if p.severity == "error"]
    if any(p.sample is None for p in errors):
        # A metadata file that cannot be parsed as a whole is never "lenient".
        imported.raise_for_errors()
    bad = {p.sample for p in errors}
    records: list[Record] = [r for i, r in enumerate(imported.records) if i not in bad]
    unprobed_count = sum(not r.probed for r in records)
    if unprobed_count > 1000:
        log.info("probing %d files for their frames, fps and size; `vidctrl data convert --to manifest` "
                 "stores this once so that runs start at once", unprobed_count)
    records = probe_into(records, workers=workers)
    unprobed = [r for r in records if not r.probed]
    if unprobed:
        problem = Problem(message="cannot be read", file=unprobed[0].media, code="unreadable",
                          fix="run `vidctrl data check` with the same flags")
        if strict:
            raise DataError(problem)
        errors += [Problem(message="cannot be read", file=r.media, code="unreadable") for r in unprobed]
        records = [r for r in records if r.probed]
    if not records:
        raise DataError("no usable samples: every record has a problem; run `vidctrl data check` with the same flags")
    if errors:
        log.warning("left out %d of %d samples with problems (run `vidctrl data check` for details)",
                    len(errors), len(imported.records))
    return LoadedDataset(Manifest.from_records(records), imported.layout, excluded=errors)


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
) -> ClipLoader:
    """The training data pipeline for `config` on `rank` of `world_size` processes."""
    loaded = loaded or load_manifest(config)
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
        strict=config.bad_sample_policy == "strict",
    )
    return ClipLoader(dataset, sampler, num_workers=config.dataloader_num_workers, pin_memory=pin_memory)

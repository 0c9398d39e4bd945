"""`vidctrl cache`: encode every planned sample of epoch 0 once, with the frozen encoders, to disk.

The plan is training's own: the same dataset, sampler and seed give each record one clip, one size
and one frame count, exactly those an uncached run draws in its first epoch, and the record order
is the plan's batch order. Under `accelerate launch` every process takes a contiguous share of the
records not yet on disk and writes its own shards; the main process writes the constants and, when
every process is done, the index. Samples are encoded one at a time, as training encodes them, so
a cached run computes from the same numbers as an uncached one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from vidctrl.cache.fingerprint import cache_fingerprint, fingerprint_changes
from vidctrl.cache.store import (
    CONSTANTS,
    FINGERPRINT,
    INDEX,
    CacheError,
    CacheIndex,
    PlannedRecord,
    ShardWriter,
    build_index,
    finished_records,
    foreign_files,
    remove_cache_files,
    remove_damaged_files,
    remove_partial_files,
    save_tensors_atomic,
    write_json_atomic,
)
from vidctrl.run_lock import hold_folder

log = logging.getLogger(__name__)

DEFAULT_SHARD_MIB = 512.0


@dataclass
class CacheReport:
    """What a `vidctrl cache` run did."""

    cache_dir: Path
    records: int
    encoded: int  # records encoded now (by every process)
    reused: int  # records already on disk from an earlier run
    skipped: int  # records whose sample could not be loaded (lenient mode)
    total_bytes: int
    shards: list[Path]  # shards this process wrote now
    main_process: bool = True
    repaired: list[str] = field(default_factory=list)  # damaged files found (and re-encoded), with what was wrong


def cache_dir_of(config: Any) -> Path:
    """`--cache_dir`, else OUTPUT_DIR/cache."""
    if config.model.cache_dir is not None:
        return Path(config.model.cache_dir)
    return Path(config.run.output_dir) / "cache"


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def prepare_cache_dir(cache_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Make `cache_dir` hold a cache for `fingerprint`: keep a matching one (a rerun resumes it),
    replace one written with other settings, refuse a folder holding anything else."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / FINGERPRINT
    if path.is_file():
        try:
            previous = json.loads(path.read_text())["fingerprint"]
        except (ValueError, KeyError):
            previous = {}
        changes = fingerprint_changes(previous, fingerprint)
        if not changes:
            remove_partial_files(cache_dir)
            return
        log.warning("replacing the cache at %s, written with other settings: %s", cache_dir, "; ".join(changes[:8]))
    else:
        foreign = foreign_files(cache_dir)
        if foreign:
            names = ", ".join(p.name for p in foreign[:5])
            raise CacheError(f"{cache_dir} holds files that are not a vidctrl cache ({names}); pass an empty or new "
                             "folder as --cache_dir")
    remove_cache_files(cache_dir)
    write_json_atomic(path, {"fingerprint": fingerprint})


@dataclass
class Plan:
    """Epoch 0 as training plans it: this process's data pipeline, and every process's requests in
    plan order (global batch by global batch) with the records they make."""

    loader: Any  # vidctrl.data.loader.ClipLoader
    requests: list[Any]  # ClipRequest per record
    records: list[PlannedRecord]
    excluded: int  # dataset records left out when the dataset was loaded


def plan_epoch_zero(config: Any, family: Any, *, rank: int, world_size: int) -> Plan:
    from vidctrl.data.loader import build_loader, load_manifest

    hand_boxes = bool(getattr(family, "uses_hand_boxes", False))  # as the trainer reads them
    loaded = load_manifest(config.data, hand_boxes=hand_boxes)
    loader = build_loader(config.data, rank=rank, world_size=world_size, frame_multiple=family.frame_multiple,
                          hand_boxes=hand_boxes,
                          loaded=loaded)
    sampler = loader.sampler
    requests = [r for step in range(len(sampler.schedule(0))) for r in sampler.global_requests(0, step)]
    manifest = loaded.manifest
    records = [PlannedRecord(r.index, manifest[r.index].media, r.height, r.width, r.frames) for r in requests]
    return Plan(loader, requests, records, len(loaded.excluded))


def process_state() -> Any:
    """accelerate's view of the launch: this process's rank among `WORLD_SIZE` processes.

    Without an accelerator the processes form a gloo group (accelerate would start each as a lone
    rank 0, and each would encode everything). The group waits a day at a barrier, not NCCL's
    default half hour: one process may finish its share of the encoding long before another.
    """
    from accelerate import PartialState

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    options: dict[str, Any] = {"timeout": timedelta(days=1)}
    if world > 1 and not torch.cuda.is_available():
        options["cpu"] = True
    state = PartialState(**options)
    if state.num_processes != world:
        raise CacheError(f"the launch asked for {world} processes and accelerate formed a group of "
                         f"{state.num_processes}; launch `vidctrl cache` as you launch `vidctrl train`")
    return state


def shape_runs(records: list[int], requests: list[Any], size: int) -> list[list[int]]:
    """`records` cut into consecutive runs of at most `size` whose requests share one clip shape
    (height, width, frames): the batches the VAE encodes at once."""
    runs: list[list[int]] = []
    for record in records:
        shape = (requests[record].height, requests[record].width, requests[record].frames)
        last = runs[-1] if runs else None
        if last and len(last) < size and (requests[last[0]].height, requests[last[0]].width,
                                          requests[last[0]].frames) == shape:
            last.append(record)
        else:
            runs.append([record])
    return runs


def share(records: list[int], rank: int, world_size: int) -> list[int]:
    """Process `rank`'s contiguous share of `records` (shares differ in size by at most one)."""
    return records[rank * len(records) // world_size : (rank + 1) * len(records) // world_size]


def build_cache(config: Any, *, shard_mib: float = DEFAULT_SHARD_MIB, family: Any = None) -> CacheReport:
    """Write (or complete) the latent cache for `config`; returns what was done. One run owns the
    cache folder at a time (`vidctrl.run_lock`): a second one is refused, naming the first."""
    state = process_state()
    with hold_folder(cache_dir_of(config), is_main_process=state.is_main_process, what="vidctrl cache",
                     flag_hint="--cache_dir", stale_after_s=config.run.output_dir_lock_timeout,
                     force=config.run.force_output_dir_lock):
        return _build_cache(config, state, shard_mib=shard_mib, family=family)


def _build_cache(config: Any, state: Any, *, shard_mib: float, family: Any) -> CacheReport:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from vidctrl.data.dataset import SkippedSample, collate_clips
    from vidctrl.families import family_for_preset

    rank, world = state.process_index, state.num_processes
    family = family or family_for_preset(config.preset).from_config(config)
    cache_dir = cache_dir_of(config)
    fingerprint = cache_fingerprint(config, family, world_size=world)
    repaired: list[str] = []
    if state.is_main_process:
        prepare_cache_dir(cache_dir, fingerprint)
        repaired = remove_damaged_files(cache_dir)
        for problem in repaired:
            log.warning("re-encoding damaged cache file %s", problem)
    state.wait_for_everyone()
    if (cache_dir / INDEX).is_file():
        index = CacheIndex.from_json(json.loads((cache_dir / INDEX).read_text()))
        count = len(index.records)
        log.info("the cache at %s is complete (%d records); nothing to encode", cache_dir, count)
        return CacheReport(cache_dir, count, 0, count, len(index.skipped), index.total_bytes, [],
                           state.is_main_process)

    plan = plan_epoch_zero(config, family, rank=rank, world_size=world)
    records, requests = plan.records, plan.requests
    done = finished_records(cache_dir)
    state.wait_for_everyone()  # every process has seen the same finished shards before any writes more
    todo = [i for i in range(len(records)) if i not in done]
    mine = share(todo, rank, world)
    need_constants = state.is_main_process and not (cache_dir / CONSTANTS).is_file()
    writer = ShardWriter(cache_dir, max_bytes=int(shard_mib * 2**20))
    if mine or need_constants:
        dtype = weight_dtype(config.run.mixed_precision)
        family.load(Path(config.model.pretrained_model_name_or_path), dtype=dtype, device=state.device)
        if need_constants:
            constants = {k: v.detach().cpu().clone().contiguous() for k, v in family.encode_constants().items()}
            save_tensors_atomic(cache_dir / CONSTANTS, constants, {"preset": config.preset})
        # --vae_mini_batch samples of one shape are encoded together (the posterior mean and std, as in
        # training); the loader hands over the samples as they are, so a skipped one keeps its place.
        chunks = shape_runs(mine, requests, max(1, family.vae_mini_batch))
        batches = DataLoader(plan.loader.dataset, batch_sampler=[[requests[i] for i in chunk] for chunk in chunks],
                             collate_fn=list, num_workers=config.data.dataloader_num_workers)
        bar = tqdm(total=len(mine), desc="cache", unit="sample", disable=not state.is_local_main_process)
        for chunk, samples in zip(chunks, batches, strict=True):
            loaded = [sample for sample in samples if not isinstance(sample, SkippedSample)]
            encoded = iter(family.encode_deterministic(collate_clips(loaded)) if loaded else [])
            for record, sample in zip(chunk, samples, strict=True):
                if isinstance(sample, SkippedSample):
                    log.warning("skipped sample %d (%s): %s", sample.index, sample.media, sample.reason)
                    writer.add(record, None, skipped=sample.reason)
                else:
                    writer.add(record, next(encoded))
            bar.update(len(chunk))
        writer.flush()
        bar.close()
    state.wait_for_everyone()

    if state.is_main_process:
        index = build_index(cache_dir, records, global_batch_size=plan.loader.sampler.global_batch_size,
                            excluded=plan.excluded)
        write_json_atomic(cache_dir / INDEX, index.to_json(), indent=None)  # a million records: compact
        log.info("cache complete: %d records in %d shards, %.1f MiB, at %s", len(records), len(index.shards),
                 index.total_bytes / 2**20, cache_dir)
    state.wait_for_everyone()
    index = CacheIndex.from_json(json.loads((cache_dir / INDEX).read_text()))
    return CacheReport(cache_dir, len(records), len(todo), len(records) - len(todo), len(index.skipped),
                       index.total_bytes, writer.shards, state.is_main_process, repaired)

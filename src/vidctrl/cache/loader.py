"""`--load_tensors`: training batches read from a latent cache instead of decoded and encoded.

`open_cache` refuses a cache that is missing, incomplete or written for other settings (naming what
changed). `LatentCache.loader` gives the same `ClipLoader` the trainer uses for videos, over cached
records: same-shape batches (records bucketed by their planned height, width and frames), sharded
across ranks, resumable, and seeded like the video pipeline. Epoch 0 replays the plan the cache was
written from, batch for batch and seed for seed, so a cached run's first epoch trains on what an
uncached run's does; later epochs shuffle the cached records (each keeps the clip and size it was
cached with). A batch holds each sample's tensors under "encoded", which `ModelFamily.encode` hands
to `encode_from`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from vidctrl.cache.build import cache_dir_of
from vidctrl.cache.fingerprint import cache_fingerprint, fingerprint_changes
from vidctrl.cache.store import (
    CONSTANTS,
    FINGERPRINT,
    INDEX,
    SHARDS,
    CacheError,
    CacheIndex,
    PlannedRecord,
    cache_file_damage,
    read_tensors,
)
from vidctrl.config.fields import ConfigError
from vidctrl.data.dataset import SkippedSample
from vidctrl.data.loader import ClipLoader
from vidctrl.data.sampler import BatchShape, BucketBatchSampler, ClipRequest

OPEN_SHARDS = 8  # shard files a dataset (per DataLoader worker) keeps open


class CachedDataset(Dataset):
    """A `ClipRequest` for record i in, record i's cached tensors out (or its `SkippedSample`)."""

    def __init__(self, cache_dir: Path, index: CacheIndex) -> None:
        self.cache_dir = cache_dir
        self.index = index
        self._open: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.index.records)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # open files stay in the process that opened them
        return state

    def _shard(self, position: int) -> Any:
        if position in self._open:
            self._open.move_to_end(position)
            return self._open[position]
        path = self.cache_dir / SHARDS / self.index.shards[position]
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as err:  # safetensors' errors name no file
            raise CacheError(f"cache shard {path} cannot be read ({err}); rerun `vidctrl cache` with this run's "
                             "flags: it re-encodes damaged shards") from err
        self._open[position] = handle
        if len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return handle

    def __getitem__(self, request: ClipRequest) -> dict[str, Any] | SkippedSample:
        record = request.index
        entry = self.index.records[record]
        if record in self.index.skipped:
            return SkippedSample(record, entry.media, self.index.skipped[record])
        handle = self._shard(self.index.shard_of[record])
        encoded = {name: handle.get_tensor(f"{record}/{name}") for name in self.index.tensor_names(record)}
        return {"index": record, "seed": request.seed, "media": entry.media, "encoded": encoded}


class CachedShaper:
    """Bucket key per cached record: its planned (height, width, frames); a batch has that shape."""

    def __init__(self, records: list[PlannedRecord]) -> None:
        self.shapes = sorted({r.shape for r in records})
        key_of = {shape: key for key, shape in enumerate(self.shapes)}
        self.keys = np.array([key_of[r.shape] for r in records], dtype=np.int64)

    def bucket_keys(self) -> np.ndarray:
        return self.keys

    def batch_shape(self, key: int, members: np.ndarray, rng: np.random.Generator) -> BatchShape:
        return BatchShape(*self.shapes[key])


class CachedBatchSampler(BucketBatchSampler):
    """`BucketBatchSampler` over cached records whose epoch 0 keeps the plan order.

    Records are stored in plan order, each planned global batch a run of same-shape records, so
    streaming them unshuffled into shape buckets gives back the planned batches; from epoch 1 on
    they are shuffled like any dataset.
    """

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch == 0:
            return self.order
        return super().epoch_order(epoch)


@dataclass
class LatentCache:
    """A complete cache whose fingerprint matches this run."""

    cache_dir: Path
    index: CacheIndex
    constants: dict[str, torch.Tensor]

    def loader(self, config: Any, family: Any, *, rank: int, world_size: int, pin_memory: bool = False) -> ClipLoader:
        """The training loader over the cached records; gives `family` the cache's constants."""
        family.use_constants(self.constants)
        records = self.index.records
        data = config.data
        sampler = CachedBatchSampler(
            CachedShaper(records),
            np.arange(len(records), dtype=np.int64),
            batch_size=data.train_batch_size,
            seed=data.seed if data.seed is not None else 0,
            num_replicas=world_size,
            rank=rank,
        )
        return ClipLoader(CachedDataset(self.cache_dir, self.index), sampler,
                          num_workers=data.dataloader_num_workers, pin_memory=pin_memory)


def open_cache(config: Any, family: Any, *, world_size: int) -> LatentCache:
    """The cache `--load_tensors` reads (`--cache_dir`, else OUTPUT_DIR/cache), after checking that it
    is complete and was written with this run's settings."""
    cache_dir = cache_dir_of(config)
    rerun = "rerun `vidctrl cache` with this run's flags"
    if not (cache_dir / FINGERPRINT).is_file():
        raise ConfigError(f"--load_tensors: there is no latent cache at {cache_dir}; write it first: {rerun} "
                          "(`vidctrl cache` takes the same flags as `vidctrl train`), or pass --cache_dir")
    cached = json.loads((cache_dir / FINGERPRINT).read_text()).get("fingerprint", {})
    changes = fingerprint_changes(cached, cache_fingerprint(config, family, world_size=world_size))
    if changes:
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        raise ConfigError(
            f"--load_tensors: the latent cache at {cache_dir} was written with other settings "
            f"({'; '.join(changes[:8])}{more}); its tensors would not be this run's. {rerun[0].upper()}{rerun[1:]} "
            "to rebuild it"
        )
    if not (cache_dir / INDEX).is_file():
        raise ConfigError(f"--load_tensors: the latent cache at {cache_dir} is incomplete (a `vidctrl cache` run did "
                          f"not finish); {rerun}: it encodes only what is missing")
    index = CacheIndex.from_json(json.loads((cache_dir / INDEX).read_text()))
    damaged = cache_file_damage(cache_dir, index.shards)
    if damaged:
        more = f" and {len(damaged) - 4} more" if len(damaged) > 4 else ""
        raise CacheError(
            f"--load_tensors: the latent cache at {cache_dir} is damaged ({'; '.join(damaged[:4])}{more}); {rerun}: "
            "it checks every file and re-encodes the damaged ones"
        )
    return LatentCache(cache_dir, index, read_tensors(cache_dir / CONSTANTS))

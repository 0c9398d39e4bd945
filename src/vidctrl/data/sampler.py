"""The bucketed batch sampler: same-shape batches, sharded across ranks, resumable mid-epoch.

Every rank computes the same global schedule for an epoch from (seed, epoch) alone: a shuffled
order of the (repeated) records, streamed into buckets (media kind x aspect ratio) that emit a
global batch of `batch_size * num_replicas` samples when full. Each global batch gets its shape
(height, width, frames) from a per-batch RNG, and rank r takes slice r of it. So all ranks agree
on every step's shape (no collective hangs on mismatched token lengths), shards never overlap,
and the schedule does not depend on the number of DataLoader workers.

The dataset receives `ClipRequest`s, not bare indices: the sampler has already decided the size
and the frame count, so workers decode only the frames a batch needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ClipRequest:
    """One sample of a planned batch: which record, at which size, how many frames, which RNG."""

    index: int
    height: int
    width: int
    frames: int
    seed: int


@dataclass(frozen=True)
class BatchShape:
    height: int
    width: int
    frames: int


class BatchShaper(Protocol):
    """Decides bucket keys per record and the shape of each global batch (see `shapes.py`)."""

    def bucket_keys(self) -> np.ndarray:
        """One integer bucket key per record (kind x aspect ratio)."""
        ...

    def batch_shape(self, key: int, members: np.ndarray, rng: np.random.Generator) -> BatchShape:
        """Shape of a global batch of `members` (record indices) drawn from bucket `key`."""
        ...


def _mix(*values: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class BucketBatchSampler:
    """Yields this rank's list of `ClipRequest`s per step; `state_dict` pins the exact position."""

    def __init__(
        self,
        shaper: BatchShaper,
        order: np.ndarray,
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ) -> None:
        """`order` lists the record indices of one epoch (records repeated by video_repeat)."""
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.shaper = shaper
        self.order = np.asarray(order, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.keys = shaper.bucket_keys()
        self.epoch = 0
        self.position = 0  # batches of the current epoch already consumed
        self._schedule_cache: tuple[int, list[tuple[int, np.ndarray]]] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def schedule(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """The global batches of `epoch` as (bucket key, record indices) pairs, identical on all ranks."""
        if self._schedule_cache is not None and self._schedule_cache[0] == epoch:
            return self._schedule_cache[1]
        order = self.epoch_order(epoch)
        keys = self.keys[order]
        size = self.global_batch_size
        batches: list[tuple[int, np.ndarray]] = []
        # Stream the shuffled order into buckets; a bucket emits a global batch when full and its
        # leftovers wait for the next epoch's shuffle (as the seeds' aspect-ratio samplers do).
        pending: dict[int, list[int]] = defaultdict(list)
        for position, key in enumerate(keys.tolist()):
            bucket = pending[key]
            bucket.append(position)
            if len(bucket) == size:
                batches.append((key, order[bucket]))
                pending[key] = []
        self._schedule_cache = (epoch, batches)
        return batches

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The record indices of `epoch` in the order they stream into buckets."""
        if not self.shuffle:
            return self.order
        return self.order[np.random.default_rng(_mix(self.seed, epoch, 0x5EED)).permutation(len(self.order))]

    def __len__(self) -> int:
        return len(self.schedule(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def global_requests(self, epoch: int, step: int) -> list[ClipRequest]:
        """Every rank's requests for global batch `step` of `epoch`, rank 0's first."""
        key, members = self.schedule(epoch)[step]
        rng = np.random.default_rng(_mix(self.seed, epoch, step, 0xBA7C))
        shape = self.shaper.batch_shape(key, members, rng)
        offset = step * self.global_batch_size
        return [
            ClipRequest(int(index), shape.height, shape.width, shape.frames, _mix(self.seed, epoch, offset + i))
            for i, index in enumerate(members)
        ]

    def requests(self, epoch: int, step: int) -> list[ClipRequest]:
        """This rank's requests for global batch `step` of `epoch`."""
        return self.global_requests(epoch, step)[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[ClipRequest]]:
        epoch, start = self.epoch, self.position
        for step in range(start, len(self.schedule(epoch))):
            yield self.requests(epoch, step)

    # --- resume --------------------------------------------------------------------------------
    def advance(self) -> None:
        """Record that the consumer took one more batch (called by the loader, not the workers)."""
        self.position += 1
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "num_records": len(self.order),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "num_records": len(self.order),
        }
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            details = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume the data order exactly: {details} changed since the checkpoint. "
                "Resume with the same seed, dataset, batch size and number of processes."
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

"""Per-sample random streams, and stand-in batches for ranks whose samples were all skipped.

Every random draw a training step makes for a sample -- condition dropout, the reference frame,
the VAE posterior sample, the noise, the timestep -- comes from generators seeded by that sample's
own seed, which the batch sampler derives from (seed, epoch, position in the global batch). A
sample therefore gets the same draws whichever rank holds it and however the global batch is split
over ranks: a 2-process run and a 1-process run with the same global batch follow the same loss
curve, a resumed run draws what the uninterrupted one drew, and no two ranks share draws. The frozen
encoders (the deterministic half of encoding) run on `--vae_mini_batch` samples at a time; the draws
(the random half) are made per sample, so the mini-batch size changes no draw.

A rank whose samples were all skipped must still run the forward and backward passes, or the
other ranks wait for it in their collectives; it trains on a stand-in sample with loss weight 0.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from vidctrl.data.dataset import SkippedSample, collate_clips
from vidctrl.data.loader import ClipLoader
from vidctrl.data.sampler import ClipRequest
from vidctrl.families.base import EncodedBatch, ModelFamily
from vidctrl.train.rng import derive_seed

STAND_IN_ATTEMPTS = 64


def sample_generator(sample_seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one sample for one purpose ("conditions", "noise")."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(sample_seed, 0, purpose))
    return generator


def sample_seeds(requests: Sequence[ClipRequest], batch: dict[str, Any]) -> list[int]:
    """The sampler's seed of every sample that loaded, in batch order."""
    if "seed" in batch:
        return [int(seed) for seed in batch["seed"]]
    return [request.seed for request in loaded_requests(requests, batch)]


def loaded_requests(requests: Sequence[ClipRequest], batch: dict[str, Any]) -> list[ClipRequest]:
    """The requests of the samples that loaded, in batch order (skipped ones removed)."""
    skipped = Counter(s.index for s in batch["skipped"])
    loaded = []
    for request in requests:
        if skipped[request.index]:
            skipped[request.index] -= 1
            continue
        loaded.append(request)
    if len(loaded) != batch["size"]:
        raise RuntimeError(f"batch of {batch['size']} samples does not match its {len(loaded)} loaded requests")
    return loaded


def split_batch(batch: dict[str, Any], chunk: int = 1) -> list[dict[str, Any]]:
    """The batch in batches of `chunk` samples (the last may be smaller): tensors and lists sliced, the
    rest shared."""
    size = batch["size"]
    samples = []
    for i in range(0, size, chunk):
        sample: dict[str, Any] = {}
        for key, value in batch.items():
            if key == "size":
                sample[key] = min(chunk, size - i)
            elif key == "skipped":
                sample[key] = []
            elif (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size) or (isinstance(value, list) and len(value) == size):
                sample[key] = value[i : i + chunk]
            else:
                sample[key] = value
        samples.append(sample)
    return samples


def _cat(values: list[Any], what: str) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, list):
        return [item for value in values for item in value]
    if first is None and all(v is None for v in values):
        return None
    if all(v == first for v in values):
        return first
    raise ValueError(f"cannot join per-sample values of {what}: {values!r}")


def concat_encoded(parts: Sequence[EncodedBatch]) -> EncodedBatch:
    """Join single-sample encoded batches along the batch dimension."""
    if len(parts) == 1:
        return parts[0]
    keys = list(parts[0].conditions)
    if any(list(p.conditions) != keys for p in parts):
        raise ValueError("samples of one batch were encoded with different conditions")
    weights = [p.loss_weight for p in parts]
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise ValueError("some samples of a batch have a loss weight and others do not")
    return EncodedBatch(
        latents=torch.cat([p.latents for p in parts]),
        conditions={key: _cat([p.conditions[key] for p in parts], key) for key in keys},
        loss_weight=None if weights[0] is None else torch.cat(weights),  # type: ignore[arg-type]
        media=[m for p in parts for m in p.media],
        tokens=sum(p.tokens for p in parts),
    )


def encode_samples(family: ModelFamily, batch: dict[str, Any], seeds: Sequence[int]) -> EncodedBatch:
    """`family.encode` with the frozen encoders (`encode_deterministic`) run on `family.vae_mini_batch`
    samples at a time and the draws (`encode_from`) made per sample from its own condition stream.

    A batch read from a latent cache carries the deterministic half already (``batch["encoded"]``).
    """
    if batch["size"] != len(seeds):
        raise ValueError(f"{batch['size']} samples and {len(seeds)} seeds")
    generators = [sample_generator(seed, "conditions") for seed in seeds]
    encoded = batch.get("encoded")
    if encoded is None:
        if "seed" not in batch:
            # A batch built by hand has no sampler seeds: fix each sample's draws from its stream (as `encode`).
            batch = {**batch, "seed": [torch.randint(0, 2**62, (1,), generator=g).tolist()[0] for g in generators]}
        encoded = [sample for part in split_batch(batch, max(1, family.vae_mini_batch))
                   for sample in family.encode_deterministic(part)]
    media = list(batch["media"])
    return concat_encoded([family.encode_from([sample], generator=generator, media=media[i : i + 1])
                           for i, (sample, generator) in enumerate(zip(encoded, generators, strict=True))])


def noise_samples(objective: Any, latents: torch.Tensor, seeds: Sequence[int], device: torch.device) -> Any:
    """`objective.prepare` one sample at a time, each with its own noise stream, joined."""
    parts = [objective.prepare(latents[i : i + 1], sample_generator(seed, "noise", device))
             for i, seed in enumerate(seeds)]
    if len(parts) == 1:
        return parts[0]
    joined = {f.name: _cat([getattr(p, f.name) for p in parts], f.name) for f in dataclasses.fields(parts[0])}
    return type(parts[0])(**joined)


class StandIn:
    """A sample to run a zero-weighted step on when every sample of this rank's batch was skipped:
    the first sample of the last batch that loaded, or else the first record that loads."""

    def __init__(self) -> None:
        self._batch: dict[str, Any] | None = None

    def remember(self, batch: dict[str, Any]) -> None:
        if batch["size"]:
            self._batch = batch

    def get(self, loader: ClipLoader, requests: Sequence[ClipRequest], epoch: int, step: int) -> dict[str, Any]:
        if self._batch is not None:
            return split_batch(self._batch)[0]
        planned = requests[0] if requests else None
        _, members = loader.sampler.schedule(epoch)[step]
        candidates = [int(i) for i in members] + [i for i in range(len(loader.dataset)) if i not in set(members)]
        for index in candidates[:STAND_IN_ATTEMPTS]:
            request = ClipRequest(index, planned.height if planned else 64, planned.width if planned else 64,
                                  planned.frames if planned else 1, seed=0)
            item = loader.dataset[request]
            if not isinstance(item, SkippedSample):
                self._batch = collate_clips([item])
                return split_batch(self._batch)[0]
        raise RuntimeError(
            f"this rank's samples of step {step} were all skipped and none of the first {STAND_IN_ATTEMPTS} "
            "records loads either; run `vidctrl data check` with the same flags"
        )

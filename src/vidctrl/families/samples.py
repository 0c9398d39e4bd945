"""The data a family passes between its halves and to the loop: the encoded batch the denoiser trains
on, a validation sample, and the per-sample draws and stacking that every family's encoding shares.
Re-exported from `vidctrl.families.base`, where they used to live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vidctrl.train.rng import derive_seed


@dataclass
class EncodedBatch:
    """A batch after the frozen encoders: what the denoiser is trained on.

    `latents` is the clean target the objective noises; `conditions` are the family's own model
    inputs (control latents, reference latents, text and image embeddings, ...), already on the
    accelerator and already with condition dropout applied.
    """

    latents: torch.Tensor
    conditions: dict[str, Any] = field(default_factory=dict)
    loss_weight: torch.Tensor | None = None  # broadcastable to latents (hand boxes, masks)
    media: list[str] = field(default_factory=list)  # sample files, for error messages
    tokens: int = 0  # transformer tokens in this batch (for tokens/s)

    def to(self, device: torch.device | str) -> EncodedBatch:
        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return EncodedBatch(
            latents=self.latents.to(device),
            conditions={k: move(v) for k, v in self.conditions.items()},
            loss_weight=None if self.loss_weight is None else self.loss_weight.to(device),
            media=self.media,
            tokens=self.tokens,
        )


@dataclass
class ValidationSample:
    """What one validation video is generated from."""

    prompt: str
    reference: torch.Tensor | None  # (3, H, W) uint8
    control: torch.Tensor | None  # (F, 3, H, W) uint8
    name: str
    fps: float = 16.0
    start: torch.Tensor | None = None  # (3, H, W) uint8: a first-frame image (Wan's frame-0 slot)
    camera: torch.Tensor | None = None  # (F, 19) float64: camera file rows (Control-Camera)


def fixed_draw_generators(batch: dict[str, Any]) -> list[torch.Generator]:
    """One generator per sample for the draws made before an encoder runs (reference frame, inpaint
    mask, pixel noise), seeded by the sample's seed from the batch sampler (`batch["seed"]`).

    The sampler derives that seed from (seed, epoch, position in the global batch), so the draws
    differ from epoch to epoch as before, and a cache written for epoch 0 holds exactly what an
    uncached run of epoch 0 encodes.
    """
    generators = []
    for seed in batch["seed"]:
        generator = torch.Generator()
        generator.manual_seed(derive_seed(int(seed), 0, "fixed-draws"))
        generators.append(generator)
    return generators


def stack_samples(samples: list[dict[str, torch.Tensor]], key: str, device: torch.device | str) -> torch.Tensor:
    """The samples' tensors under `key`, stacked into a batch on `device`."""
    return torch.stack([sample[key] for sample in samples]).to(device, non_blocking=True)


def posterior_sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``mean + std * noise`` in float32 with noise from `generator`, drawn one sample at a time (as
    the VAE's mini-batches of one drew it), so a sample's draws do not depend on its batch."""
    noise = torch.cat([torch.randn(mean[i : i + 1].shape, generator=generator, device=generator.device)
                       for i in range(mean.shape[0])])
    return mean.float() + std.float() * noise.to(mean.device)

"""The contract between the training loop and a training objective.

An objective turns clean latents into a model input and a regression target (`prepare`), and a
model prediction into a scalar loss (`loss`). It knows nothing of model families: the family
decides what else goes into the model (control latents, reference latents, text) and in which
layout; the objective only sees the latents it noises and the prediction that comes back.

Every noising process here has the form ``noisy = alpha * latents + sigma * noise``:
flow matching has ``alpha = 1 - s, sigma = s``; DDPM has ``alpha = sqrt(alphabar_t),
sigma = sqrt(1 - alphabar_t)``. `NoisedBatch` carries both so that a loss can convert a
prediction (x0 from v, for instance) without knowing the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class NoisedBatch:
    """What an objective hands the model, and what its loss needs back.

    noisy: the noised latents, same shape and dtype as the clean latents.
    timestep: ``(B,)``, the timestep in the scale the denoiser expects (flow: ``s * 1000``;
        DDPM: the integer step).
    target: what the loss regresses the (converted) prediction onto.
    alpha, sigma: ``(B,)`` float32, ``noisy = alpha * latents + sigma * noise``.
    loss_weight: ``(B,)`` float32, the per-sample weight of the objective's weighting scheme.
    index: ``(B,)`` int64, the position in the training schedule that was sampled.
    """

    noisy: Tensor
    timestep: Tensor
    target: Tensor
    alpha: Tensor
    sigma: Tensor
    loss_weight: Tensor
    index: Tensor

    @property
    def batch_size(self) -> int:
        return self.noisy.shape[0]


@runtime_checkable
class Objective(Protocol):
    """A training objective: noising and loss, independent of the model family."""

    num_train_timesteps: int

    def prepare(self, latents: Tensor, generator: torch.Generator) -> NoisedBatch:
        """Draw noise and a timestep per sample from `generator` and noise `latents` with them."""
        ...

    def loss(self, prediction: Tensor, batch: NoisedBatch, *, weight: Tensor | None = None) -> Tensor:
        """A scalar loss. `weight` (broadcastable to `prediction`) masks or weights elements."""
        ...


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """View a ``(B,)`` tensor as ``(B, 1, 1, ...)`` so that it broadcasts against `like`."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of `values`, or ``sum(weight * values) / sum(weight)`` over the broadcast shape.

    With a 0/1 mask this is the plain mean over the selected elements, so masking out part of a
    video does not shrink the loss of the rest. An all-zero mask gives a zero loss that still
    carries the graph (every rank must call backward under DDP).
    """
    if weight is None:
        return values.mean()
    weight = weight.to(device=values.device, dtype=values.dtype).expand_as(values)
    total = weight.sum()
    return (values * weight).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


def draw_noise(latents: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like `latents`, drawn on the generator's device.

    Drawing on the generator's device lets a CPU generator serve CUDA latents (the engine's
    per-rank stream need not live on the accelerator); the result is moved to the latents.
    """
    noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=latents.dtype)
    return noise.to(latents.device)

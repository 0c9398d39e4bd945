"""Rectified-flow matching as the Wan2.1-Fun and EasyAnimate V5.1 trainers do it.

Facts, from VideoX-Fun's scripts/wan2.1_fun/train_control.py with config/wan2.1/wan_civitai.yaml:

- The training schedule is `FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)` as built, without
  `set_timesteps`: ``sigma_i = shift * u_i / (1 + (shift - 1) * u_i)`` with
  ``u_i = (N - i) / N`` for ``i = 0 .. N-1`` (descending, float32; ``N = num_train_timesteps =
  1000``, ``shift = 5.0`` in wan_civitai.yaml), and ``timesteps = sigmas * N``. With
  ``use_dynamic_shifting`` the constructor leaves the sigmas unshifted, and so does training.
- A sampled index ``i`` gives ``sigma = sigmas[i]`` and the model's timestep ``timesteps[i] =
  sigma * 1000``; ``noisy = (1 - sigma) * x0 + sigma * noise`` in the latents' dtype; the target is
  ``noise - x0``.
- Loss: squared error in float32; elements with ``|prediction - target| > 50`` are zeroed (they
  still count in the mean); multiplied by `compute_loss_weighting_for_sd3(weighting_scheme,
  sigmas)` (``sigma^-2`` for sigma_sqrt, ``2 / (pi (1 - 2 sigma + 2 sigma^2))`` for cosmap, 1
  otherwise, logit_normal included); mean over every element.
- ``--motion_sub_loss``: ``loss * (1 - r) + r * mse(frame differences)`` along the frame axis,
  ``r = --motion_sub_loss_ratio`` (0.25), only when there are more than two latent frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidctrl.objectives.base import NoisedBatch, draw_noise, per_sample, weighted_mean
from vidctrl.objectives.timesteps import (
    WEIGHTING_SCHEMES,
    IndexSampler,
    UniformIndexSampler,
    build_index_sampler,
)


def shifted_flow_sigmas(num_train_timesteps: int = 1000, shift: float = 5.0) -> Tensor:
    """The training sigmas of `FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)`, float32.

    Computed in the same order of float32 operations as diffusers, so the values are identical.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
    if not shift > 0:
        raise ValueError(f"the schedule shift must be positive, got {shift}")
    steps = torch.linspace(1, num_train_timesteps, num_train_timesteps, dtype=torch.float32).flip(0)
    unshifted = steps / num_train_timesteps
    return shift * unshifted / (1 + (shift - 1) * unshifted)


def loss_weighting(weighting_scheme: str, sigmas: Tensor) -> Tensor:
    """Per-sample loss weight of SD3's weighting schemes (diffusers' `compute_loss_weighting_for_sd3`)."""
    if weighting_scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if weighting_scheme == "cosmap":
        return (2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))).float()
    if weighting_scheme in WEIGHTING_SCHEMES:
        return torch.ones_like(sigmas, dtype=torch.float32)
    raise ValueError(
        f"unknown weighting scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
    )


def check_flow_flags(objective: Any, family: str) -> None:
    """Refuse `objective` flags a VideoX-Fun flow trainer cannot honour: another ``--loss_type``, and
    ``--train_sampling_steps`` without ``--uniform_sampling`` (only that sampler reads it)."""
    from vidctrl.config.fields import ConfigError

    if objective.loss_type not in (None, "flow"):
        raise ConfigError(f"--loss_type {objective.loss_type}: {family} trains with flow matching only")
    steps = objective.train_sampling_steps
    if steps != 1000 and not objective.uniform_sampling:
        raise ConfigError(f"--train_sampling_steps {steps} acts only with --uniform_sampling (as in VideoX-Fun); "
                          "without it every draw spans all 1000 timesteps: add --uniform_sampling or drop the flag")


class FlowMatching:
    """Flow matching on a shifted schedule: predict the velocity ``noise - x0``.

    sampler: draws schedule indices (`vidctrl.objectives.timesteps.build_index_sampler`); its
        `num_indices` may be smaller than the schedule (VideoX-Fun's `--train_sampling_steps`
        with `--uniform_sampling` restricts sampling to the first, noisiest, indices).
    weighting_scheme: the loss weighting of `loss_weighting`.
    outlier_threshold: elements whose error exceeds this are left out of the loss (VideoX-Fun's
        50); None keeps all.
    motion_loss_ratio: weight of the frame-difference loss (VideoX-Fun's `--motion_sub_loss`,
        ratio 0.25); 0 turns it off. `frame_dim` is the frame axis of the latents (2 for
        ``(B, C, F, H, W)``).
    """

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        shift: float = 5.0,
        sampler: IndexSampler | None = None,
        weighting_scheme: str = "none",
        outlier_threshold: float | None = 50.0,
        motion_loss_ratio: float = 0.0,
        frame_dim: int = 2,
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.shift = shift
        self.sigmas = shifted_flow_sigmas(num_train_timesteps, shift)
        self.timesteps = self.sigmas * num_train_timesteps
        self.sampler: IndexSampler = (
            sampler if sampler is not None else UniformIndexSampler(num_train_timesteps)
        )
        if self.sampler.num_indices > num_train_timesteps:
            raise ValueError(
                f"the timestep sampler draws from {self.sampler.num_indices} indices but the flow schedule "
                f"has {num_train_timesteps}; --train_sampling_steps cannot exceed num_train_timesteps"
            )
        loss_weighting(weighting_scheme, self.sigmas[:1])  # validates the name
        self.weighting_scheme = weighting_scheme
        if outlier_threshold is not None and not outlier_threshold > 0:
            raise ValueError(f"outlier_threshold must be positive or None, got {outlier_threshold}")
        self.outlier_threshold = outlier_threshold
        if not 0.0 <= motion_loss_ratio <= 1.0:
            raise ValueError(f"motion_loss_ratio must be in [0, 1], got {motion_loss_ratio}")
        self.motion_loss_ratio = motion_loss_ratio
        self.frame_dim = frame_dim

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any], **kwargs: Any) -> FlowMatching:
        """From a `FlowMatchEulerDiscreteScheduler` config: a model's scheduler_config.json or the
        ``scheduler_kwargs`` of a VideoX-Fun YAML. Only what shapes the training schedule is read;
        the sampling-time options (``shift_terminal``, karras/exponential/beta sigmas) act in
        `set_timesteps`, which training never calls.
        """
        num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        shift = 1.0 if config.get("use_dynamic_shifting", False) else float(config.get("shift", 1.0))
        return cls(num_train_timesteps=num_train_timesteps, shift=shift, **kwargs)

    @classmethod
    def from_objective_config(cls, config: Any, *, shift: float, rank: int, world_size: int) -> FlowMatching:
        """As VideoX-Fun's flow trainers build it from the `objective` section's flags: the timestep
        sampler (``--train_sampling_steps`` under ``--uniform_sampling`` only), the loss weighting and
        the frame-difference loss (``--motion_sub_loss``), on the schedule shifted by `shift`."""
        sampler = build_index_sampler(
            weighting_scheme=config.weighting_scheme,
            logit_mean=config.logit_mean, logit_std=config.logit_std, mode_scale=config.mode_scale,
            uniform_sampling=config.uniform_sampling, rank=rank, world_size=world_size,
            train_sampling_steps=config.train_sampling_steps,  # under --uniform_sampling only, as VideoX-Fun
        )
        return cls(shift=shift, sampler=sampler, weighting_scheme=config.weighting_scheme,
                   motion_loss_ratio=config.motion_sub_loss_ratio if config.motion_sub_loss else 0.0)

    def prepare(self, latents: Tensor, generator: torch.Generator) -> NoisedBatch:
        """Noise then timesteps, drawn from `generator` in that order (as the original draws them)."""
        noise = draw_noise(latents, generator)
        index = self.sampler(latents.shape[0], generator)
        sigma = self.sigmas[index].to(latents.device)
        # The original casts sigma to the latents' dtype before mixing and weighting.
        s = per_sample(sigma.to(latents.dtype), latents)
        noisy = (1.0 - s) * latents + s * noise
        return NoisedBatch(
            noisy=noisy,
            timestep=self.timesteps[index].to(latents.device),
            target=noise - latents,
            alpha=1.0 - sigma,
            sigma=sigma,
            loss_weight=loss_weighting(self.weighting_scheme, sigma.to(latents.dtype)),
            index=index,
        )

    def loss(self, prediction: Tensor, batch: NoisedBatch, *, weight: Tensor | None = None) -> Tensor:
        """Weighted squared error of the velocity, mean over elements (see the module docstring).

        `weight` (a mask or per-element weight broadcastable to `prediction`) turns the mean
        into ``sum(weight * error) / sum(weight)``.
        """
        if prediction.shape != batch.target.shape:
            raise ValueError(
                f"the prediction has shape {tuple(prediction.shape)} but the flow target has "
                f"{tuple(batch.target.shape)}"
            )
        prediction = prediction.float()
        target = batch.target.float()
        diff = prediction - target
        error = diff.square()
        if self.outlier_threshold is not None:
            error = error * (diff.abs() <= self.outlier_threshold).float()
        error = error * per_sample(batch.loss_weight.to(error.device), error)
        loss = weighted_mean(error, weight)
        if self.motion_loss_ratio > 0 and prediction.shape[self.frame_dim] > 2:
            loss = loss * (1 - self.motion_loss_ratio) + self.motion_loss_ratio * F.mse_loss(
                prediction.diff(dim=self.frame_dim), target.diff(dim=self.frame_dim)
            )
        return loss

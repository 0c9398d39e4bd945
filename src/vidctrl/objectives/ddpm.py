"""DDPM training (epsilon or v prediction) on a diffusers beta schedule: the CogVideoX family.

Facts:

- VideoX-Fun's CogVideoX-Fun trainer (scripts/cogvideox_fun/train.py) loads the model's scheduler
  folder as `DDPMScheduler` (so a CogVideoX config's ``snr_shift_scale`` is ignored there),
  noises with `add_noise`, targets ``noise`` (epsilon) or `get_velocity(latents, noise, t)`
  (v_prediction), and takes ``mse(prediction, target)`` averaged over every element
  (``loss_style="target"``). Its timesteps are the integer indices themselves.
- DynamiCtrl (scripts/dynamictrl_sft_finetune.py) loads it as `CogVideoXDPMScheduler` (the SNR
  shift applies), recovers ``x0 = sqrt(ab) x_t - sqrt(1 - ab) v`` from the v prediction and
  weights ``(x0_pred - x0)^2`` by ``1 / (1 - ab_t)``, mean per sample then over the batch
  (``loss_style="x0"``). Since ``x0_pred - x0 = -sqrt(1 - ab) (v_pred - v)``, this equals the
  v-MSE up to rounding; it is kept in DynamiCtrl's form so the logged values match.

``ab`` is alphas_cumprod; zero terminal SNR (``rescale_betas_zero_snr``) makes ``ab`` of the last
index 0, where a v-prediction model must output ``-x0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import diffusers
import torch
from torch import Tensor

from vidctrl.objectives.base import NoisedBatch, draw_noise, per_sample, weighted_mean
from vidctrl.objectives.timesteps import IndexSampler, UniformIndexSampler

PredictionType = Literal["epsilon", "v_prediction"]
LossStyle = Literal["target", "x0"]
# Schedulers whose constructor builds `alphas_cumprod` from the beta-schedule keys of a config.
SCHEDULER_CLASSES: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler",
)


def alphas_cumprod_from_config(config: Mapping[str, Any], scheduler_class: str | None = None) -> Tensor:
    """``alphas_cumprod`` as `scheduler_class` (default: the config's ``_class_name``) builds it."""
    name = scheduler_class or str(config.get("_class_name", "DDPMScheduler"))
    if name not in SCHEDULER_CLASSES:
        raise ValueError(
            f"cannot train DDPM with scheduler {name!r}; choose one of {', '.join(SCHEDULER_CLASSES)}"
        )
    scheduler = getattr(diffusers, name).from_config(dict(config))
    return scheduler.alphas_cumprod.clone()


class DDPM:
    """Discrete-time diffusion with the model predicting epsilon or v.

    alphas_cumprod: ``(N,)`` cumulative alphas of the training schedule (float32 or float64, as
        the diffusers scheduler keeps them; noising casts them to the latents' dtype first, as
        `add_noise` does).
    loss_style: "target" (MSE against epsilon / v) or "x0" (DynamiCtrl's, v_prediction only).
    """

    def __init__(
        self,
        alphas_cumprod: Tensor,
        *,
        prediction_type: PredictionType = "v_prediction",
        loss_style: LossStyle = "target",
        sampler: IndexSampler | None = None,
    ) -> None:
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 1:
            raise ValueError("alphas_cumprod must be a non-empty 1-D tensor")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction_type!r}; choose epsilon or v_prediction")
        if loss_style not in ("target", "x0"):
            raise ValueError(f"unknown DDPM loss style {loss_style!r}; choose target or x0")
        if loss_style == "x0" and prediction_type != "v_prediction":
            raise ValueError(
                "the x0 loss recovers x0 from a v prediction; it needs prediction_type v_prediction"
            )
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = alphas_cumprod.numel()
        self.prediction_type = prediction_type
        self.loss_style = loss_style
        self.sampler: IndexSampler = (
            sampler if sampler is not None else UniformIndexSampler(self.num_train_timesteps)
        )
        if self.sampler.num_indices > self.num_train_timesteps:
            raise ValueError(
                f"the timestep sampler draws from {self.sampler.num_indices} indices but the schedule has "
                f"{self.num_train_timesteps}"
            )

    @classmethod
    def from_scheduler_config(
        cls, config: Mapping[str, Any], *, scheduler_class: str | None = None, **kwargs: Any
    ) -> DDPM:
        """From a model's scheduler_config.json; the prediction type defaults to the config's."""
        kwargs.setdefault("prediction_type", config.get("prediction_type", "epsilon"))
        return cls(alphas_cumprod_from_config(config, scheduler_class), **kwargs)

    def prepare(self, latents: Tensor, generator: torch.Generator) -> NoisedBatch:
        """Noise then timesteps from `generator`; ``noisy = sqrt(ab) x0 + sqrt(1 - ab) noise``."""
        noise = draw_noise(latents, generator)
        index = self.sampler(latents.shape[0], generator)
        cumprod = self.alphas_cumprod.to(device=latents.device, dtype=latents.dtype)[index.to(latents.device)]
        alpha, sigma = cumprod**0.5, (1 - cumprod) ** 0.5
        noisy = per_sample(alpha, latents) * latents + per_sample(sigma, latents) * noise
        if self.loss_style == "x0":
            target = latents
        elif self.prediction_type == "v_prediction":
            target = per_sample(alpha, latents) * noise - per_sample(sigma, latents) * latents
        else:
            target = noise
        cumprod32 = self.alphas_cumprod.to(device=latents.device, dtype=torch.float32)[
            index.to(latents.device)
        ]
        loss_weight = 1 / (1 - cumprod32) if self.loss_style == "x0" else torch.ones_like(cumprod32)
        return NoisedBatch(
            noisy=noisy,
            timestep=index.to(latents.device),
            target=target,
            alpha=cumprod32**0.5,
            sigma=(1 - cumprod32) ** 0.5,
            loss_weight=loss_weight,
            index=index,
        )

    def loss(self, prediction: Tensor, batch: NoisedBatch, *, weight: Tensor | None = None) -> Tensor:
        """Mean squared error in float32 (see the module docstring for the two styles)."""
        if prediction.shape != batch.target.shape:
            raise ValueError(
                f"the prediction has shape {tuple(prediction.shape)} but the DDPM target has "
                f"{tuple(batch.target.shape)}"
            )
        prediction = prediction.float()
        if self.loss_style == "x0":
            noisy = batch.noisy.float()
            prediction = per_sample(batch.alpha, noisy) * noisy - per_sample(batch.sigma, noisy) * prediction
        error = (prediction - batch.target.float()).square()
        error = error * per_sample(batch.loss_weight.to(error.device), error)
        return weighted_mean(error, weight)

"""DDPM objective: schedules from diffusers configs, noising as `add_noise`, CogVideoX-Fun's and DynamiCtrl's losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDPMScheduler

from vidctrl.objectives import Objective
from vidctrl.objectives.ddpm import DDPM, alphas_cumprod_from_config

# The keys of a CogVideoX scheduler_config.json (values as in the 2B release).
COGVIDEOX_SCHEDULER = {
    "_class_name": "CogVideoXDDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
SHAPE = (3, 5, 4, 6, 6)  # CogVideoX latents: (B, F, C, H, W)


class FixedIndices:
    num_indices = 1000

    def __init__(self, *indices: int) -> None:
        self.indices = torch.tensor(indices)

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.indices.clone()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_schedule_follows_the_config_class_with_snr_shift_and_zero_terminal_snr() -> None:
    ours = alphas_cumprod_from_config(COGVIDEOX_SCHEDULER)
    assert torch.equal(ours, CogVideoXDDIMScheduler.from_config(COGVIDEOX_SCHEDULER).alphas_cumprod)
    assert ours[-1].item() == 0.0
    # CogVideoX-Fun loads the same folder as DDPMScheduler, which has no SNR shift
    as_ddpm = alphas_cumprod_from_config(COGVIDEOX_SCHEDULER, scheduler_class="DDPMScheduler")
    assert torch.equal(as_ddpm, DDPMScheduler.from_config(COGVIDEOX_SCHEDULER).alphas_cumprod)
    assert not torch.allclose(as_ddpm.double(), ours)
    with pytest.raises(ValueError, match="cannot train DDPM with scheduler 'EulerDiscreteScheduler'"):
        alphas_cumprod_from_config(COGVIDEOX_SCHEDULER, scheduler_class="EulerDiscreteScheduler")


def test_prepare_noises_and_targets_as_diffusers_add_noise_and_get_velocity() -> None:
    scheduler = DDPMScheduler.from_config(COGVIDEOX_SCHEDULER)
    objective = DDPM(scheduler.alphas_cumprod, sampler=FixedIndices(0, 500, 999))
    assert isinstance(objective, Objective)
    latents = torch.randn(SHAPE, generator=_generator(1))
    batch = objective.prepare(latents, _generator(2))
    noise = torch.randn(SHAPE, generator=_generator(2))
    t = torch.tensor([0, 500, 999])
    assert torch.equal(batch.timestep, t)
    assert torch.equal(batch.noisy, scheduler.add_noise(latents, noise, t))
    assert torch.equal(batch.target, scheduler.get_velocity(latents, noise, t))
    assert torch.equal(batch.noisy[2], noise[2])  # zero terminal SNR: pure noise at the last index


def test_epsilon_prediction_targets_the_noise() -> None:
    objective = DDPM.from_scheduler_config(
        {**COGVIDEOX_SCHEDULER, "prediction_type": "epsilon"}, sampler=FixedIndices(1, 2, 3)
    )
    batch = objective.prepare(torch.randn(SHAPE, generator=_generator(1)), _generator(2))
    assert torch.equal(batch.target, torch.randn(SHAPE, generator=_generator(2)))


def test_target_loss_is_cogvideox_fun_plain_mse() -> None:
    objective = DDPM.from_scheduler_config(COGVIDEOX_SCHEDULER, scheduler_class="DDPMScheduler")
    batch = objective.prepare(torch.randn(SHAPE, generator=_generator(1)), _generator(2))
    prediction = torch.randn(SHAPE, generator=_generator(3))
    expected = F.mse_loss(prediction.float(), batch.target.float(), reduction="mean")
    assert torch.allclose(objective.loss(prediction, batch), expected)
    assert objective.loss(batch.target.clone(), batch).item() == 0.0


def test_x0_loss_is_dynamictrl_weighted_x0_error() -> None:
    config = {**COGVIDEOX_SCHEDULER, "_class_name": "CogVideoXDPMScheduler"}
    scheduler = CogVideoXDPMScheduler.from_config(config)
    objective = DDPM.from_scheduler_config(config, loss_style="x0", sampler=FixedIndices(3, 400, 998))
    latents = torch.randn(SHAPE, generator=_generator(1))
    batch = objective.prepare(latents, _generator(2))
    model_output = torch.randn(SHAPE, generator=_generator(3))

    t = torch.tensor([3, 400, 998])
    noisy = scheduler.add_noise(latents, torch.randn(SHAPE, generator=_generator(2)), t)
    model_pred = scheduler.get_velocity(model_output, noisy, t)
    weights = (1 / (1 - scheduler.alphas_cumprod.to(torch.float32)[t])).view(-1, 1, 1, 1, 1)
    expected = torch.mean((weights * (model_pred - latents) ** 2).reshape(3, -1), dim=1).mean()
    assert torch.allclose(objective.loss(model_output, batch), expected.float(), rtol=1e-5)


def test_x0_loss_vanishes_for_the_true_velocity_and_equals_v_mse() -> None:
    config = {**COGVIDEOX_SCHEDULER, "_class_name": "CogVideoXDPMScheduler"}
    x0_style = DDPM.from_scheduler_config(config, loss_style="x0", sampler=FixedIndices(10, 500, 990))
    v_style = DDPM.from_scheduler_config(config, sampler=FixedIndices(10, 500, 990))
    latents = torch.randn(SHAPE, generator=_generator(1))
    x0_batch = x0_style.prepare(latents, _generator(2))
    v_batch = v_style.prepare(latents, _generator(2))
    assert x0_style.loss(v_batch.target, x0_batch).item() == pytest.approx(0.0, abs=1e-10)
    prediction = torch.randn(SHAPE, generator=_generator(3))
    assert x0_style.loss(prediction, x0_batch).item() == pytest.approx(
        v_style.loss(prediction, v_batch).item(), rel=1e-4
    )


def test_x0_loss_needs_v_prediction() -> None:
    with pytest.raises(ValueError, match="needs prediction_type v_prediction"):
        DDPM(torch.linspace(0.99, 0.01, 10), prediction_type="epsilon", loss_style="x0")


def test_mask_weight_selects_elements() -> None:
    objective = DDPM.from_scheduler_config(COGVIDEOX_SCHEDULER, sampler=FixedIndices(1, 2, 3))
    batch = objective.prepare(torch.randn(SHAPE, generator=_generator(1)), _generator(2))
    prediction = torch.randn(SHAPE, generator=_generator(3))
    mask = torch.zeros(SHAPE)
    mask[:, :2] = 1.0  # first two latent frames
    expected = (prediction - batch.target)[:, :2].square().mean()
    assert torch.allclose(objective.loss(prediction, batch, weight=mask), expected)

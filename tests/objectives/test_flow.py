"""Flow matching: schedule values, noising formulas and the loss as VideoX-Fun's Wan trainer computes them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_loss_weighting_for_sd3
from torch import Tensor

from vidctrl.objectives import FlowMatching, NoisedBatch, Objective, shifted_flow_sigmas
from vidctrl.objectives.flow import loss_weighting
from vidctrl.objectives.timesteps import UniformIndexSampler

SHAPE = (3, 4, 5, 6, 6)  # (B, C, F, H, W) latents


@dataclass(frozen=True)
class FixedIndices:
    """A sampler that returns chosen indices, for hand-checked formulas."""

    indices: tuple[int, ...]
    num_indices: int = 1000

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        assert batch_size == len(self.indices)
        return torch.tensor(self.indices, dtype=torch.int64)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def videox_fun_loss(
    pred: Tensor, target: Tensor, sigmas: Tensor, scheme: str, threshold: float = 50
) -> Tensor:
    """The loss of VideoX-Fun's train_control.py (custom_mse_loss with SD3 weighting), retyped."""
    pred, target = pred.float(), target.float()
    diff = pred - target
    mse = F.mse_loss(pred, target, reduction="none")
    masked = mse * (diff.abs() <= threshold).float()
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas).float()
    return (masked * weighting).mean()


def test_shifted_schedule_equals_diffusers_flow_match_scheduler_with_shift_5() -> None:
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    ours = shifted_flow_sigmas(1000, 5.0)
    assert torch.equal(ours, reference.sigmas)
    objective = FlowMatching(shift=5.0)
    assert torch.equal(objective.timesteps, reference.timesteps)
    for index in (0, 1, 250, 500, 999):
        assert ours[index].item() == reference.sigmas[index].item()


def test_shifted_schedule_values_at_hand_computed_indices() -> None:
    sigmas = shifted_flow_sigmas(1000, 5.0)
    # index i has unshifted u = (1000 - i) / 1000 and sigma = 5u / (1 + 4u)
    assert sigmas[0].item() == 1.0
    assert sigmas[500].item() == pytest.approx(2.5 / 3.0, abs=1e-6)
    assert sigmas[999].item() == pytest.approx(0.005 / 1.004, abs=1e-7)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert torch.allclose(shifted_flow_sigmas(1000, 1.0), torch.arange(1000, 0, -1) / 1000)


def test_from_scheduler_config_reads_wan_civitai_scheduler_kwargs() -> None:
    wan_civitai = {
        "num_train_timesteps": 1000,
        "shift": 5.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }
    objective = FlowMatching.from_scheduler_config(wan_civitai)
    assert objective.shift == 5.0
    assert torch.equal(objective.sigmas, FlowMatchEulerDiscreteScheduler(**wan_civitai).sigmas)


def test_from_scheduler_config_with_dynamic_shifting_trains_on_unshifted_sigmas() -> None:
    config = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
    objective = FlowMatching.from_scheduler_config(config)
    assert torch.equal(objective.sigmas, FlowMatchEulerDiscreteScheduler(**config).sigmas)


def test_prepare_mixes_latents_and_noise_by_sigma_and_targets_velocity() -> None:
    latents = torch.full((3, 2, 1, 2, 2), 2.0)
    objective = FlowMatching(shift=5.0, sampler=FixedIndices((0, 500, 999)))
    batch = objective.prepare(latents, _generator(7))
    noise = torch.randn(latents.shape, generator=_generator(7))
    sigma = shifted_flow_sigmas(1000, 5.0)[[0, 500, 999]]

    assert torch.equal(batch.index, torch.tensor([0, 500, 999]))
    assert torch.equal(batch.sigma, sigma)
    assert torch.equal(batch.timestep, sigma * 1000)
    assert batch.timestep[0].item() == 1000.0
    assert torch.equal(batch.noisy[0], noise[0])  # sigma 1: pure noise
    s = sigma.view(3, 1, 1, 1, 1)
    assert torch.equal(batch.noisy, (1 - s) * latents + s * noise)
    assert torch.equal(batch.target, noise - latents)
    assert torch.equal(batch.alpha, 1 - sigma)
    assert torch.equal(batch.loss_weight, torch.ones(3))


def test_prepare_is_deterministic_given_the_generator() -> None:
    latents = torch.randn(SHAPE, generator=_generator(1))
    objective = FlowMatching()
    first = objective.prepare(latents, _generator(3))
    again = objective.prepare(latents, _generator(3))
    other = objective.prepare(latents, _generator(4))
    assert torch.equal(first.noisy, again.noisy)
    assert torch.equal(first.index, again.index)
    assert not torch.equal(first.noisy, other.noisy)


def test_prepare_draws_noise_then_indices_from_one_stream() -> None:
    latents = torch.zeros(SHAPE)
    sampler = UniformIndexSampler(1000)
    batch = FlowMatching(sampler=sampler).prepare(latents, _generator(5))
    stream = _generator(5)
    noise = torch.randn(SHAPE, generator=stream)
    assert torch.equal(batch.target, noise)
    assert torch.equal(batch.index, sampler(SHAPE[0], stream))


def test_prepare_keeps_the_latents_dtype() -> None:
    latents = torch.randn(SHAPE, generator=_generator(1)).to(torch.bfloat16)
    batch = FlowMatching().prepare(latents, _generator(2))
    assert batch.noisy.dtype == torch.bfloat16
    assert batch.target.dtype == torch.bfloat16
    assert batch.timestep.dtype == torch.float32
    loss = FlowMatching().loss(batch.target.clone(), batch)
    assert loss.dtype == torch.float32


def test_flow_matching_satisfies_the_objective_protocol() -> None:
    assert isinstance(FlowMatching(), Objective)


def test_loss_is_zero_when_prediction_equals_target() -> None:
    objective = FlowMatching()
    batch = objective.prepare(torch.randn(SHAPE, generator=_generator(1)), _generator(2))
    assert objective.loss(batch.target.clone(), batch).item() == 0.0


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "sigma_sqrt", "cosmap"])
def test_loss_equals_videox_fun_custom_mse_with_sd3_weighting(scheme: str) -> None:
    objective = FlowMatching(weighting_scheme=scheme, sampler=FixedIndices((10, 400, 900)))
    latents = torch.randn(SHAPE, generator=_generator(1))
    batch = objective.prepare(latents, _generator(2))
    prediction = torch.randn(SHAPE, generator=_generator(3))
    prediction[0, 0, 0, 0, 0] = 500.0  # an outlier the original drops from the sum
    sigmas = batch.sigma.view(-1, 1, 1, 1, 1)
    expected = videox_fun_loss(prediction, batch.target, sigmas, scheme)
    assert torch.allclose(objective.loss(prediction, batch), expected, rtol=1e-6, atol=0)


def test_outlier_threshold_none_keeps_every_element() -> None:
    objective = FlowMatching(outlier_threshold=None, sampler=FixedIndices((1, 2, 3)))
    batch = objective.prepare(torch.zeros(SHAPE), _generator(2))
    prediction = batch.target.clone()
    prediction[0, 0, 0, 0, 0] += 100.0
    numel = prediction.numel()
    assert objective.loss(prediction, batch).item() == pytest.approx(100.0**2 / numel)
    assert FlowMatching(sampler=FixedIndices((1, 2, 3))).loss(prediction, batch).item() == 0.0


def test_loss_weighting_matches_diffusers_for_every_scheme() -> None:
    sigmas = shifted_flow_sigmas(1000, 5.0)[[3, 300, 700]]
    for scheme in ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"):
        expected = compute_loss_weighting_for_sd3(scheme, sigmas).float()
        assert torch.allclose(loss_weighting(scheme, sigmas), expected)
    with pytest.raises(ValueError, match="unknown weighting scheme 'sigma'"):
        loss_weighting("sigma", sigmas)


def test_mask_weight_restricts_the_loss_to_the_selected_elements() -> None:
    objective = FlowMatching(sampler=FixedIndices((1, 2, 3)))
    batch = objective.prepare(torch.zeros(SHAPE), _generator(2))
    prediction = batch.target + torch.randn(SHAPE, generator=_generator(4))
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[:, :, :, :3] = 1.0  # top half of every frame, all channels
    selected = (prediction - batch.target)[:, :, :, :3]
    assert torch.allclose(objective.loss(prediction, batch, weight=mask), selected.square().mean())
    ones = torch.ones(SHAPE)
    assert torch.allclose(objective.loss(prediction, batch, weight=ones), objective.loss(prediction, batch))


def test_an_all_zero_mask_gives_zero_loss_that_still_backpropagates() -> None:
    objective = FlowMatching(sampler=FixedIndices((1, 2, 3)))
    batch = objective.prepare(torch.zeros(SHAPE), _generator(2))
    prediction = torch.randn(SHAPE, generator=_generator(4), requires_grad=True)
    loss = objective.loss(prediction, batch, weight=torch.zeros(SHAPE))
    loss.backward()
    assert loss.item() == 0.0
    assert prediction.grad is not None


def test_motion_loss_mixes_frame_difference_error_by_its_ratio() -> None:
    sampler = FixedIndices((1, 2, 3))
    batch = FlowMatching(sampler=sampler).prepare(torch.zeros(SHAPE), _generator(2))
    prediction = torch.randn(SHAPE, generator=_generator(4))
    plain = FlowMatching(sampler=sampler).loss(prediction, batch)
    motion = FlowMatching(sampler=sampler, motion_loss_ratio=0.25).loss(prediction, batch)
    pred_sub = prediction[:, :, 1:] - prediction[:, :, :-1]
    target_sub = batch.target[:, :, 1:] - batch.target[:, :, :-1]
    expected = plain * 0.75 + F.mse_loss(pred_sub, target_sub) * 0.25
    assert torch.allclose(motion, expected)


def test_motion_loss_is_skipped_with_two_or_fewer_latent_frames() -> None:
    sampler = FixedIndices((1, 2, 3))
    shape = (3, 4, 2, 6, 6)
    batch = FlowMatching(sampler=sampler).prepare(torch.zeros(shape), _generator(2))
    prediction = torch.randn(shape, generator=_generator(4))
    plain = FlowMatching(sampler=sampler).loss(prediction, batch)
    assert torch.equal(FlowMatching(sampler=sampler, motion_loss_ratio=0.25).loss(prediction, batch), plain)


def test_loss_rejects_a_prediction_of_another_shape() -> None:
    objective = FlowMatching()
    batch = objective.prepare(torch.zeros(SHAPE), _generator(2))
    with pytest.raises(ValueError, match=r"prediction has shape \(3, 4, 4, 6, 6\)"):
        objective.loss(torch.zeros(3, 4, 4, 6, 6), batch)


def test_a_sampler_wider_than_the_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot exceed num_train_timesteps"):
        FlowMatching(num_train_timesteps=500, sampler=UniformIndexSampler(1000))


def test_noised_batch_reports_its_batch_size() -> None:
    batch = FlowMatching().prepare(torch.zeros(SHAPE), _generator(0))
    assert isinstance(batch, NoisedBatch)
    assert batch.batch_size == SHAPE[0]

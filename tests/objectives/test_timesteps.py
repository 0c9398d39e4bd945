"""Timestep index samplers: densities as diffusers computes them, rank strata as VideoX-Fun splits them."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from vidctrl.objectives.timesteps import (
    IndexSampler,
    LogitNormalIndexSampler,
    ModeIndexSampler,
    RankStratifiedIndexSampler,
    UniformIndexSampler,
    build_index_sampler,
    indices_from_density,
    rank_stratum,
)

N = 1000


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("sampler", "scheme"),
    [
        (UniformIndexSampler(N), "none"),
        (LogitNormalIndexSampler(N, logit_mean=0.3, logit_std=1.2), "logit_normal"),
        (ModeIndexSampler(N, mode_scale=1.29), "mode"),
    ],
)
def test_density_samplers_equal_diffusers_density_times_num_timesteps(
    sampler: IndexSampler, scheme: str
) -> None:
    u = compute_density_for_timestep_sampling(
        weighting_scheme=scheme,
        batch_size=64,
        logit_mean=0.3,
        logit_std=1.2,
        mode_scale=1.29,
        generator=_generator(11),
    )
    expected = (u * N).long()
    assert torch.equal(sampler(64, _generator(11)), expected)


def test_logit_normal_samples_have_the_requested_logit_mean_and_std() -> None:
    sampler = LogitNormalIndexSampler(N, logit_mean=0.5, logit_std=0.8)
    indices = sampler(40_000, _generator(0))
    u = (indices.double() + 0.5) / N  # bin centres
    logits = torch.log(u / (1 - u))
    assert logits.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logits.std().item() == pytest.approx(0.8, abs=0.03)


def test_uniform_sampler_covers_the_schedule_evenly() -> None:
    indices = UniformIndexSampler(N)(50_000, _generator(0))
    assert indices.dtype == torch.int64
    assert indices.min().item() >= 0 and indices.max().item() <= N - 1
    counts = torch.bincount(indices // 100, minlength=10).double()
    assert torch.all((counts / counts.mean() - 1).abs() < 0.05)


def test_mode_density_at_its_endpoint_stays_inside_the_schedule() -> None:
    # v == 0 gives u == 1 exactly, one past the last index before clamping
    assert indices_from_density(torch.tensor([1.0, 0.0, 0.9999]), N).tolist() == [N - 1, 0, N - 1]


def test_samplers_are_deterministic_given_the_generator() -> None:
    for sampler in (
        UniformIndexSampler(N),
        LogitNormalIndexSampler(N),
        ModeIndexSampler(N),
        RankStratifiedIndexSampler(N, rank=1, world_size=4),
    ):
        assert torch.equal(sampler(32, _generator(5)), sampler(32, _generator(5)))
        assert not torch.equal(sampler(32, _generator(5)), sampler(32, _generator(6)))


def test_rank_strata_of_8_ranks_are_disjoint_slices_of_125_covering_1000() -> None:
    strata = [rank_stratum(N, rank, 8) for rank in range(8)]
    assert strata == [range(125 * r, 125 * (r + 1)) for r in range(8)]
    covered = sorted(i for stratum in strata for i in stratum)
    assert covered == list(range(N))


def test_rank_strata_group_ranks_when_the_world_does_not_divide_the_schedule() -> None:
    # 6 ranks, 1000 indices: the largest divisor of 6 that divides 1000 is 2 -> two groups of 3 ranks
    assert [rank_stratum(N, r, 6) for r in range(6)] == [range(0, 500)] * 3 + [range(500, 1000)] * 3
    # 3 ranks: no divisor > 1 divides 1000, every rank samples everything
    assert [rank_stratum(N, r, 3) for r in range(3)] == [range(0, 1000)] * 3
    assert rank_stratum(N, 0, 1) == range(0, 1000)


def test_rank_stratified_samples_stay_in_their_slice_and_their_union_is_uniform() -> None:
    world = 4
    per_rank = [
        RankStratifiedIndexSampler(N, rank=r, world_size=world)(20_000, _generator(r)) for r in range(world)
    ]
    for rank, indices in enumerate(per_rank):
        stratum = rank_stratum(N, rank, world)
        assert indices.min().item() >= stratum.start and indices.max().item() < stratum.stop
    union = torch.cat(per_rank)
    counts = torch.bincount(union // 50, minlength=20).double()
    assert torch.all((counts / counts.mean() - 1).abs() < 0.06)


def test_rank_stratum_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 4 is not in a world of 4"):
        RankStratifiedIndexSampler(N, rank=4, world_size=4)


def test_build_index_sampler_follows_the_seed_flags() -> None:
    assert build_index_sampler() == UniformIndexSampler(N)
    assert build_index_sampler(weighting_scheme="sigma_sqrt") == UniformIndexSampler(N)
    assert build_index_sampler(weighting_scheme="logit_normal", logit_mean=0.2, logit_std=0.5) == (
        LogitNormalIndexSampler(N, logit_mean=0.2, logit_std=0.5)
    )
    assert build_index_sampler(weighting_scheme="mode", mode_scale=1.0) == ModeIndexSampler(N, mode_scale=1.0)
    # --uniform_sampling wins over the weighting scheme for sampling
    stratified = build_index_sampler(
        weighting_scheme="logit_normal", uniform_sampling=True, rank=2, world_size=8
    )
    assert stratified == RankStratifiedIndexSampler(N, rank=2, world_size=8)
    with pytest.raises(ValueError, match="unknown weighting scheme 'lognorm'"):
        build_index_sampler(weighting_scheme="lognorm")


def test_train_sampling_steps_narrows_only_the_rank_stratified_sampler() -> None:
    # VideoX-Fun's flow trainers pass --train_sampling_steps to DiscreteSampling alone
    assert build_index_sampler(train_sampling_steps=500) == UniformIndexSampler(N)
    assert build_index_sampler(weighting_scheme="logit_normal", train_sampling_steps=500) == LogitNormalIndexSampler(N)
    assert build_index_sampler(weighting_scheme="mode", train_sampling_steps=500) == ModeIndexSampler(N)
    narrowed = build_index_sampler(uniform_sampling=True, train_sampling_steps=500, rank=1, world_size=2)
    assert narrowed == RankStratifiedIndexSampler(500, rank=1, world_size=2) and narrowed.stratum == range(250, 500)
    with pytest.raises(ValueError, match="--train_sampling_steps 2000 exceeds the 1000 steps"):
        build_index_sampler(uniform_sampling=True, train_sampling_steps=2000)


def test_wan_narrows_the_timesteps_only_under_uniform_sampling() -> None:
    from vidctrl.config.train import parse_train_config
    from vidctrl.families import family_for_preset

    def sampler(*flags: str) -> object:
        config = parse_train_config(["--preset", "wan2.1-fun-control-v1.1", *flags])
        family = family_for_preset(config.preset).from_config(config)
        return family.build_objective(config.objective, rank=0, world_size=1).sampler

    assert sampler() == UniformIndexSampler(N)
    assert sampler("--weighting_scheme", "logit_normal") == LogitNormalIndexSampler(N)
    assert sampler("--uniform_sampling") == RankStratifiedIndexSampler(N)
    narrowed = sampler("--uniform_sampling", "--train_sampling_steps", "200")
    assert narrowed == RankStratifiedIndexSampler(200)
    assert narrowed(4000, _generator(1)).max() < 200  # type: ignore[operator]


def test_train_sampling_steps_without_uniform_sampling_is_refused_on_wan() -> None:
    from vidctrl.config.train import ConfigError, parse_train_config

    with pytest.raises(ConfigError, match="--train_sampling_steps 200 acts only with --uniform_sampling"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--train_sampling_steps", "200"])


def test_indices_come_back_on_the_cpu_as_int64() -> None:
    for sampler in (UniformIndexSampler(N), LogitNormalIndexSampler(N), RankStratifiedIndexSampler(N)):
        indices = sampler(8, _generator(0))
        assert indices.device.type == "cpu" and indices.dtype == torch.int64


def test_logit_normal_with_zero_mean_is_symmetric_about_the_middle() -> None:
    indices = LogitNormalIndexSampler(N)(40_000, _generator(1)).double()
    assert indices.mean().item() == pytest.approx((N - 1) / 2, abs=3.0)
    assert math.isclose((indices < N / 2).double().mean().item(), 0.5, abs_tol=0.01)

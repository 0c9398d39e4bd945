"""Timestep samplers: which position of the training schedule each sample of a batch gets.

A sampler returns indices into a schedule of `num_indices` entries. For flow matching the
schedule runs from pure noise (index 0, sigma 1) towards the data (the last index), as
diffusers' `FlowMatchEulerDiscreteScheduler.timesteps` does; a density value ``u`` in [0, 1)
maps to index ``floor(u * num_indices)``, so ``u`` is the fraction of the way from noise to
data. This is how VideoX-Fun's Wan2.1-Fun trainer (scripts/wan2.1_fun/train_control.py) and
diffusers' SD3 examples turn `compute_density_for_timestep_sampling` into timesteps.

Samplers (the `--weighting_scheme` / `--uniform_sampling` flags of VideoX-Fun and EasyAnimate):

- `UniformIndexSampler`: ``u ~ U[0, 1)`` (weighting schemes none, sigma_sqrt, cosmap).
- `LogitNormalIndexSampler`: ``u = sigmoid(n), n ~ N(logit_mean, logit_std)``.
- `ModeIndexSampler`: ``u = 1 - v - mode_scale * (cos(pi v / 2)^2 - 1 + v), v ~ U[0, 1)``.
- `RankStratifiedIndexSampler` (`--uniform_sampling`): each rank draws uniformly from its own
  slice of the schedule, so that one optimizer step across ranks covers the whole range.

All randomness comes from the `torch.Generator` passed in; samplers are pure and stateless, so
the engine's per-rank generator alone determines (and, on resume, restores) the sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

WeightingScheme = Literal["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"]
WEIGHTING_SCHEMES: tuple[str, ...] = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@runtime_checkable
class IndexSampler(Protocol):
    """Draws ``(batch_size,)`` int64 schedule indices in ``[0, num_indices)`` on the CPU."""

    num_indices: int

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor: ...


def _check_num_indices(num_indices: int) -> None:
    if num_indices < 1:
        raise ValueError(
            f"a timestep sampler needs at least one schedule index, got num_indices={num_indices}"
        )


def indices_from_density(u: Tensor, num_indices: int) -> Tensor:
    """``floor(u * num_indices)`` as int64 on the CPU, kept inside the schedule.

    The clamp matters only at ``u == 1``, which the mode density reaches for ``v == 0`` (the
    original would index one past the end there and fail).
    """
    return (u * num_indices).long().clamp_(0, num_indices - 1).cpu()


@dataclass(frozen=True)
class UniformIndexSampler:
    """Every schedule index equally likely."""

    num_indices: int = 1000

    def __post_init__(self) -> None:
        _check_num_indices(self.num_indices)

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        u = torch.rand((batch_size,), generator=generator, device=generator.device)
        return indices_from_density(u, self.num_indices)


@dataclass(frozen=True)
class LogitNormalIndexSampler:
    """``u = sigmoid(n)``, ``n ~ N(logit_mean, logit_std)`` (SD3's logit-normal sampling)."""

    num_indices: int = 1000
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        _check_num_indices(self.num_indices)
        if not self.logit_std > 0:
            raise ValueError(f"logit_std must be positive, got {self.logit_std}")

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        n = torch.normal(
            mean=self.logit_mean,
            std=self.logit_std,
            size=(batch_size,),
            generator=generator,
            device=generator.device,
        )
        return indices_from_density(torch.sigmoid(n), self.num_indices)


@dataclass(frozen=True)
class ModeIndexSampler:
    """SD3's "mode" density with heavier mass in the middle of the schedule for ``mode_scale > 0``."""

    num_indices: int = 1000
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        _check_num_indices(self.num_indices)

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        v = torch.rand((batch_size,), generator=generator, device=generator.device)
        u = 1 - v - self.mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
        return indices_from_density(u, self.num_indices)


def rank_stratum(num_indices: int, rank: int, world_size: int) -> range:
    """The slice of schedule indices that `rank` draws from under ``--uniform_sampling``.

    As VideoX-Fun's `DiscreteSampling` (videox_fun/utils/discrete_sampler.py): the ranks form
    ``G`` groups, ``G`` the largest divisor of `world_size` that also divides `num_indices`;
    consecutive ranks share a group (``group = rank // (world_size // G)``), and group ``g``
    draws from ``[g * num_indices / G, (g + 1) * num_indices / G)``. With 8 ranks and 1000
    indices every rank owns 125 indices; with 3 ranks (1000 is not divisible by 3) all three
    share the full range.
    """
    _check_num_indices(num_indices)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    groups = max(d for d in range(1, world_size + 1) if world_size % d == 0 and num_indices % d == 0)
    group = rank // (world_size // groups)
    width = num_indices // groups
    return range(group * width, (group + 1) * width)


@dataclass(frozen=True)
class RankStratifiedIndexSampler:
    """``--uniform_sampling``: uniform over this rank's stratum (see `rank_stratum`)."""

    num_indices: int = 1000
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        rank_stratum(self.num_indices, self.rank, self.world_size)  # validates

    @property
    def stratum(self) -> range:
        return rank_stratum(self.num_indices, self.rank, self.world_size)

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        stratum = self.stratum
        indices = torch.randint(
            stratum.start, stratum.stop, (batch_size,), generator=generator, device=generator.device
        )
        return indices.cpu()


def build_index_sampler(
    *,
    num_indices: int = 1000,
    weighting_scheme: str = "none",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    uniform_sampling: bool = False,
    rank: int = 0,
    world_size: int = 1,
    train_sampling_steps: int | None = None,
) -> IndexSampler:
    """The sampler the seed flags select, as VideoX-Fun decides it.

    ``--uniform_sampling`` wins over ``--weighting_scheme`` for sampling (the scheme still sets
    the loss weighting, see `vidctrl.objectives.flow.loss_weighting`). Otherwise the scheme
    picks the density: logit_normal and mode have their own, the rest sample uniformly.

    `train_sampling_steps` (``--train_sampling_steps``) narrows only the rank-stratified sampler
    to the first that many indices: VideoX-Fun's flow trainers (scripts/wan2.1_fun/train_control.py,
    EasyAnimate's scripts/train_control.py) give it to `DiscreteSampling` alone and draw the
    densities from all `num_indices` (``u * num_train_timesteps``). None: the whole schedule.
    """
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(
            f"unknown weighting scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}"
        )
    if uniform_sampling:
        stratified = num_indices if train_sampling_steps is None else train_sampling_steps
        if stratified > num_indices:
            raise ValueError(f"--train_sampling_steps {stratified} exceeds the {num_indices} steps of the schedule")
        return RankStratifiedIndexSampler(stratified, rank=rank, world_size=world_size)
    if weighting_scheme == "logit_normal":
        return LogitNormalIndexSampler(num_indices, logit_mean=logit_mean, logit_std=logit_std)
    if weighting_scheme == "mode":
        return ModeIndexSampler(num_indices, mode_scale=mode_scale)
    return UniformIndexSampler(num_indices)

"""Training objectives (flow matching, DDPM): noising, targets and losses, independent of model families."""

from vidctrl.objectives.base import NoisedBatch, Objective
from vidctrl.objectives.ddpm import DDPM
from vidctrl.objectives.flow import FlowMatching, shifted_flow_sigmas
from vidctrl.objectives.timesteps import (
    IndexSampler,
    LogitNormalIndexSampler,
    ModeIndexSampler,
    RankStratifiedIndexSampler,
    UniformIndexSampler,
    build_index_sampler,
    rank_stratum,
)

__all__ = [
    "DDPM",
    "FlowMatching",
    "IndexSampler",
    "LogitNormalIndexSampler",
    "ModeIndexSampler",
    "NoisedBatch",
    "Objective",
    "RankStratifiedIndexSampler",
    "UniformIndexSampler",
    "build_index_sampler",
    "rank_stratum",
    "shifted_flow_sigmas",
]

"""Gradient clipping, including VideoX-Fun's decaying limit and its damping of abnormal gradients.

VideoX-Fun's trainers (Wan2.1-Fun, CogVideoX-Fun, EasyAnimate) do not clip at `--max_grad_norm`
from the first step: the limit starts at `initial_grad_norm_ratio` times it and decays linearly to
it over `abnormal_norm_clip_start` steps; after that, a gradient whose norm exceeds 5x the limit is
clipped harder, to limit / min(norm / limit, 10). Their seed commands mean exactly that, so the
Wan presets keep it (ratio 5, start 1000); ratio 1 is plain clipping at `max_grad_norm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def linear_decay(initial: float, final: float, steps: int, step: int) -> float:
    """`initial` at step 0, `final` from step `steps` on, linear in between."""
    if steps <= 0 or step >= steps:
        return final
    return initial + (final - initial) * step / steps


def grad_clip_limit(step: int, total_norm: float, *, max_grad_norm: float, initial_ratio: float = 1.0,
                    abnormal_start: int = 1000) -> float:
    """The norm the gradients of optimizer step `step` are clipped to, given their norm."""
    limit = linear_decay(max_grad_norm * initial_ratio, max_grad_norm, abnormal_start, step)
    if initial_ratio > 1 and step > abnormal_start and total_norm / limit > 5:
        return limit / min(total_norm / limit, 10.0)
    return limit


def clip_gradients(norm_of: Callable[[], torch.Tensor | float], parameters: Sequence[torch.nn.Parameter],
                   limit_for: Callable[[float], float]) -> float:
    """Clip `parameters`' gradients to `limit_for(norm)`; returns the norm before clipping.

    `norm_of` computes the global norm (under accelerate: `clip_grad_norm_(params, inf)`, which also
    unscales fp16 gradients and reduces across shards); the scaling is torch's rule.
    """
    norm = float(norm_of())
    if not math.isfinite(norm):
        return norm
    limit = limit_for(norm)
    coefficient = limit / (norm + 1e-6)
    if coefficient < 1.0:
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(coefficient)
    return norm

"""Trainable-parameter selection, optimizers and learning-rate schedules.

Facts this module reproduces (sources: aigc-apps/VideoX-Fun scripts/wan2.1_fun/train_control.py,
gulucaptain/DynamiCtrl utils/utils.py, utils/args.py, scripts/dynamictrl_sft_finetune.py):

- Selection (VideoX-Fun): the whole model is frozen, then a parameter trains when any substring
  of ``--trainable_modules`` or ``--trainable_modules_low_learning_rate`` occurs in its name.
  Names matching ``--trainable_modules`` go to a group at ``lr``; the others that match the
  low list go to a group at ``lr / 2``.
- Optimizers: AdamW (``--adam_beta1/2 --adam_weight_decay --adam_epsilon``), bitsandbytes
  AdamW8bit (``--use_8bit_adam``), CAME (``--use_came``: ``betas=(0.9, 0.999, 0.9999)``,
  ``eps=(1e-30, 1e-16)``; VideoX-Fun passes neither the adam betas nor the weight decay to it,
  DynamiCtrl passes ``(beta1, beta2, beta3)`` and its weight decay). DynamiCtrl adds Adam (L2
  weight decay) and Prodigy; its defaults are beta2 0.95, weight decay 1e-4, epsilon 1e-8.
- Schedules: diffusers' `get_scheduler` with ``num_warmup_steps = lr_warmup_steps *
  num_processes`` and ``num_training_steps = max_train_steps * num_processes``, because
  accelerate's prepared scheduler steps the wrapped one ``num_processes`` times per optimizer
  step (and not at all on accumulation micro-steps). DynamiCtrl also passes ``lr_num_cycles``
  and ``lr_power``; VideoX-Fun leaves them at 1 and 1.0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vidctrl.errors import UserError

logger = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "adamw8bit", "adam8bit", "came", "prodigy")
SCHEDULES: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
# Schedules that decay towards the end of training and so must know where it is.
_NEEDS_TOTAL_STEPS = frozenset({"linear", "cosine", "cosine_with_restarts", "polynomial"})

CAME_BETAS: tuple[float, float, float] = (0.9, 0.999, 0.9999)
CAME_EPS: tuple[float, float] = (1e-30, 1e-16)


class TrainableModulesError(UserError, ValueError):
    """A ``--trainable_modules*`` substring selects nothing (a typo, or shadowed by the other list)."""


@dataclass
class GroupSummary:
    """One optimizer group: its name, learning rate and the parameters it received."""

    name: str
    lr: float
    names: list[str] = field(default_factory=list)
    numel: int = 0


@dataclass
class ParamGroups:
    """Optimizer param groups (only the non-empty ones) and what each received."""

    groups: list[dict[str, Any]]
    summaries: list[GroupSummary]
    frozen_numel: int

    @property
    def trainable_numel(self) -> int:
        return sum(s.numel for s in self.summaries)

    def describe(self) -> str:
        """One line per group, for the training log."""
        lines = [
            f"{s.name}: {len(s.names)} tensors, {s.numel:,} parameters at lr {s.lr:g}" for s in self.summaries
        ]
        lines.append(f"frozen: {self.frozen_numel:,} parameters")
        return "\n".join(lines)


def param_groups(
    model: nn.Module,
    *,
    trainable_modules: Sequence[str] | None,
    trainable_modules_low_learning_rate: Sequence[str] = (),
    lr: float,
    low_lr_scale: float = 0.5,
    name_for_matching: Callable[[str], str] | None = None,
) -> ParamGroups:
    """Select trainable parameters by name substrings, set `requires_grad`, and group them by lr.

    trainable_modules: substrings of parameter names to train at `lr`; None trains every
        parameter, at `lr` unless it matches the low-rate list (full fine-tuning). Note that ``"."`` (the seeds' "everything") only matches
        names with a dot: a top-level parameter such as diffusers' Wan ``scale_shift_table``
        (``head.modulation`` in the original layout) does not match; `name_for_matching` can
        match against the original layout's names instead.
    trainable_modules_low_learning_rate: substrings of names to train at ``lr * low_lr_scale``
        (VideoX-Fun: half); a name that also matches `trainable_modules` takes the full rate.
    name_for_matching: maps a parameter name to the name the substrings are tested against.

    Raises `TrainableModulesError` naming every substring that selects no parameter, or whose
    every match already trains at the full rate: either is a config mistake that would otherwise
    train something other than what was asked, silently.
    """
    full_list = list(trainable_modules) if trainable_modules is not None else None
    low_list = list(trainable_modules_low_learning_rate)
    full = GroupSummary("trainable", lr)
    low = GroupSummary("trainable_low_lr", lr * low_lr_scale)
    full_params: list[nn.Parameter] = []
    low_params: list[nn.Parameter] = []
    frozen_numel = 0
    hits_full: dict[str, int] = dict.fromkeys(full_list or [], 0)
    hits_low: dict[str, int] = dict.fromkeys(low_list, 0)
    low_shadowed: dict[str, int] = dict.fromkeys(low_list, 0)

    for name, param in model.named_parameters():
        key = name_for_matching(name) if name_for_matching is not None else name
        matched_low = [s for s in low_list if s in key]
        if full_list is None:
            at_full_rate = not matched_low
        else:
            matched_full = [s for s in full_list if s in key]
            at_full_rate = bool(matched_full)
            for s in matched_full:
                hits_full[s] += 1
        for s in matched_low:
            hits_low[s] += 1
            if at_full_rate:
                low_shadowed[s] += 1
        if at_full_rate:
            group, params = full, full_params
        elif matched_low:
            group, params = low, low_params
        else:
            param.requires_grad_(False)
            frozen_numel += param.numel()
            continue
        param.requires_grad_(True)
        params.append(param)
        group.names.append(name)
        group.numel += param.numel()

    problems = [f"--trainable_modules {s!r} matches no parameter" for s, n in hits_full.items() if n == 0]
    problems += [
        f"--trainable_modules_low_learning_rate {s!r} matches no parameter"
        for s, n in hits_low.items()
        if n == 0
    ]
    problems += [
        f"--trainable_modules_low_learning_rate {s!r} matches only parameters that --trainable_modules "
        f"already trains at the full learning rate"
        for s, n in hits_low.items()
        if n > 0 and low_shadowed[s] == n
    ]
    if problems:
        examples = [name for name, _ in model.named_parameters()][:5]
        raise TrainableModulesError(
            "; ".join(problems) + f". Substrings are matched against parameter names such as {examples}."
        )

    groups: list[dict[str, Any]] = []
    summaries: list[GroupSummary] = []
    for summary, params in ((full, full_params), (low, low_params)):
        if params:
            groups.append({"params": params, "lr": summary.lr, "name": summary.name})
            summaries.append(summary)
    if not groups:
        raise TrainableModulesError("no parameter is trainable: --trainable_modules selected nothing")
    return ParamGroups(groups=groups, summaries=summaries, frozen_numel=frozen_numel)


def _trainable_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    """Normalise parameters or param-group dicts, dropping parameters that need no gradient."""
    items = list(params)
    raw_groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
    groups: list[dict[str, Any]] = []
    for raw in raw_groups:
        group = dict(raw)
        tensors = group["params"]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        group["params"] = [p for p in tensors if p.requires_grad]
        if group["params"]:
            groups.append(group)
    if not groups:
        raise ValueError("the optimizer got no parameter that requires a gradient")
    return groups


def _import_optional(module: str, package: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the {package} package: pip install {package}") from error


def build_optimizer(
    params: Iterable[Any],
    *,
    name: str = "adamw",
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    options: Mapping[str, Any] | None = None,
) -> Optimizer:
    """An optimizer over the parameters (or param groups) that require a gradient.

    name: adamw (decoupled weight decay), adam (L2 weight decay, DynamiCtrl's default),
        adamw8bit / adam8bit (bitsandbytes), came (came-pytorch), prodigy (prodigyopt).
    lr: the default learning rate; a group's own ``lr`` wins.
    betas, eps, weight_decay: as for Adam. CAME uses ``(betas[0], betas[1], beta3)`` with
        ``beta3 = 0.9999`` when None, and its own ``eps = (1e-30, 1e-16)``; Prodigy takes
        `beta3` as is (None: sqrt of beta2).
    options: extra keyword arguments for the optimizer class (Prodigy's ``decouple``,
        ``use_bias_correction``, ``safeguard_warmup``; CAME's ``eps``; ...).

    To reproduce VideoX-Fun's ``--use_came`` exactly, pass ``weight_decay=0`` and the default
    betas: that script does not hand its adam flags to CAME.
    """
    groups = _trainable_groups(params)
    extra = dict(options or {})
    adam_kwargs: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(groups, **adam_kwargs, **extra)
    if name == "adam":
        return torch.optim.Adam(groups, **adam_kwargs, **extra)
    if name in ("adamw8bit", "adam8bit"):
        bnb = _import_optional("bitsandbytes", "bitsandbytes", f"--optimizer {name} (8-bit Adam)")
        cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Adam8bit
        return cls(groups, **adam_kwargs, **extra)
    if name == "came":
        came = _import_optional("came_pytorch", "came-pytorch", "--optimizer came")
        came_kwargs: dict[str, Any] = {
            "lr": lr,
            "betas": (betas[0], betas[1], CAME_BETAS[2] if beta3 is None else beta3),
            "eps": CAME_EPS,
            "weight_decay": weight_decay,
        }
        came_kwargs.update(extra)
        return came.CAME(groups, **came_kwargs)
    if name == "prodigy":
        prodigyopt = _import_optional("prodigyopt", "prodigyopt", "--optimizer prodigy")
        if lr <= 0.1:
            logger.warning(
                "Prodigy adapts the step size itself; a learning rate around 1.0 is usual, got %g", lr
            )
        prodigy_kwargs: dict[str, Any] = {
            **adam_kwargs,
            "beta3": beta3,
            # DynamiCtrl's flag defaults (store_true), not Prodigy's own (decouple=True).
            "decouple": False,
            "use_bias_correction": False,
            "safeguard_warmup": False,
        }
        prodigy_kwargs.update(extra)
        return prodigyopt.Prodigy(groups, **prodigy_kwargs)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: Optimizer,
    name: str = "constant",
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    num_cycles: int = 1,
    power: float = 1.0,
    steps_per_optimizer_step: int = 1,
) -> LRScheduler:
    """A diffusers learning-rate schedule, counted in optimizer steps.

    warmup_steps, total_steps: in optimizer steps (``--lr_warmup_steps``, ``--max_train_steps``).
    num_cycles: cosine_with_restarts' number of hard restarts (``--lr_num_cycles``).
    power: polynomial's power (``--lr_power``); it decays to diffusers' default ``lr_end`` 1e-7.
    steps_per_optimizer_step: how often `scheduler.step()` is called per optimizer step. Pass
        ``accelerator.num_processes`` when the scheduler goes through `accelerator.prepare`
        (which steps it once per process, and skips accumulation micro-steps), 1 when the
        engine calls `step()` itself once per optimizer step. Both schedules then equal the
        seed scripts', which multiply their step counts by ``num_processes``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"lr_warmup_steps must not be negative, got {warmup_steps}")
    if name in _NEEDS_TOTAL_STEPS and total_steps is None:
        raise ValueError(f"the {name} schedule needs the total number of training steps (--max_train_steps)")
    if steps_per_optimizer_step < 1:
        raise ValueError(f"steps_per_optimizer_step must be at least 1, got {steps_per_optimizer_step}")
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps * steps_per_optimizer_step,
        num_training_steps=None if total_steps is None else total_steps * steps_per_optimizer_step,
        num_cycles=num_cycles,
        power=power,
    )


def scaled_learning_rate(
    learning_rate: float, *, scale_lr: bool, gradient_accumulation_steps: int, train_batch_size: int,
    num_processes: int,
) -> float:
    """The peak learning rate the optimizer gets: ``--learning_rate``, times the global batch
    (``gradient_accumulation_steps * train_batch_size * num_processes``) under ``--scale_lr``, as
    the diffusers and VideoX-Fun scripts compute it."""
    if not scale_lr:
        return learning_rate
    scaled = learning_rate * gradient_accumulation_steps * train_batch_size * num_processes
    logger.info(
        "--scale_lr: learning rate %g x %d accumulation steps x %d per-process batch x %d processes = %g",
        learning_rate, gradient_accumulation_steps, train_batch_size, num_processes, scaled,
    )
    return scaled

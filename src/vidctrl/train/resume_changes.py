"""What a resume does with the flags that changed since the checkpoint was written.

A checkpoint stores the config it was trained with (`trainer_state.json`, ``extra.config``). On
``--resume_from_checkpoint`` every field whose value differs is listed in the log with what the
change does:

- applied: the new value is used from the resumed step on. Optimizer hyper-parameters (learning
  rate, betas, epsilon, weight decay) are written into the restored optimizer and its LR schedule,
  which is what users mean by resuming with a new ``--learning_rate``.
- breaks exact data order: the run goes on, but the sample order (or the samples themselves) from
  this step on differs from what an uninterrupted run would have seen.
- refused: the checkpoint cannot honour it (another model, another set of trained parameters,
  another optimizer's state); the run stops with a `ConfigError` listing these fields.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from vidctrl.config.fields import ConfigError

log = logging.getLogger(__name__)

APPLIED = "applied"
BREAKS_ORDER = "breaks exact data order"
REFUSED = "refused"

# Fields whose change the checkpoint cannot honour: why.
_REFUSED: dict[str, str] = {
    "preset": "the checkpoint holds another model family's weights",
    "train_mode": "the trained input layers depend on the train mode",
    "use_lora": "the checkpoint holds LoRA adapters or full weights, not the other",
    "rank": "LoRA adapter shapes depend on the rank",
    "lora_target_modules": "the checkpoint's LoRA adapters sit on other modules",
    "trainable_modules": "the optimizer state belongs to another set of trained parameters",
    "trainable_modules_low_learning_rate": "the optimizer state belongs to other parameter groups",
    "optimizer": "the checkpoint holds another optimizer's state",
    "use_8bit_adam": "the checkpoint holds another optimizer's state",
    "use_came": "the checkpoint holds another optimizer's state",
}
# Data fields whose change leaves the sample order as it was (the rest of `data` changes it).
_DATA_APPLIED = frozenset({"dataloader_num_workers", "bad_sample_policy", "train_data_dir"})
# Optimizer and schedule fields that change the sample-to-step grouping.
_OPTIM_BREAKS_ORDER = frozenset({"gradient_accumulation_steps"})
# Never compared: how to resume is not part of what is trained.
_IGNORED = frozenset({"resume_from_checkpoint"})
# Optimizer param-group keys that are hyper-parameters (not state such as Prodigy's `d`).
_GROUP_HYPERPARAMETERS = ("initial_lr", "betas", "eps", "weight_decay")


@dataclass(frozen=True)
class Change:
    """One config field whose value differs from the checkpoint's."""

    section: str
    name: str
    old: Any
    new: Any
    effect: str
    why: str = ""

    def describe(self, step: int) -> str:
        line = f"{self.name} {_show(self.old)} -> {_show(self.new)} from step {step}: {self.effect}"
        return f"{line} ({self.why})" if self.why else line


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def effect_of(section: str, name: str) -> tuple[str, str]:
    """What changing `section.name` on resume does, and why (empty when obvious)."""
    if name in _REFUSED:
        return REFUSED, _REFUSED[name]
    if section == "data" and name not in _DATA_APPLIED:
        return BREAKS_ORDER, "the sampler's saved position counts batches of the old data settings"
    if section == "optim" and name in _OPTIM_BREAKS_ORDER:
        return BREAKS_ORDER, "optimizer steps group other micro-batches"
    if section == "optim":
        return APPLIED, "to the restored optimizer and LR schedule"
    if name in ("transformer_path", "pretrained_model_name_or_path"):
        return APPLIED, "to the frozen weights only: the trained ones come from the checkpoint"
    return APPLIED, ""


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Every field of `current` (a `TrainConfig.to_dict()`) whose value differs from `saved`."""
    changes: list[Change] = []
    for section, values in current.items():
        if not isinstance(values, dict):
            if section not in _IGNORED and saved.get(section) != values:
                effect, why = effect_of(section, section)
                changes.append(Change(section, section, saved.get(section), values, effect, why))
            continue
        old_values = saved.get(section) or {}
        for name, value in values.items():
            if name in _IGNORED or name not in old_values or old_values[name] == value:
                continue
            effect, why = effect_of(section, name)
            changes.append(Change(section, name, old_values[name], value, effect, why))
    return changes


def report_changes(saved: dict[str, Any] | None, current: dict[str, Any], *, step: int,
                   main_process: bool = True) -> list[Change]:
    """Log (on the main process) every changed field and what the change does; raise `ConfigError`
    for refused ones (on every process)."""
    if saved is None:
        if not main_process:
            return []
        log.warning("the checkpoint at step %d does not record its config (written by an older vidctrl): the "
                    "changed flags cannot be listed; optimizer hyper-parameters are taken from the flags", step)
        return []
    changes = config_changes(saved, current)
    _refuse(changes, step)
    if not main_process:
        return changes
    for change in changes:  # a change that breaks the exact data order is worth a warning; the rest are news
        log.log(logging.WARNING if change.effect == BREAKS_ORDER else logging.INFO, "resume: %s", change.describe(step))
    if not changes:
        log.info("resume: no config field changed since step %d", step)
    return changes


def _refuse(changes: list[Change], step: int) -> None:
    refused = [c for c in changes if c.effect == REFUSED]
    if refused:
        raise ConfigError(
            f"resuming from the checkpoint at step {step} cannot honour "
            + "; ".join(c.describe(step) for c in refused)
            + ". Restore these flags to the checkpoint's values, or start a new run in another --output_dir"
        )


def refuse_unresumable_changes(trainer_state: dict[str, Any], current: dict[str, Any]) -> None:
    """Before anything is loaded (a LoRA checkpoint does not load into a full model): raise
    `ConfigError` when the checkpoint whose `trainer_state` this is was trained with settings it
    cannot be resumed under (`CheckpointManager.resume`'s `check`)."""
    saved = trainer_state.get("extra", {}).get("config")
    if isinstance(saved, dict):
        _refuse(config_changes(saved, current), int(trainer_state.get("step", 0)))


def optimizer_hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    """The hyper-parameters of each param group of a freshly built optimizer (before a resume
    overwrites them with the checkpoint's)."""
    return [{k: group[k] for k in _GROUP_HYPERPARAMETERS if k in group} for group in optimizer.param_groups]


def apply_hyperparameters(optimizer: Any, scheduler: Any, fresh: list[dict[str, Any]]) -> None:
    """Put the flags' hyper-parameters back into a restored optimizer and schedule.

    The schedule's shape (warmup, total steps, cycles) already follows the flags: its lambdas are
    rebuilt, only its base rates come from the checkpoint. So the base rate of each group becomes
    the one the flags give, and the current rate is recomputed at the resumed position. Unchanged
    flags give back exactly the restored values (a bit-exact resume stays bit-exact).
    """
    groups = optimizer.param_groups
    if len(groups) != len(fresh):
        raise ConfigError(
            f"the checkpoint's optimizer has {len(groups)} parameter groups and this run builds {len(fresh)}: "
            "--trainable_modules or --trainable_modules_low_learning_rate differ from the checkpoint's"
        )
    for group, values in zip(groups, fresh, strict=True):
        group.update(values)
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    if "initial_lr" not in fresh[0] or not hasattr(inner, "base_lrs"):
        return
    inner.base_lrs = [values["initial_lr"] for values in fresh]
    lambdas = getattr(inner, "lr_lambdas", None)
    if lambdas is None:
        return
    for group, base, factor in zip(groups, inner.base_lrs, lambdas, strict=True):
        group["lr"] = base * factor(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in groups]
    if not all(math.isfinite(group["lr"]) for group in groups):
        raise ConfigError("the learning rate after resuming is not finite; check --learning_rate")

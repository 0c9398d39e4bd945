"""Flags that no preset of this version can honour, and values that would be read as "not given".

Every config field is honoured or refused with a reason (tests/config/test_no_silent_flag.py walks
them all). The refusals that hold for every family live here, called once by `resolve`; a
family's own refusals live in its `validate_config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vidctrl.config.fields import ConfigError

if TYPE_CHECKING:
    from vidctrl.config.sections import OptimConfig
    from vidctrl.config.train import TrainConfig

# Fields that belong to a family this version does not ship yet: field -> (family, why it has no reader).
NOT_YET_HONOURED: dict[str, tuple[str, str]] = {
    "validation_image_folder": (
        "ControlNeXt-SVD", "its validation compares against ground-truth frames, which only that family reads"
    ),
    "validation_control_folder": (
        "ControlNeXt-SVD", "its validation reads pose frames from a folder, which only that family does"
    ),
    "use_ema": (
        "ControlNeXt-SVD", "an exponential moving average of the trained weights is kept by that family only"
    ),
}

# Optional counts whose readers treat "not given" specially: 0 must not be read as "not given"
# (`value or default`), so it is refused. (section, field, what leaving it out means)
ZERO_IS_NOT_UNSET: tuple[tuple[str, str, str], ...] = (
    ("run", "max_train_steps", "--num_train_epochs epochs"),
    ("validation", "validation_steps", "no step-based validation"),
    ("validation", "validation_epochs", "no epoch-based validation"),
    ("validation", "validation_height", "the training height"),
    ("validation", "validation_width", "the training width"),
    ("validation", "validation_frames", "the training frame count"),
    ("run", "checkpoints_total_limit", "keeping every checkpoint"),
)


def optimizer_name(optim: OptimConfig) -> str:
    """The optimizer the run trains with; two spellings naming different optimizers are an error.

    VideoX-Fun spells the optimizer `--use_8bit_adam` / `--use_came`, vidctrl `--optimizer`.
    """
    named: dict[str, str] = {}
    if optim.optimizer is not None:
        named[f"--optimizer {optim.optimizer}"] = optim.optimizer
    if optim.use_8bit_adam:
        named["--use_8bit_adam"] = "adamw8bit"
    if optim.use_came:
        named["--use_came"] = "came"
    if len(set(named.values())) > 1:
        raise ConfigError(
            f"{' and '.join(named)} name different optimizers; pass one of them (--optimizer adamw, adamw8bit or came)"
        )
    return next(iter(named.values()), "adamw")


def refuse_unhonoured(config: TrainConfig) -> None:
    """Raise `ConfigError` for a value no part of this run would read, naming the preset and why."""
    sections = {"validation": config.validation, "optim": config.optim}
    for name, (family, why) in NOT_YET_HONOURED.items():
        value = next((getattr(s, name) for s in sections.values() if hasattr(s, name)), None)
        if value not in (None, False):
            raise ConfigError(
                f"--{name}: preset {config.preset} cannot honour it ({why}; {family} is not in this version "
                "of vidctrl). Remove the flag."
            )
    optimizer_name(config.optim)
    for section, name, unset_means in ZERO_IS_NOT_UNSET:
        value = getattr(getattr(config, section), name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} {value}: must be at least 1; leave the flag out for {unset_means}")
    data = config.data
    rule = data.frame_sampling or ("controlnext" if data.meta_info_path else "dynamictrl" if data.data_root else "videox")
    if data.interval_frame is not None and rule != "controlnext":
        raise ConfigError(
            f"--interval_frame is ControlNeXt's step between frames (--frame_sampling controlnext, the default with "
            f"--meta_info_path); preset {config.preset} samples frames the {rule} way here, whose step is "
            "--video_sample_stride"
        )

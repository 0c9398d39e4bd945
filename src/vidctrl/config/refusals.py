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
    ("data", "height", "the preset's training size"),
    ("data", "width", "the preset's training size"),
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
    if config.validation.validation_prompt_separator == "":
        raise ConfigError("--validation_prompt_separator is empty: give the text that separates the prompts, or "
                          "leave the flag out for the preset's separator")
    data = config.data
    rule = data.frame_sampling or ("controlnext" if data.meta_info_path else "dynamictrl" if data.data_root else "videox")
    if data.interval_frame is not None and rule != "controlnext":
        raise ConfigError(
            f"--interval_frame is ControlNeXt's step between frames (--frame_sampling controlnext, the default with "
            f"--meta_info_path); preset {config.preset} samples frames the {rule} way here, whose step is "
            "--video_sample_stride"
        )
    _refuse_unread_for(config)


# Fields a preset never reads (its objective or its sampling has no use for them): presets -> field
# -> why. A value other than the field's default is refused naming the preset.
_NO_FLOW = "the weighting schemes and the frame-difference loss belong to flow matching; this preset trains DDPM"
_COGVIDEOX_FUN = ("cogvideox-fun-inp", "cogvideox-fun-control")
_WAN = ("wan2.1-fun-control-v1.0", "wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera")
UNREAD_BY_PRESET: dict[tuple[str, ...], dict[str, str]] = {
    _COGVIDEOX_FUN: {"logit_mean": _NO_FLOW, "logit_std": _NO_FLOW, "mode_scale": _NO_FLOW,
                     "motion_sub_loss_ratio": _NO_FLOW},
    ("dynamictrl",): {"logit_mean": _NO_FLOW, "logit_std": _NO_FLOW, "mode_scale": _NO_FLOW,
                   "motion_sub_loss_ratio": _NO_FLOW,
                   "train_sampling_steps": "DynamiCtrl draws its timesteps from the whole DDPM schedule"},
}
# Data fields of VideoX-Fun's bucketing that DynamiCtrl's frame sampling and size buckets never read.
_VIDEOX_SHAPING = ("token_sample_size", "enable_bucket", "random_hw_adapt", "training_with_video_token_length",
                   "random_frame_crop", "downsample_first_prob", "size_weighting")


def _refuse_unread_for(config: TrainConfig) -> None:
    import dataclasses

    def default(section: object, name: str) -> object:
        field = next(f for f in dataclasses.fields(section) if f.name == name)  # type: ignore[arg-type]
        return field.default

    unread = {name: why for presets, fields in UNREAD_BY_PRESET.items() if config.preset in presets
              for name, why in fields.items()}
    for name, why in unread.items():
        value = getattr(config.objective, name)
        if value != default(config.objective, name):
            raise ConfigError(f"--{name} {value}: preset {config.preset} cannot honour it ({why}). Remove the flag.")
    data = config.data
    rule = data.frame_sampling or ("controlnext" if data.meta_info_path else "dynamictrl" if data.data_root else "videox")
    if rule == "dynamictrl":
        for name in _VIDEOX_SHAPING:
            value = getattr(data, name)
            if value != default(data, name):
                raise ConfigError(
                    f"--{name} {value}: preset {config.preset} samples frames the dynamictrl way, whose clip sizes "
                    "come from --height_buckets/--width_buckets/--frame_buckets; VideoX-Fun's bucketing flags do "
                    "not apply. Remove the flag."
                )
    options = config.family
    if config.preset in _WAN and not options.add_full_ref_image_in_self_attention and (
            options.full_ref_dropout != default(options, "full_ref_dropout")):
        raise ConfigError(
            f"--full_ref_dropout: preset {config.preset} trains without full-reference tokens "
            "(--add_full_ref_image_in_self_attention, Wan2.1-Fun V1.1 only), so there is nothing to drop. Remove "
            "the flag."
        )
    camera = config.preset == "wan2.1-fun-control-camera" and (config.model.train_mode or "camera").find("camera") >= 0
    if camera and options.control_dropout != default(options, "control_dropout"):
        raise ConfigError(
            f"--control_dropout: preset {config.preset} conditions on the camera embedding, not on control latents, "
            "and vidctrl does not drop the camera embedding. Remove the flag."
        )
    if config.preset == "cogvideox-fun-control" and (
            options.inpaint_mask_distribution != default(options, "inpaint_mask_distribution")):
        raise ConfigError(
            f"--inpaint_mask_distribution: preset {config.preset} trains in control mode, which draws no inpaint "
            "mask (cogvideox-fun-inp does). Remove the flag."
        )

"""Checks of a whole training config that run when it is built, before any model or data loads.

Each field's own range is declared where the field is (`option(..., min=1)`); this module applies
those ranges to every section and adds the rules that involve several fields or the family:
a drop window that leaves no frames, a frame count the VAE cannot compress, a tracker nobody
knows, validation files that do not exist, bucket flags the sampling rule does not use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vidctrl.config.fields import ConfigError, check_ranges

TRACKERS = ("tensorboard", "wandb", "all", "none")


def check_train_config(config: Any, family: Any) -> None:
    """Every field's declared range (called before the family's own checks, which may assume sane
    numbers). Raises `ConfigError` naming the flag, the value and what it may be."""
    for section in (config.model, config.data, config.optim, config.objective, config.run, config.validation):
        check_ranges(section)
    if config.family is not None and dataclasses.is_dataclass(config.family):
        check_ranges(config.family)


def check_cross_fields(config: Any, family: Any) -> None:
    """The rules involving several fields or the family (called after the family's own checks, whose
    messages are more specific where they exist)."""
    _check_sampling(config.data, family, config.preset)
    _check_report_to(config.run.report_to)
    from vidctrl.train.optim import SCHEDULES

    if config.optim.lr_scheduler not in SCHEDULES:
        raise ConfigError(f"--lr_scheduler {config.optim.lr_scheduler}: not a schedule vidctrl knows; choose one of "
                          f"{', '.join(SCHEDULES)}")
    validation_frames = config.validation.validation_frames
    if validation_frames is not None:
        _check_frame_count("--validation_frames", validation_frames, family, config.preset)


def check_input_files(config: Any) -> None:
    """Files the run reads late (the dataset after the model loaded, validation inputs hours in) must
    exist when it starts."""
    if not config.model.load_tensors:
        from vidctrl.data.layouts import source_of
        from vidctrl.data.records import DataError

        try:
            _, path = source_of(config.data)
        except DataError:
            path = None  # no or several sources: the data loader says which flags to pass
        if path is not None and not path.exists():
            flag = next(f"--{name}" for name in ("train_data_meta", "data_root", "meta_info_path", "manifest")
                        if getattr(config.data, name) is not None)
            raise ConfigError(f"{flag} {path} does not exist; pass the dataset's metadata file or folder")
    _check_validation_files(config.validation, getattr(config.family, "validation_paths", None))


def _check_sampling(data: Any, family: Any, preset: str) -> None:
    if data.video_length_drop_start >= data.video_length_drop_end:
        raise ConfigError(
            f"--video_length_drop_start {data.video_length_drop_start:g} is not below --video_length_drop_end "
            f"{data.video_length_drop_end:g}: no frame of any video would be left to sample. Keep "
            "0 <= start < end <= 1 (the seeds use 0.1 and 0.9)"
        )
    _check_frame_count("--video_sample_n_frames", data.video_sample_n_frames, family, preset)
    for frames in data.frame_buckets or ():
        _check_frame_count("--frame_buckets", frames, family, preset)
    # The sampling rule and the size buckets are data-source dependent; check them now that the flags
    # are known, instead of after the model has loaded.
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.layouts import source_of
    from vidctrl.data.records import DataError
    from vidctrl.data.shapes import dynamictrl_size_buckets

    try:
        layout, _ = source_of(data)
    except DataError:
        layout = "videox"  # no (or several) sources: reported when the data loads
    from vidctrl.data.buckets import fixed_sample_size

    try:
        ClipRules.from_config(data, layout=layout)
        dynamictrl_size_buckets(data)
        if data.fix_sample_size is not None:
            fixed_sample_size(data.fix_sample_size)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_frame_count(flag: str, frames: int, family: Any, preset: str) -> None:
    """Video VAEs compress time by `frame_multiple`: a clip has k * multiple + 1 frames. Refuse another
    count instead of silently cutting it, and name the two usable counts around it."""
    multiple = getattr(family, "frame_multiple", 1) or 1
    if multiple <= 1 or (frames - 1) % multiple == 0:
        return
    below = (frames - 1) // multiple * multiple + 1
    above = below + multiple
    raise ConfigError(
        f"{flag} {frames}: preset {preset} needs {multiple}k+1 frames (its VAE compresses time by {multiple}); "
        f"use {below} or {above}"
    )


def _check_report_to(report_to: str) -> None:
    if report_to not in TRACKERS:
        raise ConfigError(f"--report_to {report_to}: not a tracker vidctrl knows; choose one of {', '.join(TRACKERS)}")


def _check_validation_files(validation: Any, validation_paths: list[str] | None) -> None:
    """A missing validation image or control video fails at the first validation, hours in: check now."""
    for flag, paths in (
        ("--validation_images", validation.validation_images),
        ("--validation_control_videos", validation.validation_control_videos),
        ("--validation_paths", validation_paths),
    ):
        for path in paths or ():
            if not Path(path).is_file():
                what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
                raise ConfigError(f"{flag} {path} {what}; pass an existing file, or leave out {flag}")

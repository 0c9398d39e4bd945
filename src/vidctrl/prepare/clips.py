"""Which source frames make which output clip: resampling to a frame rate, cutting long videos.

Pure functions of the source's frame count and rate, so a rerun plans exactly the same clips (and
finds the ones it already wrote). Frame `i` of a video is shown from time `i / fps`; an output frame
at time `t` takes the source frame shown at `t`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class ClipSettings:
    """How videos become clips. The defaults keep every video whole, at its own rate."""

    fps: float | None = None  # resample to this rate; None keeps the source's
    min_frames: int = 1  # clips (and whole videos) shorter than this are left out
    max_frames: int | None = None  # cut videos into consecutive clips of at most this many frames

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")
        if self.min_frames < 1:
            raise ValueError(f"--clip_min_frames must be at least 1, got {self.min_frames}")
        if self.max_frames is not None and self.max_frames < self.min_frames:
            raise ValueError(
                f"--clip_max_frames ({self.max_frames}) is below --clip_min_frames ({self.min_frames})"
            )

    @property
    def cuts(self) -> bool:
        return self.max_frames is not None


@dataclass(frozen=True)
class ClipPlan:
    """One output clip: its name, the source frame of each of its frames, and its frame rate."""

    name: str
    source_indices: np.ndarray  # (F,) int64, non-decreasing
    fps: Fraction

    @property
    def frames(self) -> int:
        return len(self.source_indices)

    def is_whole(self, source_frames: int, source_fps: Fraction) -> bool:
        """True when the clip is the source itself, frame for frame (so it can be copied)."""
        return (
            self.fps == source_fps
            and self.frames == source_frames
            and bool(np.array_equal(self.source_indices, np.arange(source_frames)))
        )


def resample_indices(frames: int, source_fps: Fraction | float, target_fps: Fraction | float) -> np.ndarray:
    """Source frame of each output frame when `frames` frames at `source_fps` are shown at
    `target_fps`: output frame j (time j / target) takes source frame floor(j * source / target).
    The output covers the same duration: ceil(frames * target / source) frames."""
    source, target = Fraction(source_fps), Fraction(target_fps)
    if frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if source <= 0 or target <= 0:
        raise ValueError(f"frame rates must be positive, got {source_fps} and {target_fps}")
    count = math.ceil(frames * target / source)
    step = source / target
    indices = np.array([math.floor(j * step) for j in range(count)], dtype=np.int64)
    return np.minimum(indices, frames - 1)


def plan_clips(name: str, frames: int, fps: float | Fraction, settings: ClipSettings) -> list[ClipPlan]:
    """The clips of a source video `name` with `frames` frames at `fps`.

    Without cutting, the video is one clip named `name`; with `max_frames`, clips are consecutive
    runs of `max_frames` frames named `name_clip000`, `name_clip001`, ..., and a last run shorter
    than `min_frames` is dropped. A clip (or video) shorter than `min_frames` is never planned.
    """
    source_fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if settings.fps is None or source_fps <= 0:
        rate = source_fps
        indices = np.arange(frames, dtype=np.int64)
    else:
        rate = Fraction(settings.fps).limit_denominator(1001)
        indices = resample_indices(frames, source_fps, rate)
    if not settings.cuts:
        return [ClipPlan(name, indices, rate)] if len(indices) >= settings.min_frames else []
    assert settings.max_frames is not None
    plans = []
    for number, start in enumerate(range(0, len(indices), settings.max_frames)):
        run = indices[start : start + settings.max_frames]
        if len(run) >= settings.min_frames:
            plans.append(ClipPlan(f"{name}_clip{number:03d}", run, rate))
    return plans


__all__ = ["ClipPlan", "ClipSettings", "plan_clips", "resample_indices"]

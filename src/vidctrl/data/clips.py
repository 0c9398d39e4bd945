"""Which frames of a video make a training clip: one object per seed system's rule.

`ClipRules` binds the data flags to one of the pure rules in `sampling.py` (VideoX-Fun's stride
sampling, DynamiCtrl's contiguous window, ControlNeXt's interval with a reference frame) and
answers the three questions the pipeline asks: how many frames can a video of N frames give
(vectorised, for planning a million records), what is the fewest it needs (for `data check`),
and which indices to decode for one sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from vidctrl.data import sampling
from vidctrl.data.config import DataConfig

Rule = Literal["videox", "dynamictrl", "controlnext"]
CropMode = Literal["center", "stretch", "random"]

DEFAULT_RULE_FOR_LAYOUT: dict[str, Rule] = {
    "videox": "videox",
    "manifest": "videox",
    "dynamictrl": "dynamictrl",
    "controlnext": "controlnext",
}


@dataclass(frozen=True)
class ClipRules:
    """A frame-sampling rule and its settings (picklable: it travels to DataLoader workers)."""

    rule: Rule = "videox"
    n_frames: int = 49
    stride: int = 4
    drop_start: float = 0.0
    drop_end: float = 1.0
    interval_frame: int = 1
    frame_buckets: tuple[int, ...] = ()
    crop: CropMode = "center"

    @classmethod
    def from_config(cls, config: DataConfig, *, layout: str = "videox") -> ClipRules:
        rule: Rule = config.frame_sampling or DEFAULT_RULE_FOR_LAYOUT.get(layout, "videox")
        if config.dataset_type is not None and config.dataset_type != "ubc":
            raise ValueError(
                f"--dataset_type {config.dataset_type!r} is not known; ControlNeXt's pose-video dataset is 'ubc'"
            )
        bucket_flags = [name for name in ("height_buckets", "width_buckets", "frame_buckets") if getattr(config, name)]
        if bucket_flags and rule != "dynamictrl":
            raise ValueError(
                f"{', '.join('--' + n for n in bucket_flags)}: DynamiCtrl's buckets apply to its frame sampling "
                f"(--frame_sampling dynamictrl, the default with --data_root); this run samples frames the {rule} way"
            )
        if config.interval_frame is not None and rule != "controlnext":
            raise ValueError(
                f"--interval_frame: ControlNeXt's step between frames applies to its frame sampling (--frame_sampling "
                f"controlnext, the default with --meta_info_path); this run samples frames the {rule} way, whose step "
                "is --video_sample_stride"
            )
        fixed = config.fix_sample_size is not None or (config.height is not None and config.width is not None)
        crop: CropMode = "center"
        if rule == "controlnext":
            crop = "random"
        elif rule == "dynamictrl" or (fixed and rule == "videox"):
            crop = "stretch"  # the originals resize to the exact size without keeping the aspect
        return cls(
            rule=rule,
            n_frames=config.video_sample_n_frames,
            stride=config.video_sample_stride,
            drop_start=config.video_length_drop_start,
            drop_end=config.video_length_drop_end,
            interval_frame=1 if config.interval_frame is None else config.interval_frame,
            frame_buckets=tuple(config.frame_buckets or (config.video_sample_n_frames,)),
            crop=crop,
        )

    @classmethod
    def permissive(cls) -> ClipRules:
        """Rules under which any video of one frame or more is usable (for plain probing)."""
        return cls(rule="videox", n_frames=1, stride=1, drop_start=0.0, drop_end=1.0)

    def available_frames(self, num_frames: int | npt.NDArray[np.integer]) -> int | npt.NDArray[np.int64]:
        """Clip length a video of `num_frames` frames gives under this rule (0 = unusable)."""
        frames = np.asarray(num_frames, dtype=np.int64)
        if self.rule == "videox":
            out = sampling.videox_clip_frames(frames, self.n_frames, self.stride, self.drop_start, self.drop_end)
        elif self.rule == "dynamictrl":
            buckets = np.asarray(self.frame_buckets or (self.n_frames,))
            wanted = np.minimum(frames, self.n_frames)
            nearest = buckets[np.argmin(np.abs(buckets[None, :] - wanted.reshape(-1)[:, None]), axis=1)]
            out = np.where(frames.reshape(-1) >= nearest, nearest, 0).reshape(frames.shape)
        else:
            out = np.where(frames >= self.n_frames, self.n_frames, 0)
        out = np.asarray(out, dtype=np.int64)
        return int(out) if out.ndim == 0 else out

    @property
    def min_frames(self) -> int:
        """The fewest clip frames a usable video gives."""
        if self.rule == "dynamictrl":
            return min(self.frame_buckets or (self.n_frames,))
        return 1 if self.rule == "videox" else self.n_frames

    def describe(self) -> str:
        if self.rule == "videox":
            return (f"sampling {self.n_frames} frames every {self.stride} within "
                    f"[{self.drop_start:g}, {self.drop_end:g}] of the video")
        if self.rule == "dynamictrl":
            buckets = self.frame_buckets or (self.n_frames,)
            if len(buckets) == 1:
                return f"a contiguous window of {buckets[0]} frames"
            return (f"a contiguous window of the frame bucket ({', '.join(map(str, buckets))}) nearest "
                    f"min(length, {self.n_frames})")
        return f"{self.n_frames} frames every {self.interval_frame or 'random 2-7'}"

    def sample(self, num_frames: int, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
        """Indices of the first `frames` frames of one clip, and a reference frame index if the rule
        draws one separately (None: the reference is the clip's first frame)."""
        if self.rule == "videox":
            indices = sampling.videox_frame_indices(
                num_frames, self.n_frames, self.stride, self.drop_start, self.drop_end, rng
            )
        elif self.rule == "dynamictrl":
            indices = sampling.dynamictrl_frame_indices(
                num_frames, self.n_frames, list(self.frame_buckets or (self.n_frames,)), rng
            )
        else:
            # ControlNeXt trains on the window with its first frame replaced by the reference
            # frame (and the pose of that frame), so the reference is simply frame 0.
            indices = sampling.controlnext_frame_indices(num_frames, self.n_frames, self.interval_frame, rng).target
        if len(indices) < frames:
            raise sampling.TooFewFrames(
                f"the video has {num_frames} frames and gives a clip of {len(indices)}, the batch needs {frames}; "
                "its probed frame count may be stale: run `vidctrl data check`"
            )
        return indices[:frames], None

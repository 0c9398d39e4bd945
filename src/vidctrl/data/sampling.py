"""Which frames of a video make a training clip: the seed systems' rules as pure functions.

Every function takes the random draws from a `numpy.random.Generator` that the caller passes in
(vidctrl derives it from seed, epoch and sample), so the same sample in the same epoch gets the
same frames on every rank and after a resume. The originals draw from Python's global `random`
module (seeded per DataLoader worker); vidctrl reproduces their *distributions*, draw for draw,
not their random streams. The mapping is:

    random.randint(a, b)          ->  rng.integers(a, b, endpoint=True)   (both ends inclusive)
    np.random.choice(xs, p=p)     ->  rng.choice(xs, p=p)

docs/data-semantics.md lists each rule, the file it comes from, and where vidctrl differs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

# Pixel frames per latent frame in every VAE the seeds use (Wan, CogVideoX, EasyAnimate MagVIT).
TEMPORAL_COMPRESSION = 4


class TooFewFrames(ValueError):
    """A video is too short for the clip the settings ask for."""


class ControlFrameMismatch(ValueError):
    """The control video's frame count or fps differs from the target's under policy `error`."""


# --------------------------------------------------------------------------------------------
# 4k+1 frame counts
# --------------------------------------------------------------------------------------------


@overload
def cut_to_4k_plus_1(n: int, interval: int = ...) -> int: ...
@overload
def cut_to_4k_plus_1(n: npt.NDArray[np.integer], interval: int = ...) -> IntArray: ...
def cut_to_4k_plus_1(
    n: int | npt.NDArray[np.integer], interval: int = TEMPORAL_COMPRESSION
) -> int | IntArray:
    """Largest count `interval*k + 1` not above `n` (a causal video VAE encodes 1 + 4k frames)."""
    if isinstance(n, np.ndarray):
        return (n.astype(np.int64) - 1) // interval * interval + 1
    return (int(n) - 1) // interval * interval + 1


# --------------------------------------------------------------------------------------------
# VideoX-Fun / CogVideoX-Fun / EasyAnimate: stride inside [drop_start, drop_end] of the video
# --------------------------------------------------------------------------------------------


@overload
def videox_clip_frames(
    num_frames: int, n_frames: int, stride: int, drop_start: float, drop_end: float
) -> int: ...
@overload
def videox_clip_frames(
    num_frames: npt.NDArray[np.integer], n_frames: int, stride: int, drop_start: float, drop_end: float
) -> IntArray: ...
def videox_clip_frames(
    num_frames: int | npt.NDArray[np.integer],
    n_frames: int,
    stride: int,
    drop_start: float,
    drop_end: float,
) -> int | IntArray:
    """How many frames `videox_frame_indices` returns for a video of `num_frames` frames.

    `min(n_frames, int(num_frames * (drop_end - drop_start) // stride))`, 0 meaning "too short".
    Vectorised so that the batch sampler can plan a 1M-record manifest without opening a file.
    The float expression is evaluated in the original's order, so results match it bit for bit.
    """
    span = drop_end - drop_start
    if isinstance(num_frames, np.ndarray):
        fit = np.floor_divide(num_frames.astype(np.float64) * span, stride).astype(np.int64)
        return np.minimum(n_frames, fit)
    return min(n_frames, int(int(num_frames) * span // stride))


def videox_min_frames(stride: int, drop_start: float, drop_end: float) -> int:
    """Fewest frames a video needs for `videox_frame_indices` to return anything."""
    needed = max(1, int(stride / (drop_end - drop_start)) - 1)
    while videox_clip_frames(needed, 1, stride, drop_start, drop_end) < 1:
        needed += 1
    return needed


def videox_frame_indices(
    num_frames: int,
    n_frames: int,
    stride: int,
    drop_start: float,
    drop_end: float,
    rng: np.random.Generator,
) -> IntArray:
    """Frame indices of one training clip, exactly as VideoX-Fun's `ImageVideoControlDataset`.

        n     = min(n_frames, int(len * (drop_end - drop_start) // stride))   # 0 -> TooFewFrames
        L     = int(drop_end * len)
        clip  = min(L, (n - 1) * stride + 1)
        start = randint(int(drop_start * L), L - clip)    (inclusive; 0 when L == clip)
        index = linspace(start, start + clip - 1, n).astype(int)

    Note that `drop_start` is applied to L (already cut at drop_end), not to the full length, and
    that there is no special case for short videos: they get fewer frames (`n < n_frames`), and
    the batch is later cut to its shortest member (`vidctrl.data.buckets.batch_frames`).
    """
    if stride < 1 or n_frames < 1:
        raise ValueError(f"stride and n_frames must be positive, got stride={stride}, n_frames={n_frames}")
    if not 0.0 <= drop_start < drop_end <= 1.0:
        raise ValueError(
            f"need 0 <= video_length_drop_start < video_length_drop_end <= 1, got {drop_start} and {drop_end}"
        )
    n = videox_clip_frames(num_frames, n_frames, stride, drop_start, drop_end)
    if n <= 0:
        needed = videox_min_frames(stride, drop_start, drop_end)
        raise TooFewFrames(
            f"the video has {num_frames} frames; with --video_sample_stride {stride} and "
            f"--video_length_drop_start/--video_length_drop_end {drop_start:g}/{drop_end:g} a clip "
            f"needs at least {needed} frames. Lower the stride, widen the kept span, or drop the video."
        )
    length = int(drop_end * num_frames)
    clip = min(length, (n - 1) * stride + 1)
    # The original skips the draw when the clip fills [0, L); the lower bound is drop_start * L.
    start = 0 if length == clip else int(rng.integers(int(drop_start * length), length - clip, endpoint=True))
    return np.linspace(start, start + clip - 1, n).astype(np.int64)


def videox_reference_index(
    n_frames: int, rng: np.random.Generator, mode: Literal["first_frame", "random"] = "first_frame"
) -> int:
    """Which frame of the (already cut) clip is the Wan-Fun reference image (`--control_ref_image`).

    `first_frame` -> 0. `random` -> frame 0 with probability 0.4, each other frame with
    0.6 / (n_frames - 1) (VideoX-Fun wan2.1_fun/train_control.py collate_fn).
    """
    if mode == "first_frame" or n_frames == 1:
        return 0
    if mode != "random":
        raise ValueError(f"control_ref_image must be 'first_frame' or 'random', got {mode!r}")
    probs = np.full(n_frames, 0.6 / (n_frames - 1))
    probs[0] = 0.4
    return int(rng.choice(n_frames, p=probs))


def random_frame_crop_choices(
    n_frames: int, interval: int = TEMPORAL_COMPRESSION
) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """The lengths `--random_frame_crop` can pick and their probabilities.

    Lengths `interval+1, 2*interval+1, ...` below `n_frames + interval` (5, 9, ..., 49 for 49);
    the longest has probability 0.9, the others share 0.1 equally.
    """
    choices = np.arange(interval + 1, n_frames + interval, interval, dtype=np.int64)
    if len(choices) == 0:
        return np.array([1], dtype=np.int64), np.array([1.0])
    if len(choices) == 1:
        return choices, np.array([1.0])
    probs = np.full(len(choices), 0.1 / (len(choices) - 1))
    probs[-1] = 0.9
    return choices, probs


def random_frame_crop(n_frames: int, rng: np.random.Generator, interval: int = TEMPORAL_COMPRESSION) -> int:
    """Draw the clip length for `--random_frame_crop` (one draw per batch, after collation).

    The batch keeps its first `min(drawn, batch_frames)` frames, so the long clip is kept 90% of
    the time. Follows CogVideoX-Fun scripts/train.py; VideoX-Fun's wan2.1_fun/train_control.py
    then applies `(t - 1) // 4 + 1` (a latent count) to the pixel frames, which vidctrl does not
    reproduce (see docs/data-semantics.md).
    """
    choices, probs = random_frame_crop_choices(n_frames, interval)
    return int(rng.choice(choices, p=probs))


# --------------------------------------------------------------------------------------------
# DynamiCtrl: contiguous window from a random start in 1..30
# --------------------------------------------------------------------------------------------

DYNAMICTRL_MAX_START = 30


def dynamictrl_frame_count(
    num_frames: int, max_num_frames: int, frame_buckets: list[int] | tuple[int, ...]
) -> int:
    """The frame bucket nearest to `min(num_frames, max_num_frames)`; ties go to the earlier bucket."""
    if not frame_buckets:
        raise ValueError("frame_buckets is empty")
    want = min(num_frames, max_num_frames)
    return min(frame_buckets, key=lambda bucket: abs(bucket - want))


def dynamictrl_frame_indices(
    num_frames: int,
    max_num_frames: int,
    frame_buckets: list[int] | tuple[int, ...],
    rng: np.random.Generator,
) -> IntArray:
    """Frame indices of one DynamiCtrl clip (utils/dataset.py `VideoDatasetWithResizing`).

    n frames (the nearest frame bucket), consecutive, starting at `randint(1, 30)`. The original
    draws the start from 1..30 whatever the length and crashes in decord when the window runs
    past the end; vidctrl draws from `1..min(30, len - n)` (0 when the video has exactly n
    frames), which is the same distribution whenever the original works.
    """
    n = dynamictrl_frame_count(num_frames, max_num_frames, frame_buckets)
    if num_frames < n:
        raise TooFewFrames(
            f"the video has {num_frames} frames; the clip needs {n} consecutive frames "
            f"(--max_num_frames {max_num_frames}, --frame_buckets {' '.join(map(str, frame_buckets))}). "
            f"Lower --max_num_frames / --frame_buckets or drop the video."
        )
    last_start = min(DYNAMICTRL_MAX_START, num_frames - n)
    start = int(rng.integers(1, last_start, endpoint=True)) if last_start >= 1 else 0
    return np.arange(start, start + n, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# ControlNeXt-SVD-v2: every `interval_frame`-th frame, reference drawn from the whole video
# --------------------------------------------------------------------------------------------


class ControlNeXtClip(NamedTuple):
    """A ControlNeXt clip: the drawn window and the reference frame."""

    window: IntArray  # sample_n_frames indices, `interval` apart
    reference: int  # any frame of the video, uniform

    @property
    def target(self) -> IntArray:
        """Frames actually trained on: the original overwrites the window's first frame (and its
        pose) with the reference frame (and its pose), so frame 0 is the reference image."""
        frames = self.window.copy()
        frames[0] = self.reference
        return frames


def controlnext_frame_indices(
    num_frames: int, sample_n_frames: int, interval_frame: int, rng: np.random.Generator
) -> ControlNeXtClip:
    """Frame indices of one ControlNeXt clip (ControlNeXt-SVD-v2-Training/utils/vid_dataset.py).

        interval  = interval_frame if > 0 else randint(2, 7)
        interval  = min(interval, len // sample_n_frames)      # 0 -> TooFewFrames
        start     = randint(0, len - interval * sample_n_frames)
        window    = start, start + interval, ..., (sample_n_frames frames)
        reference = randint(0, len - 1)

    Draws happen in this order, as in the original.
    """
    if sample_n_frames < 1:
        raise ValueError(f"sample_n_frames must be positive, got {sample_n_frames}")
    interval = interval_frame if interval_frame > 0 else int(rng.integers(2, 7, endpoint=True))
    interval = min(interval, num_frames // sample_n_frames)
    if interval <= 0:
        raise TooFewFrames(
            f"the video has {num_frames} frames; the clip needs at least --sample_n_frames "
            f"{sample_n_frames} frames. Lower --sample_n_frames or drop the video."
        )
    segment = interval * sample_n_frames
    start = int(rng.integers(0, num_frames - segment, endpoint=True))
    window = start + np.arange(sample_n_frames, dtype=np.int64) * interval
    reference = int(rng.integers(0, num_frames - 1, endpoint=True))
    return ControlNeXtClip(window, reference)


# --------------------------------------------------------------------------------------------
# video_repeat
# --------------------------------------------------------------------------------------------


def repeat_indices(kinds: npt.ArrayLike, video_repeat: int) -> IntArray:
    """Record indices of one epoch's dataset after `--video_repeat`.

    As VideoX-Fun's `ImageVideoControlDataset.__init__`: with `video_repeat > 0`, every record
    that is not a video (once each, in order), then all videos in order, `video_repeat` times;
    with 0, the records unchanged. So 0 and 1 give the same multiset in a different order.
    `kinds` holds "video"/"image" strings (anything but "video" counts as an image, as in the
    original) or booleans meaning "is a video".
    """
    if video_repeat < 0:
        raise ValueError(f"video_repeat must be >= 0, got {video_repeat}")
    kinds = np.asarray(kinds)
    is_video = kinds if kinds.dtype == np.bool_ else kinds == "video"
    if video_repeat == 0:
        return np.arange(len(kinds), dtype=np.int64)
    videos = np.flatnonzero(is_video)
    others = np.flatnonzero(~is_video)
    return np.concatenate([others, np.tile(videos, video_repeat)]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Control frames
# --------------------------------------------------------------------------------------------


def control_indices(
    target_indices: npt.ArrayLike,
    *,
    fps: float | None,
    control_fps: float | None,
    control_frames: int,
    frames: int | None = None,
    times: npt.ArrayLike | None = None,
    control_times: npt.ArrayLike | None = None,
) -> IntArray:
    """Resample the control by time: the control frame shown at the same moment as each target frame.

    `t = i / fps`, `control = round_half_up(t * control_fps)`, clamped to the control's frames.
    An fps of None or 0 means unknown; then both videos are taken to span the same time and
    `frames` (the target's frame count) is needed: `control = round_half_up(i * control_frames / frames)`.
    With both videos' real frame times (`vidctrl.data.video.frame_times`, seconds from each one's
    first frame), which a variable-frame-rate video needs, `t` is the target frame's own time and
    the control frame is the one whose time is nearest, the later on a tie (the same half-up rule).
    """
    target = np.asarray(target_indices, dtype=np.int64)
    if control_frames <= 0:
        raise ValueError(f"the control has {control_frames} frames")
    times = None if times is None else np.asarray(times, dtype=np.float64)
    if times is not None and control_times is not None and target.size and len(times) > target.max():
        moments = times[target]
        shown = np.asarray(control_times, dtype=np.float64)[:control_frames]
        later = np.clip(np.searchsorted(shown, moments, side="left"), 0, len(shown) - 1)
        earlier = np.clip(later - 1, 0, len(shown) - 1)
        # Times are float seconds from integer ticks: a tie within a microsecond is a tie.
        pick_earlier = moments - shown[earlier] < shown[later] - moments - 1e-6
        return np.where(pick_earlier, earlier, later).astype(np.int64)
    if fps and control_fps:
        position = target * (control_fps / fps)
    elif frames:
        position = target * (control_frames / frames)
    else:
        raise ValueError("resampling the control needs both fps, or the target's frame count")
    # Half-up, not numpy's half-to-even, so that the mapping does not alternate between
    # rounding down and up on exact halves.
    mapped = np.floor(position + 0.5).astype(np.int64)
    return np.clip(mapped, 0, control_frames - 1)


def control_frame_indices(
    target_indices: npt.ArrayLike,
    *,
    frames: int,
    control_frames: int,
    fps: float | None = None,
    control_fps: float | None = None,
    policy: Literal["error", "resample"] = "error",
) -> IntArray:
    """Indices to read from the control video for the given target indices, under a policy.

    Same frame count and fps: the same indices (what every original does). Otherwise policy
    `error` raises `ControlFrameMismatch`, and `resample` maps by time (`control_indices`).
    """
    target = np.asarray(target_indices, dtype=np.int64)
    same_fps = not fps or not control_fps or abs(fps - control_fps) < 1e-6 * fps
    if control_frames == frames and same_fps:
        return target.copy()
    if policy == "error":
        detail = f"{control_frames} frames" + (f" at {control_fps:g} fps" if control_fps else "")
        want = f"{frames}" + (f" at {fps:g} fps" if fps else "")
        raise ControlFrameMismatch(
            f"the control video has {detail}, the target has {want}. Re-render the control from "
            f"the same source, or pass --control_frame_policy resample to resample it by time."
        )
    if policy != "resample":
        raise ValueError(f"control_frame_policy must be 'error' or 'resample', got {policy!r}")
    return control_indices(
        target, fps=fps, control_fps=control_fps, control_frames=control_frames, frames=frames
    )

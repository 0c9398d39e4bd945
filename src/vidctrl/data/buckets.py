"""Spatial shapes of training batches: aspect buckets, token budgets, resize/crop geometry.

Pure functions that reproduce the seed systems' collate functions (VideoX-Fun / CogVideoX-Fun /
EasyAnimate `collate_fn`, DynamiCtrl's nearest resolution, ControlNeXt's random aspect crop).
vidctrl's batch sampler calls them up front, from manifest metadata and a seeded
`numpy.random.Generator`, so that every rank agrees on a batch's size and frame count before a
single frame is decoded. Functions a 1M-record manifest goes through are vectorised.

docs/data-semantics.md lists each rule, the file it comes from, and where vidctrl differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

# (height, width) of each aspect-ratio bucket at the 512x512 scale, keyed by height/width
# rounded to two decimals. Identical in VideoX-Fun, CogVideoX-Fun and EasyAnimate
# (`*/data/bucket_sampler.py`, ASPECT_RATIO_512). Keys ascend, which `closest_ratio` relies on.
ASPECT_RATIO_512: dict[str, tuple[float, float]] = {
    "0.25": (256.0, 1024.0), "0.26": (256.0, 992.0), "0.27": (256.0, 960.0), "0.28": (256.0, 928.0),
    "0.32": (288.0, 896.0), "0.33": (288.0, 864.0), "0.35": (288.0, 832.0), "0.4": (320.0, 800.0),
    "0.42": (320.0, 768.0), "0.48": (352.0, 736.0), "0.5": (352.0, 704.0), "0.52": (352.0, 672.0),
    "0.57": (384.0, 672.0), "0.6": (384.0, 640.0), "0.68": (416.0, 608.0), "0.72": (416.0, 576.0),
    "0.78": (448.0, 576.0), "0.82": (448.0, 544.0), "0.88": (480.0, 544.0), "0.94": (480.0, 512.0),
    "1.0": (512.0, 512.0), "1.07": (512.0, 480.0), "1.13": (544.0, 480.0), "1.21": (544.0, 448.0),
    "1.29": (576.0, 448.0), "1.38": (576.0, 416.0), "1.46": (608.0, 416.0), "1.67": (640.0, 384.0),
    "1.75": (672.0, 384.0), "2.0": (704.0, 352.0), "2.09": (736.0, 352.0), "2.4": (768.0, 320.0),
    "2.5": (800.0, 320.0), "2.89": (832.0, 288.0), "3.0": (864.0, 288.0), "3.11": (896.0, 288.0),
    "3.62": (928.0, 256.0), "3.75": (960.0, 256.0), "3.88": (992.0, 256.0), "4.0": (1024.0, 256.0),
}  # fmt: skip

# The subset `--random_ratio_crop` draws from, and its weights (same files). No seed command
# uses that flag; the table is recorded so that it can be added without re-reading the sources.
ASPECT_RATIO_RANDOM_CROP_512: dict[str, tuple[float, float]] = {
    "0.42": (320.0, 768.0), "0.5": (352.0, 704.0), "0.57": (384.0, 672.0), "0.68": (416.0, 608.0),
    "0.78": (448.0, 576.0), "0.88": (480.0, 544.0), "0.94": (480.0, 512.0), "1.0": (512.0, 512.0),
    "1.07": (512.0, 480.0), "1.13": (544.0, 480.0), "1.29": (576.0, 448.0), "1.46": (608.0, 416.0),
    "1.75": (672.0, 384.0), "2.0": (704.0, 352.0), "2.4": (768.0, 320.0),
}  # fmt: skip
_RANDOM_CROP_WEIGHTS = np.array([1, 2, 4, 4, 4, 4, 8, 8, 8, 4, 4, 4, 4, 2, 1], dtype=np.float64)
ASPECT_RATIO_RANDOM_CROP_PROB = _RANDOM_CROP_WEIGHTS / _RANDOM_CROP_WEIGHTS.sum()

BUCKET_BASE = 512  # the scale ASPECT_RATIO_512 is written at
SIZE_MULTIPLE = 16  # bucket sides are rounded down to this
SIZE_STEP = 128  # step between the sizes of a token-length plan
TEMPORAL_COMPRESSION = 4

Ratios = Mapping[str, tuple[float, float]]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# Aspect buckets
# --------------------------------------------------------------------------------------------


@overload
def closest_ratio(height: float, width: float, ratios: Ratios = ...) -> str: ...
@overload
def closest_ratio(
    height: npt.ArrayLike, width: npt.ArrayLike, ratios: Ratios = ...
) -> npt.NDArray[np.str_]: ...
def closest_ratio(
    height: float | npt.ArrayLike, width: float | npt.ArrayLike, ratios: Ratios = ASPECT_RATIO_512
) -> str | npt.NDArray[np.str_]:
    """Key of the bucket whose ratio is nearest to height / width (ties: the smaller ratio).

    Same as the originals' `min(ratios, key=lambda r: abs(float(r) - h / w))`. Scalars give a
    key; arrays give an array of keys (1M records take well under a second: a binary search,
    not a 1M x 40 distance table).
    """
    keys = list(ratios)
    index = closest_ratio_index(height, width, ratios)
    if np.ndim(index) == 0:
        return keys[int(index)]
    return np.asarray(keys)[index]


def closest_ratio_index(
    height: float | npt.ArrayLike, width: float | npt.ArrayLike, ratios: Ratios = ASPECT_RATIO_512
) -> np.intp | npt.NDArray[np.intp]:
    """Position in `ratios` of `closest_ratio`'s answer (vectorised)."""
    values = np.array([float(key) for key in ratios], dtype=np.float64)
    aspect = np.asarray(height, dtype=np.float64) / np.asarray(width, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no aspect ratios to choose from")
    if len(values) == 1:
        return np.zeros(aspect.shape, dtype=np.intp)[()]
    if np.all(np.diff(values) > 0):
        hi = np.clip(np.searchsorted(values, aspect, side="left"), 1, len(values) - 1)
        lo = hi - 1
        # Same float expression as the original, and "<=" keeps its first-wins tie-break.
        take_lo = np.abs(values[lo] - aspect) <= np.abs(values[hi] - aspect)
        return np.where(take_lo, lo, hi)[()]
    # Unsorted custom table: plain argmin (first minimum wins, as min() does), in chunks.
    flat = aspect.reshape(-1)
    out = np.empty(flat.shape, dtype=np.intp)
    for begin in range(0, len(flat), 65536):
        part = flat[begin : begin + 65536]
        out[begin : begin + 65536] = np.argmin(np.abs(values[None, :] - part[:, None]), axis=1)
    return out.reshape(aspect.shape)[()]


def bucket_size(
    ratio: str | tuple[float, float],
    sample_size: float,
    downsample: float = 1.0,
    ratios: Ratios = ASPECT_RATIO_512,
) -> tuple[int, int]:
    """(height, width) of a bucket at `sample_size`, as the collate functions compute it.

    `int(x / 512 * sample_size / downsample / 16) * 16` for each side of the 512-scale entry:
    scaled, then rounded *down* to a multiple of 16. The division order is the original's, which
    matters when the scaled size lands on a multiple of 16 up to float error.
    """
    h512, w512 = ratios[ratio] if isinstance(ratio, str) else ratio
    return (
        int(h512 / BUCKET_BASE * sample_size / downsample / SIZE_MULTIPLE) * SIZE_MULTIPLE,
        int(w512 / BUCKET_BASE * sample_size / downsample / SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )


def bucket_table(
    sample_size: float, downsample: float = 1.0, ratios: Ratios = ASPECT_RATIO_512
) -> dict[str, tuple[int, int]]:
    """Every bucket's (height, width) at one sample size."""
    return {key: bucket_size(key, sample_size, downsample, ratios) for key in ratios}


def fixed_sample_size(fix_sample_size: Sequence[int]) -> tuple[int, int]:
    """`--fix_sample_size H W` rounded down to multiples of 16, as the collate does."""
    if len(fix_sample_size) != 2:
        raise ValueError(f"fix_sample_size takes HEIGHT WIDTH, got {list(fix_sample_size)}")
    height, width = (int(x / SIZE_MULTIPLE) * SIZE_MULTIPLE for x in fix_sample_size)
    return height, width


# --------------------------------------------------------------------------------------------
# Resize and crop geometry
# --------------------------------------------------------------------------------------------


@overload
def prescale_size(height: int, width: int, short_side: int) -> tuple[int, int]: ...
@overload
def prescale_size(
    height: npt.NDArray[np.integer], width: npt.NDArray[np.integer], short_side: int
) -> tuple[IntArray, IntArray]: ...
def prescale_size(
    height: int | npt.NDArray[np.integer], width: int | npt.NDArray[np.integer], short_side: int
) -> tuple[int, int] | tuple[IntArray, IntArray]:
    """Size of a video frame after the dataset's first downscale (`utils.resize_frame`).

    VideoX-Fun/CogVideoX-Fun/EasyAnimate shrink every decoded video frame so that its short side
    is `short_side` = max(image_sample_size, video_sample_size), never enlarging, the long side
    `int(short_side * long / short)`. The collate then sees this size, not the file's: its bucket
    choice and `resize_crop_params` work on it. Images are not prescaled. Vectorised.
    """
    h = np.asarray(height, dtype=np.int64)
    w = np.asarray(width, dtype=np.int64)
    landscape = h < w
    short = np.where(landscape, h, w)
    long = np.where(landscape, w, h)
    shrink = short_side <= short  # the original returns the frame unchanged when short_side > short
    new_long = np.where(shrink, (short_side * long / np.maximum(short, 1)).astype(np.int64), long)
    new_short = np.where(shrink, short_side, short)
    out_h = np.where(landscape, new_short, new_long)
    out_w = np.where(landscape, new_long, new_short)
    if np.ndim(height) == 0 and np.ndim(width) == 0:
        return int(out_h), int(out_w)
    return out_h, out_w


def resize_crop_params(
    src_h: int, src_w: int, dst_h: int, dst_w: int, mode: Literal["cover", "stretch"] = "cover"
) -> tuple[int, int, int, int]:
    """How a (src_h, src_w) frame becomes (dst_h, dst_w): `(resize_h, resize_w, top, left)`.

    Resize to (resize_h, resize_w), then crop (dst_h, dst_w) at (top, left).

    `cover` (buckets; also `enable_bucket` off, where dst is the square sample size): scale so the
    frame covers the target, the scaled side `int(...)`, then torchvision's centre crop
    `int(round((resize - dst) / 2))` (Python's round: halves go to even).
    `stretch` (`--fix_sample_size`, DynamiCtrl): `transforms.Resize([h, w])` to the exact size,
    aspect ratio not kept, nothing cropped.
    """
    if min(src_h, src_w, dst_h, dst_w) <= 0:
        raise ValueError(f"sizes must be positive, got {src_h}x{src_w} -> {dst_h}x{dst_w}")
    if mode == "stretch":
        return dst_h, dst_w, 0, 0
    if mode != "cover":
        raise ValueError(f"mode must be 'cover' or 'stretch', got {mode!r}")
    if dst_h / src_h > dst_w / src_w:
        resize_h, resize_w = dst_h, int(src_w * dst_h / src_h)
    else:
        resize_h, resize_w = int(src_h * dst_w / src_w), dst_w
    return resize_h, resize_w, round((resize_h - dst_h) / 2.0), round((resize_w - dst_w) / 2.0)


def controlnext_crop(
    src_h: int, src_w: int, dst_h: int, dst_w: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """ControlNeXt's random crop to the target aspect: `(top, left, crop_h, crop_w)`.

    The crop keeps the full width (taller sources) or full height (wider sources), placed
    uniformly at random along the other axis; the crop is then resized to (dst_h, dst_w).
    Target, pose, reference and hand mask share one crop (utils/vid_dataset.py).
    """
    if src_h / src_w > dst_h / dst_w:
        crop_h, crop_w = int(src_w * dst_h / dst_w), src_w
        return int(rng.integers(0, src_h - crop_h, endpoint=True)), 0, crop_h, crop_w
    crop_h, crop_w = src_h, int(src_h * dst_w / dst_h)
    return 0, int(rng.integers(0, src_w - crop_w, endpoint=True)), crop_h, crop_w


def dynamictrl_resolution(
    height: int, width: int, height_buckets: Sequence[int], width_buckets: Sequence[int]
) -> tuple[int, int]:
    """DynamiCtrl's training size: the (h, w) bucket pair nearest in |dh| + |dw|.

    Ties go to the first pair in height-major order. The frame is then stretched to it
    (`resize_crop_params(..., mode="stretch")`); --height/--width do not enter.
    """
    hs = np.asarray(height_buckets, dtype=np.int64)
    ws = np.asarray(width_buckets, dtype=np.int64)
    cost = np.abs(hs[:, None] - height) + np.abs(ws[None, :] - width)
    i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return int(hs[i]), int(ws[j])


# --------------------------------------------------------------------------------------------
# Token budgets
# --------------------------------------------------------------------------------------------


def token_count(
    frames: int | npt.ArrayLike,
    height: int | npt.ArrayLike,
    width: int | npt.ArrayLike,
    patch: int = 2,
    spatial: int = 8,
    temporal: int = TEMPORAL_COMPRESSION,
) -> int | IntArray:
    """Transformer tokens of a clip: `((F - 1) // 4 + 1) * (H / 8 / p) * (W / 8 / p)`.

    512x512x49 -> 13 * 32 * 32 = 13,312. Vectorised.
    """
    f = np.asarray(frames, dtype=np.int64)
    h = np.asarray(height, dtype=np.int64)
    w = np.asarray(width, dtype=np.int64)
    tokens = ((f - 1) // temporal + 1) * (h // (spatial * patch)) * (w // (spatial * patch))
    return int(tokens) if tokens.ndim == 0 else tokens


def plan_sample_sizes(video_sample_size: int, image_sample_size: int, step: int = SIZE_STEP) -> list[int]:
    """Sizes a token-length batch can take: video_sample_size to image_sample_size by 128.

    image_sample_size is appended when the range misses it; when image_sample_size is not larger
    than video_sample_size the only size is image_sample_size (sic: the originals' rule).
    """
    if image_sample_size <= video_sample_size:
        return [image_sample_size]
    sizes = list(range(video_sample_size, image_sample_size + 1, step))
    if sizes[-1] != image_sample_size:
        sizes.append(image_sample_size)
    return sizes


def token_length_plan(
    token_sample_size: int,
    video_sample_n_frames: int,
    video_sample_size: int,
    image_sample_size: int,
    interval: int = TEMPORAL_COMPRESSION,
) -> list[tuple[int, int, int]]:
    """`--training_with_video_token_length`: (size, frames, tokens) for every size of the plan.

    budget = video_sample_n_frames * token_sample_size**2 pixels;
    frames = min(budget / s / s, video_sample_n_frames) // 4 * 4 + 1 (floats, floored; no lower
    clamp, so a size whose budget is under 4 frames gets 1). With token 512, 49 frames and sizes
    256..1024: 49, 49, 49, 29, 21, 17, 13. Note the +1 after flooring: a budget of exactly
    `video_sample_n_frames` frames gives `n // 4 * 4 + 1`, one more than n when n is a multiple
    of 4; `batch_frames` then cuts it to what the clips have.
    """
    budget = video_sample_n_frames * token_sample_size * token_sample_size
    plan = []
    for size in plan_sample_sizes(video_sample_size, image_sample_size):
        frames = int(min(budget / size / size, video_sample_n_frames) // interval * interval + 1)
        plan.append((size, frames, int(token_count(frames, size, size))))
    return plan


# --------------------------------------------------------------------------------------------
# random_hw_adapt: each batch's scale and frame cap
# --------------------------------------------------------------------------------------------

# Probability of "no downscale" in get_random_downsample_ratio: VideoX-Fun's Wan scripts use 0.90,
# CogVideoX-Fun scripts/train.py and EasyAnimate scripts/train_control.py use 0.75.
DOWNSAMPLE_FIRST_PROB = {"videox": 0.90, "cogvideox": 0.75, "easyanimate": 0.75}


def downsample_choices(sample_size: int, image_ratio: Sequence[float] = ()) -> list[float]:
    """Downscale factors `--random_hw_adapt` can apply at a sample size (first = 1, no change).

    >= 1536: 1, 1.25, 1.5, 2, 2.5, 3; >= 1024: 1, 1.25, 1.5, 2; >= 768: 1, 1.25, 1.5; >= 512: 1;
    each followed by `image_ratio` (images pass image_sample_size / video_sample_size); below 512
    only 1, and `image_ratio` is dropped.
    """
    if sample_size >= 1536:
        return [1, 1.25, 1.5, 2, 2.5, 3, *image_ratio]
    if sample_size >= 1024:
        return [1, 1.25, 1.5, 2, *image_ratio]
    if sample_size >= 768:
        return [1, 1.25, 1.5, *image_ratio]
    if sample_size >= 512:
        return [1, *image_ratio]
    return [1]


def draw_downsample_ratio(
    rng: np.random.Generator,
    sample_size: int,
    image_ratio: Sequence[float] = (),
    first_prob: float = DOWNSAMPLE_FIRST_PROB["videox"],
) -> float:
    """Draw a downscale factor: the first choice with `first_prob`, the rest equally likely."""
    choices = downsample_choices(sample_size, image_ratio)
    if len(choices) == 1:
        return float(choices[0])
    probs = np.full(len(choices), (1.0 - first_prob) / (len(choices) - 1))
    probs[0] = first_prob
    return float(rng.choice(np.asarray(choices, dtype=np.float64), p=probs))


def draw_token_length_size(
    rng: np.random.Generator,
    sizes: Sequence[int],
    local_min_size: float,
    token_sample_size: int,
    weighting: Literal["closest", "uniform"] = "closest",
) -> int:
    """Pick a video batch's size under `--training_with_video_token_length`.

    Candidates are the plan sizes below 1.25x the batch's smallest `mean(h, w)` (all sizes when
    none is). `closest` (VideoX-Fun Wan): the size nearest token_sample_size has probability 0.5,
    the others share 0.5. `uniform` (CogVideoX-Fun, EasyAnimate): equally likely.
    """
    choices = [size for size in sizes if size < local_min_size * 1.25] or list(sizes)
    if len(choices) == 1:
        return int(choices[0])
    if weighting == "uniform":
        return int(rng.choice(choices))
    if weighting != "closest":
        raise ValueError(f"weighting must be 'closest' or 'uniform', got {weighting!r}")
    closest = min(range(len(choices)), key=lambda i: abs(choices[i] - token_sample_size))
    probs = np.full(len(choices), 0.5 / (len(choices) - 1))
    probs[closest] = 0.5
    return int(rng.choice(choices, p=probs))


@dataclass(frozen=True)
class BatchShape:
    """A batch's spatial scale and frame cap, drawn before any frame is decoded.

    Bucket sides are `bucket_size(ratio, base_size, downsample)`; the batch's frame count is
    `batch_frames(frame_cap, <clip lengths of its samples>)`.
    """

    base_size: int  # image_sample_size for image batches, video_sample_size for video batches
    downsample: float  # 1 = no downscale
    frame_cap: int

    def bucket_hw(
        self, ratio: str | tuple[float, float], ratios: Ratios = ASPECT_RATIO_512
    ) -> tuple[int, int]:
        return bucket_size(ratio, self.base_size, self.downsample, ratios)

    @property
    def side(self) -> float:
        """The square side this scale stands for (the 1.0 bucket before rounding)."""
        return self.base_size / self.downsample


def draw_batch_shape(
    rng: np.random.Generator,
    kind: Literal["image", "video"],
    *,
    video_sample_size: int,
    image_sample_size: int,
    video_sample_n_frames: int,
    token_sample_size: int = 512,
    random_hw_adapt: bool = False,
    training_with_video_token_length: bool = False,
    local_min_size: float | None = None,
    interval: int = TEMPORAL_COMPRESSION,
    downsample_first_prob: float = DOWNSAMPLE_FIRST_PROB["videox"],
    size_weighting: Literal["closest", "uniform"] = "closest",
) -> BatchShape:
    """Scale and frame cap of one bucketed batch, as the VideoX-Fun family's collate_fn draws them.

    images: downsample 1, or with --random_hw_adapt a draw from `downsample_choices(
            image_sample_size, [image_sample_size / video_sample_size])`; base image_sample_size.
    videos: without --random_hw_adapt: downsample 1, frame cap n + 4.
            with it and --training_with_video_token_length: a plan size drawn by
            `draw_token_length_size` (needs `local_min_size`, the smallest mean(h, w) of the
            batch's prescaled frames), downsample video_sample_size / size, frame cap = the
            plan's frames at that size.
            with it alone: a draw from `downsample_choices(video_sample_size)`, frame cap n + 4.
    --training_with_video_token_length without --random_hw_adapt changes nothing here, as in the
    originals. The frame cap `n + 4` means "no cap beyond the clips' own lengths".
    """
    no_cap = video_sample_n_frames + interval
    if kind == "image":
        downsample = 1.0
        if random_hw_adapt:
            downsample = draw_downsample_ratio(
                rng, image_sample_size, [image_sample_size / video_sample_size], downsample_first_prob
            )
        return BatchShape(image_sample_size, downsample, no_cap)
    if kind != "video":
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    if not random_hw_adapt:
        return BatchShape(video_sample_size, 1.0, no_cap)
    if training_with_video_token_length:
        if local_min_size is None:
            raise ValueError("local_min_size is needed to draw a token-length size")
        plan = token_length_plan(
            token_sample_size, video_sample_n_frames, video_sample_size, image_sample_size, interval
        )
        frames_at = {size: frames for size, frames, _ in plan}
        size = draw_token_length_size(rng, list(frames_at), local_min_size, token_sample_size, size_weighting)
        return BatchShape(video_sample_size, video_sample_size / size, frames_at[size])
    downsample = draw_downsample_ratio(rng, video_sample_size, (), downsample_first_prob)
    return BatchShape(video_sample_size, downsample, no_cap)


def batch_frames(frame_cap: int, clip_frames: npt.ArrayLike, interval: int = TEMPORAL_COMPRESSION) -> int:
    """Frames every sample of a batch is cut to: the shortest clip, capped, cut to 4k+1, at least 1.

    `clip_frames` are the samples' clip lengths (`videox_clip_frames` for videos, 1 for images);
    samples keep their first `batch_frames` frames.
    """
    lengths = np.asarray(clip_frames, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("a batch needs at least one sample")
    frames = int(min(frame_cap, int(lengths.min())))
    frames = (frames - 1) // interval * interval + 1
    return max(frames, 1)


def local_min_size(heights: npt.ArrayLike, widths: npt.ArrayLike) -> float:
    """Smallest mean(h, w) over a batch's (prescaled) frames: the input of `draw_token_length_size`."""
    h = np.asarray(heights, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    return float(np.min((h + w) / 2.0))

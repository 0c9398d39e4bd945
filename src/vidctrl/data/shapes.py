"""Each batch's shape, planned from manifest metadata before anything is decoded.

`BucketShaper` assigns every record a bucket key (media kind x aspect ratio, or kind alone when
buckets are off) and, given a global batch of records and the step's RNG, draws the batch's
height, width and frame count the way the seed systems' collate functions do (see `buckets.py`).
`plan_table` is the size -> frames -> tokens table of `vidctrl data plan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidctrl.config.fields import ConfigError
from vidctrl.data import buckets
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.manifest import Manifest
from vidctrl.data.sampler import BatchShape
from vidctrl.data.sampling import cut_to_4k_plus_1, random_frame_crop

RATIO_KEYS = list(buckets.ASPECT_RATIO_512)
# bucket key = kind * KIND_STRIDE + ratio index, or (DynamiCtrl) + (size pair, frame bucket) index
KIND_STRIDE = 1 << 20
# DynamiCtrl's defaults (utils/args.py) for whichever of --height_buckets / --width_buckets is not given.
DYNAMICTRL_SIZE_BUCKETS: tuple[int, ...] = (256, 320, 384, 480, 512, 576, 720, 768, 960, 1024, 1280, 1536)


def fixed_size(config: DataConfig) -> tuple[int, int] | None:
    """(height, width) when the flags fix the training size, else None."""
    if config.fix_sample_size is not None:
        return buckets.fixed_sample_size(config.fix_sample_size)
    if config.height is not None and config.width is not None:
        return config.height, config.width
    if (config.height is None) != (config.width is None):
        raise ConfigError("--height and --width go together: pass both or neither")
    return None


def dynamictrl_size_buckets(config: DataConfig) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(height buckets, width buckets) when the flags ask for DynamiCtrl's size buckets, else None.

    One of the two lists given alone takes DynamiCtrl's default list for the other, as the original
    does. The buckets decide the training size; --height/--width then only size validation videos.
    """
    if not (config.height_buckets or config.width_buckets):
        return None
    if config.fix_sample_size is not None:
        raise ValueError("--fix_sample_size and --height_buckets/--width_buckets exclude each other: choose one")
    heights = tuple(config.height_buckets or DYNAMICTRL_SIZE_BUCKETS)
    widths = tuple(config.width_buckets or DYNAMICTRL_SIZE_BUCKETS)
    bad = [v for v in (*heights, *widths) if v <= 0 or v % 16]
    if bad:
        raise ValueError(f"size buckets must be positive multiples of 16 (VAE 8x, patch 2); got {bad}")
    return heights, widths


def dynamictrl_resolutions(heights: np.ndarray, widths: np.ndarray, height_buckets: tuple[int, ...],
                           width_buckets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `buckets.dynamictrl_resolution`: each record's (height index, width index)."""
    hs = np.asarray(height_buckets, dtype=np.int64)
    ws = np.asarray(width_buckets, dtype=np.int64)
    cost = np.abs(hs[None, :, None] - heights[:, None, None]) + np.abs(ws[None, None, :] - widths[:, None, None])
    flat = cost.reshape(len(heights), -1).argmin(axis=1)  # first minimum in height-major order, as the original
    return flat // len(ws), flat % len(ws)


class BucketShaper:
    """Bucket keys per record and the shape of each batch, from the data flags."""

    def __init__(self, manifest: Manifest, config: DataConfig, rules: ClipRules, *, frame_multiple: int = 4) -> None:
        self.config = config
        self.rules = rules
        self.frame_multiple = frame_multiple
        self.fixed = fixed_size(config)
        self.is_video = manifest.is_video()
        heights = manifest.numeric("height")
        widths = manifest.numeric("width")
        if (heights < 0).any() or (widths < 0).any():
            raise ValueError("every record needs a probed width and height before bucket planning")
        self.clip_frames = np.where(self.is_video, rules.available_frames(manifest.numeric("frames")), 1)
        # The originals shrink decoded video frames (short side to the larger sample size) before
        # the collate sees them; the token-length size draw looks at that size.
        short_side = max(config.image_sample_size, config.video_sample_size)
        self.prescaled_h, self.prescaled_w = buckets.prescale_size(heights, widths, short_side)
        self.prescaled_h = np.where(self.is_video, self.prescaled_h, heights)
        self.prescaled_w = np.where(self.is_video, self.prescaled_w, widths)
        kind = self.is_video.astype(np.int64)
        self.size_buckets = dynamictrl_size_buckets(config) if rules.rule == "dynamictrl" else None
        if self.size_buckets is not None:
            # DynamiCtrl groups by (frames, height, width): the nearest size pair, the nearest frame bucket.
            self.frame_buckets = tuple(rules.frame_buckets or (rules.n_frames,))
            hi, wi = dynamictrl_resolutions(heights, widths, *self.size_buckets)
            fb = np.asarray(self.frame_buckets, dtype=np.int64)
            wanted = np.minimum(manifest.numeric("frames"), rules.n_frames)
            fi = np.abs(fb[None, :] - wanted[:, None]).argmin(axis=1)
            fi = np.where(self.is_video, fi, 0)
            combo = (hi * len(self.size_buckets[1]) + wi) * len(fb) + fi
            self.keys = kind * KIND_STRIDE + combo
        elif config.enable_bucket and self.fixed is None:
            ratio = np.asarray(buckets.closest_ratio_index(heights, widths), dtype=np.int64)
            self.keys = kind * KIND_STRIDE + ratio
        else:
            self.keys = kind * KIND_STRIDE

    def bucket_keys(self) -> np.ndarray:
        return self.keys

    def batch_shape(self, key: int, members: np.ndarray, rng: np.random.Generator) -> BatchShape:
        config = self.config
        video = key >= KIND_STRIDE
        if self.size_buckets is not None:
            combo = key % KIND_STRIDE
            pair, frame_index = divmod(combo, len(self.frame_buckets))
            hi, wi = divmod(pair, len(self.size_buckets[1]))
            height, width = self.size_buckets[0][hi], self.size_buckets[1][wi]
            if not video:
                return BatchShape(height, width, 1)
            # Every member shares the frame bucket; a member too short for it is skipped when loaded.
            bucket = self.frame_buckets[frame_index]
            return BatchShape(height, width, buckets.batch_frames(bucket, [bucket], interval=self.frame_multiple))
        if self.fixed is not None:
            height, width = self.fixed
            cap = config.video_sample_n_frames + self.frame_multiple
        else:
            scale = buckets.draw_batch_shape(
                rng,
                "video" if video else "image",
                video_sample_size=config.video_sample_size,
                image_sample_size=config.image_sample_size,
                video_sample_n_frames=config.video_sample_n_frames,
                token_sample_size=config.token_sample_size,
                # The originals ignore --training_with_video_token_length unless --random_hw_adapt
                # is also given; vidctrl does what the flag says either way.
                random_hw_adapt=config.random_hw_adapt or config.training_with_video_token_length,
                training_with_video_token_length=config.training_with_video_token_length,
                local_min_size=buckets.local_min_size(self.prescaled_h[members], self.prescaled_w[members]),
                interval=self.frame_multiple,
                downsample_first_prob=config.downsample_first_prob,
                size_weighting=config.size_weighting,
            )
            if config.enable_bucket:
                height, width = scale.bucket_hw(RATIO_KEYS[key % KIND_STRIDE])
            else:
                side = int(scale.side) // 16 * 16
                height = width = side
            cap = scale.frame_cap
        if not video:
            return BatchShape(height, width, 1)
        frames = buckets.batch_frames(cap, self.clip_frames[members], interval=self.frame_multiple)
        if config.random_frame_crop:
            frames = min(frames, random_frame_crop(config.video_sample_n_frames, rng, interval=self.frame_multiple))
        return BatchShape(height, width, frames)


def plan_table(config: DataConfig, *, frame_multiple: int = 4) -> list[dict[str, Any]]:
    """The video sizes training can draw, each with its frame count and token count (patch 2,
    VAE 8x spatial and 4x temporal compression)."""
    n = config.video_sample_n_frames
    size_buckets = dynamictrl_size_buckets(config)
    if size_buckets is not None:
        rows = []
        for frame_bucket in config.frame_buckets or (n,):
            frames = int(cut_to_4k_plus_1(frame_bucket, frame_multiple))
            for height in size_buckets[0]:
                for width in size_buckets[1]:
                    rows.append({"size": max(height, width), "height": height, "width": width, "frames": frames,
                                 "tokens": int(buckets.token_count(frames, height, width))})
        return rows
    fixed = fixed_size(config)
    if fixed is not None:
        frames = int(cut_to_4k_plus_1(n, frame_multiple))
        height, width = fixed
        return [{"size": max(height, width), "height": height, "width": width, "frames": frames,
                 "tokens": int(buckets.token_count(frames, height, width))}]
    if config.training_with_video_token_length:
        return [
            {"size": size, "frames": frames, "tokens": tokens}
            for size, frames, tokens in buckets.token_length_plan(
                config.token_sample_size, n, config.video_sample_size, config.image_sample_size, frame_multiple
            )
        ]
    frames = int(cut_to_4k_plus_1(n, frame_multiple))
    downsamples = [1.0]
    if config.random_hw_adapt:
        downsamples = [float(d) for d in buckets.downsample_choices(config.video_sample_size)]
    rows = []
    for downsample in downsamples:
        size = int(config.video_sample_size / downsample) // 16 * 16
        rows.append({"size": size, "frames": frames, "tokens": int(buckets.token_count(frames, size, size))})
    return rows

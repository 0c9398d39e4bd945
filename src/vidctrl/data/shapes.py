"""Each batch's shape, planned from manifest metadata before anything is decoded.

`BucketShaper` assigns every record a bucket key (media kind x aspect ratio, or kind alone when
buckets are off) and, given a global batch of records and the step's RNG, draws the batch's
height, width and frame count the way the seed systems' collate functions do (see `buckets.py`).
`plan_table` is the size -> frames -> tokens table of `vidctrl data plan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidctrl.data import buckets
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.manifest import Manifest
from vidctrl.data.sampler import BatchShape
from vidctrl.data.sampling import cut_to_4k_plus_1, random_frame_crop

RATIO_KEYS = list(buckets.ASPECT_RATIO_512)
KIND_STRIDE = 1024  # bucket key = kind * KIND_STRIDE + ratio index


def fixed_size(config: DataConfig) -> tuple[int, int] | None:
    """(height, width) when the flags fix the training size, else None."""
    if config.fix_sample_size is not None:
        return buckets.fixed_sample_size(config.fix_sample_size)
    if config.height is not None and config.width is not None:
        return config.height, config.width
    if (config.height is None) != (config.width is None):
        raise ValueError("--height and --width go together: pass both or neither")
    return None


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
        if config.enable_bucket and self.fixed is None:
            ratio = np.asarray(buckets.closest_ratio_index(heights, widths), dtype=np.int64)
            self.keys = kind * KIND_STRIDE + ratio
        else:
            self.keys = kind * KIND_STRIDE

    def bucket_keys(self) -> np.ndarray:
        return self.keys

    def batch_shape(self, key: int, members: np.ndarray, rng: np.random.Generator) -> BatchShape:
        config = self.config
        video = key >= KIND_STRIDE
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

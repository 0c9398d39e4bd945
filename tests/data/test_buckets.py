"""Buckets, token budgets and resize geometry, against DESIGN.md and numbers worked from the seeds' code."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from vidctrl.data.buckets import (
    ASPECT_RATIO_512,
    ASPECT_RATIO_RANDOM_CROP_512,
    ASPECT_RATIO_RANDOM_CROP_PROB,
    DOWNSAMPLE_FIRST_PROB,
    BatchShape,
    batch_frames,
    bucket_size,
    bucket_table,
    closest_ratio,
    controlnext_crop,
    downsample_choices,
    draw_batch_shape,
    draw_downsample_ratio,
    draw_token_length_size,
    dynamictrl_resolution,
    fixed_sample_size,
    local_min_size,
    plan_sample_sizes,
    prescale_size,
    resize_crop_params,
    token_count,
    token_length_plan,
)
from vidctrl.data.config import DataConfig


class ScriptedRng:
    def __init__(self, pick: str = "low") -> None:
        self.pick = pick
        self.calls: list[tuple[int, int]] = []

    def integers(self, low: int, high: int, endpoint: bool = False) -> int:
        assert endpoint
        self.calls.append((low, high))
        return low if self.pick == "low" else high


def original_closest(height: float, width: float) -> str:
    """bucket_sampler.get_closest_ratio, as a test oracle."""
    aspect_ratio = height / width
    return min(ASPECT_RATIO_512.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))


# --- token budgets ------------------------------------------------------------------------


def test_token_length_plan_reproduces_the_design_table() -> None:
    plan = token_length_plan(
        token_sample_size=512, video_sample_n_frames=49, video_sample_size=256, image_sample_size=1024
    )
    assert [(size, frames) for size, frames, _ in plan] == [
        (256, 49), (384, 49), (512, 49), (640, 29), (768, 21), (896, 17), (1024, 13),
    ]  # fmt: skip
    assert dict((size, tokens) for size, _, tokens in plan)[512] == 13_312


def test_token_length_plan_at_1024_is_13_frames_not_the_seed_docs_9() -> None:
    # 512 * 512 * 49 / 1024 / 1024 = 12.25 -> 12.25 // 4 * 4 + 1 = 13 (the seed README says 9).
    assert token_length_plan(512, 49, 256, 1024)[-1][:2] == (1024, 13)


def test_token_length_plan_for_the_wan_seed_command() -> None:
    # 002 seed: 81 frames, token 512, sizes 256..1024. 81*512^2/640^2 = 51.84 -> 49;
    # /768^2 = 36.0 -> 37; /896^2 = 26.45 -> 25; /1024^2 = 20.25 -> 21.
    plan = token_length_plan(512, 81, 256, 1024)
    assert [frames for _, frames, _ in plan] == [81, 81, 81, 49, 37, 25, 21]


def test_token_length_plan_has_no_lower_clamp_and_can_exceed_n_by_one() -> None:
    assert token_length_plan(128, 49, 1024, 2048)[-1][:2] == (2048, 1)  # budget < 4 frames
    assert token_length_plan(512, 48, 256, 512)[0][:2] == (256, 49)  # 48 // 4 * 4 + 1


def test_plan_sizes_append_image_size_and_collapse_when_image_is_smaller() -> None:
    assert plan_sample_sizes(256, 1000) == [256, 384, 512, 640, 768, 896, 1000]
    assert plan_sample_sizes(1024, 256) == [256]
    assert plan_sample_sizes(512, 512) == [512]


def test_token_count_of_512_square_49_frames() -> None:
    assert token_count(49, 512, 512) == 13 * 1024 == 13_312
    assert token_count(1, 512, 512) == 1024
    np.testing.assert_array_equal(token_count(np.array([49, 13]), 512, np.array([512, 1024])), [13_312, 8192])


# --- aspect buckets -----------------------------------------------------------------------


def test_bucket_table_is_the_seeds_40_ratios_at_512() -> None:
    assert len(ASPECT_RATIO_512) == 40
    assert ASPECT_RATIO_512["1.0"] == (512.0, 512.0)
    assert ASPECT_RATIO_512["0.57"] == (384.0, 672.0)
    keys = [float(k) for k in ASPECT_RATIO_512]
    assert keys == sorted(keys)
    assert len(ASPECT_RATIO_RANDOM_CROP_512) == len(ASPECT_RATIO_RANDOM_CROP_PROB) == 15
    assert ASPECT_RATIO_RANDOM_CROP_PROB.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("height", "width", "key"),
    [
        (1080, 1920, "0.57"),
        (1920, 1080, "1.75"),
        (512, 512, "1.0"),
        (720, 1280, "0.57"),
        (480, 640, "0.72"),
        (100, 1000, "0.25"),
    ],
)
def test_closest_ratio_of_common_video_sizes(height: int, width: int, key: str) -> None:
    assert closest_ratio(height, width) == key == original_closest(height, width)


def test_closest_ratio_vectorised_matches_the_original_min_including_ties() -> None:
    rng = np.random.default_rng(0)
    heights = rng.integers(16, 4000, size=20000)
    widths = rng.integers(16, 4000, size=20000)
    # exact midpoints between neighbouring keys, where the first key must win
    keys = [float(k) for k in ASPECT_RATIO_512]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(keys)]
    heights = np.concatenate([heights, np.array(mids) * 1000])
    widths = np.concatenate([widths, np.full(len(mids), 1000)])
    ours = closest_ratio(heights, widths)
    expected = [original_closest(float(h), float(w)) for h, w in zip(heights, widths, strict=True)]
    assert list(ours) == expected


def test_closest_ratio_handles_a_million_records_fast() -> None:
    rng = np.random.default_rng(1)
    heights, widths = rng.integers(100, 4000, size=(2, 1_000_000))
    began = time.perf_counter()
    keys = closest_ratio(heights, widths)
    assert time.perf_counter() - began < 3.0
    assert keys.shape == (1_000_000,)


def test_bucket_sizes_scale_by_s_over_512_and_round_down_to_16() -> None:
    assert bucket_size("1.0", 512) == (512, 512)
    assert bucket_size("0.57", 256) == (192, 336)
    # 384/512*1024/1.25 = 614.4 -> 608; 672/512*1024/1.25 = 1075.2 -> 1072
    assert bucket_size("0.57", 1024, downsample=1.25) == (608, 1072)
    # token-length size 640 at video_sample_size 256: downsample 256 / 640
    assert bucket_size("1.0", 256, downsample=256 / 640) == (640, 640)
    for h, w in bucket_table(720).values():
        assert h % 16 == 0 and w % 16 == 0


def test_fix_sample_size_rounds_down_to_16() -> None:
    assert fixed_sample_size([500, 700]) == (496, 688)
    assert fixed_sample_size((1360, 768)) == (1360, 768)
    with pytest.raises(ValueError):
        fixed_sample_size([512])


# --- resize and crop ----------------------------------------------------------------------


def test_resize_covers_the_bucket_then_centre_crops() -> None:
    # 720x1280 into 512x512: 512/720 > 512/1280 -> (512, int(1280*512/720) = 910), left (910-512)/2 = 199
    assert resize_crop_params(720, 1280, 512, 512) == (512, 910, 0, 199)
    # prescaled 1080p frame (512x910) into its 0.57 bucket at 512 (384x672)
    assert resize_crop_params(512, 910, 384, 672) == (384, 682, 0, 5)
    # portrait: 1920x1080 into 672x384 (1.75 bucket)
    assert resize_crop_params(1920, 1080, 672, 384) == (682, 384, 5, 0)


def test_centre_crop_offset_rounds_halves_to_even_like_torchvision() -> None:
    assert resize_crop_params(1000, 1003, 500, 500) == (500, 501, 0, 0)  # round(0.5) = 0
    assert resize_crop_params(1000, 1006, 500, 500) == (500, 503, 0, 2)  # round(1.5) = 2
    assert resize_crop_params(1000, 1010, 500, 500) == (500, 505, 0, 2)  # round(2.5) = 2


def test_stretch_resizes_to_the_exact_size() -> None:
    assert resize_crop_params(1080, 1920, 1360, 768, mode="stretch") == (1360, 768, 0, 0)


def test_prescale_shrinks_the_short_side_and_never_enlarges() -> None:
    assert prescale_size(1080, 1920, 1024) == (1024, 1820)
    assert prescale_size(1920, 1080, 1024) == (1820, 1024)
    assert prescale_size(1080, 1920, 2048) == (1080, 1920)
    assert prescale_size(512, 512, 512) == (512, 512)
    hs, ws = prescale_size(np.array([1080, 1920, 300]), np.array([1920, 1080, 400]), 512)
    np.testing.assert_array_equal(hs, [512, 910, 300])
    np.testing.assert_array_equal(ws, [910, 512, 400])


def test_controlnext_crop_keeps_one_full_side_at_a_random_offset() -> None:
    # 1080x1920 landscape into 1024x576 portrait: full height, width int(1080*576/1024) = 607
    rng = ScriptedRng("high")
    assert controlnext_crop(1080, 1920, 1024, 576, rng) == (0, 1313, 1080, 607)
    assert rng.calls == [(0, 1313)]
    # tall source into a wider target: full width
    rng = ScriptedRng("high")
    assert controlnext_crop(2000, 576, 1024, 576, rng) == (976, 0, 1024, 576)


def test_dynamictrl_resolution_is_the_nearest_bucket_pair() -> None:
    assert dynamictrl_resolution(1080, 1920, [1360], [768]) == (1360, 768)
    defaults = [256, 320, 384, 480, 512, 576, 720, 768, 960, 1024, 1280, 1536]
    resolutions = [(h, w) for h in defaults for w in defaults]
    for height, width in [(1080, 1920), (480, 720), (1920, 1080), (700, 700)]:
        expected = min(resolutions, key=lambda x, h=height, w=width: abs(x[0] - h) + abs(x[1] - w))
        assert dynamictrl_resolution(height, width, defaults, defaults) == expected


# --- random_hw_adapt ----------------------------------------------------------------------


def test_downsample_choices_by_sample_size() -> None:
    assert downsample_choices(1024, [4.0]) == [1, 1.25, 1.5, 2, 4.0]
    assert downsample_choices(1536) == [1, 1.25, 1.5, 2, 2.5, 3]
    assert downsample_choices(768) == [1, 1.25, 1.5]
    assert downsample_choices(512, [2.0]) == [1, 2.0]
    assert downsample_choices(256, [4.0]) == [1]  # image_ratio dropped below 512


def test_downsample_draw_keeps_full_size_with_the_first_probability() -> None:
    rng = np.random.default_rng(2)
    draws = np.array([draw_downsample_ratio(rng, 1024, [4.0]) for _ in range(20000)])
    assert 0.89 < np.mean(draws == 1.0) < 0.91
    assert set(np.unique(draws)) == {1.0, 1.25, 1.5, 2.0, 4.0}
    draws = np.array(
        [
            draw_downsample_ratio(rng, 1024, first_prob=DOWNSAMPLE_FIRST_PROB["cogvideox"])
            for _ in range(20000)
        ]
    )
    assert 0.74 < np.mean(draws == 1.0) < 0.76


def test_token_length_size_prefers_the_token_size_among_sizes_the_videos_allow() -> None:
    sizes = [256, 384, 512, 640, 768, 896, 1024]
    rng = np.random.default_rng(4)
    # smallest mean side 600 -> candidates below 750: 256, 384, 512, 640; 512 gets 0.5
    draws = np.array([draw_token_length_size(rng, sizes, 600, 512) for _ in range(20000)])
    assert set(np.unique(draws)) == {256, 384, 512, 640}
    assert 0.48 < np.mean(draws == 512) < 0.52
    assert 0.15 < np.mean(draws == 256) < 0.18
    uniform = np.array([draw_token_length_size(rng, sizes, 600, 512, "uniform") for _ in range(20000)])
    assert 0.23 < np.mean(uniform == 512) < 0.27
    # no size small enough: every size is a candidate
    assert draw_token_length_size(rng, [512, 640], 100, 512) in (512, 640)


def test_batch_shape_without_adaptation_is_the_sample_size_and_no_frame_cap() -> None:
    rng = np.random.default_rng(0)
    video = draw_batch_shape(
        rng, "video", video_sample_size=512, image_sample_size=1024, video_sample_n_frames=49
    )
    assert video == BatchShape(512, 1.0, 53) and video.bucket_hw("1.0") == (512, 512)
    image = draw_batch_shape(
        rng, "image", video_sample_size=512, image_sample_size=1024, video_sample_n_frames=49
    )
    assert image.bucket_hw("1.0") == (1024, 1024)


def test_batch_shape_token_length_ties_size_and_frames_from_the_plan() -> None:
    rng = np.random.default_rng(8)
    plan = {size: frames for size, frames, _ in token_length_plan(512, 49, 256, 1024)}
    seen = set()
    for _ in range(400):
        shape = draw_batch_shape(
            rng, "video", video_sample_size=256, image_sample_size=1024, video_sample_n_frames=49,
            token_sample_size=512, random_hw_adapt=True, training_with_video_token_length=True,
            local_min_size=1024,
        )  # fmt: skip
        side = round(shape.side)
        assert shape.frame_cap == plan[side]
        assert shape.bucket_hw("1.0") == (side, side)
        seen.add(side)
    assert seen == set(plan)  # every plan size is below 1.25 * 1024


def test_batch_shape_token_length_skips_sizes_above_the_batchs_videos() -> None:
    rng = np.random.default_rng(9)
    sides = {
        round(
            draw_batch_shape(
                rng, "video", video_sample_size=256, image_sample_size=1024, video_sample_n_frames=49,
                random_hw_adapt=True, training_with_video_token_length=True, local_min_size=400,
            ).side
        )
        for _ in range(200)
    }  # fmt: skip
    assert sides == {256, 384}  # below 1.25 * 400 = 500


def test_batch_shape_token_length_without_random_hw_adapt_changes_nothing() -> None:
    shape = draw_batch_shape(
        np.random.default_rng(0), "video", video_sample_size=256, image_sample_size=1024,
        video_sample_n_frames=49, training_with_video_token_length=True,
    )  # fmt: skip
    assert shape == BatchShape(256, 1.0, 53)


def test_batch_frames_is_the_shortest_clip_capped_and_cut_to_4k_plus_1() -> None:
    assert batch_frames(53, [49, 49]) == 49
    assert batch_frames(53, [49, 20]) == 17
    assert batch_frames(29, [49, 49]) == 29
    assert batch_frames(53, [1, 1]) == 1  # images
    assert batch_frames(53, [2]) == 1
    with pytest.raises(ValueError):
        batch_frames(53, [])


def test_local_min_size_is_the_smallest_mean_side() -> None:
    assert local_min_size([512, 1024], [910, 1820]) == 711.0


def _shaper_draws(config: DataConfig, draws: int = 4000) -> np.ndarray:
    """Sides of `draws` video batches planned by the loader's shaper for one large square video."""
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.manifest import Manifest
    from vidctrl.data.records import Record
    from vidctrl.data.shapes import BucketShaper

    videos = Manifest.from_records([Record(media="/d/v.mp4", control="/d/c.mp4", frames=400, height=1024,
                                           width=1024, fps=8.0)])
    shaper = BucketShaper(videos, config, ClipRules.from_config(config, layout="videox"))
    rng = np.random.default_rng(5)
    key = int(shaper.bucket_keys()[0])
    return np.array([shaper.batch_shape(key, np.array([0]), rng).height for _ in range(draws)])


def test_the_loader_draws_sizes_with_the_configured_family_probabilities() -> None:
    common = {"video_sample_size": 1024, "image_sample_size": 1024, "enable_bucket": True, "random_hw_adapt": True}
    # downsample choices at 1024: 1, 1.25, 1.5, 2 -> the full 1024 side with the first probability
    wan = _shaper_draws(DataConfig(**common))
    cogvideox = _shaper_draws(DataConfig(**common, downsample_first_prob=0.75))
    assert 0.88 < np.mean(wan == 1024) < 0.92
    assert 0.73 < np.mean(cogvideox == 1024) < 0.77
    # token length, sizes 512..1024 all below 1.25 x 1024: 'closest' gives 512 one half, 'uniform' one fifth
    tokens = {**common, "video_sample_size": 512, "training_with_video_token_length": True}
    closest = _shaper_draws(DataConfig(**tokens))
    uniform = _shaper_draws(DataConfig(**tokens, size_weighting="uniform"))
    assert 0.47 < np.mean(closest == 512) < 0.53
    assert 0.17 < np.mean(uniform == 512) < 0.23


def test_downsample_first_prob_must_be_a_probability() -> None:
    from vidctrl.config.train import ConfigError, parse_train_config

    with pytest.raises(ConfigError, match="--downsample_first_prob"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--downsample_first_prob", "1.5"])

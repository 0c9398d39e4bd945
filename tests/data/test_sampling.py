"""Frame sampling: the seed systems' clip rules, checked against numbers worked out from their code."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from vidctrl.data.sampling import (
    ControlFrameMismatch,
    TooFewFrames,
    control_frame_indices,
    control_indices,
    controlnext_frame_indices,
    cut_to_4k_plus_1,
    dynamictrl_frame_count,
    dynamictrl_frame_indices,
    random_frame_crop,
    random_frame_crop_choices,
    repeat_indices,
    videox_clip_frames,
    videox_frame_indices,
    videox_min_frames,
    videox_reference_index,
)


class ScriptedRng:
    """Stands in for numpy's Generator: records each `integers` call and answers from a script."""

    def __init__(self, pick: str = "low") -> None:
        self.pick = pick
        self.calls: list[tuple[int, int]] = []

    def integers(self, low: int, high: int, endpoint: bool = False) -> int:
        assert endpoint, "the originals' randint is inclusive"
        self.calls.append((low, high))
        return low if self.pick == "low" else high


def original_videox_indices(length: int, n_frames: int, stride: int, ds: float, de: float, randint):
    """VideoX-Fun ImageVideoControlDataset.get_batch, the lines that pick frames, as a test oracle."""
    min_sample_n_frames = min(n_frames, int(length * (de - ds) // stride))
    if min_sample_n_frames == 0:
        raise ValueError("No Frames in video.")
    video_length = int(de * length)
    clip_length = min(video_length, (min_sample_n_frames - 1) * stride + 1)
    start_idx = (
        randint(int(ds * video_length), video_length - clip_length) if video_length != clip_length else 0
    )
    return np.linspace(start_idx, start_idx + clip_length - 1, min_sample_n_frames, dtype=int)


# --- 4k+1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "cut"), [(1, 1), (4, 1), (5, 5), (48, 45), (49, 49), (52, 49), (53, 53), (81, 81)]
)
def test_cut_to_4k_plus_1_keeps_the_largest_vae_friendly_count(n: int, cut: int) -> None:
    assert cut_to_4k_plus_1(n) == cut


def test_cut_to_4k_plus_1_is_vectorised() -> None:
    np.testing.assert_array_equal(cut_to_4k_plus_1(np.array([1, 5, 50, 81])), [1, 5, 49, 81])


# --- VideoX-Fun ---------------------------------------------------------------------------


def test_videox_short_video_gets_fewer_frames_spread_over_the_kept_span() -> None:
    # 100 frames, 49 wanted every 4th, drop 10%/10%: n = min(49, int(80.0 // 4)) = 20,
    # L = 90, clip = min(90, 19*4+1) = 77, start in [int(0.1*90), 90-77] = [9, 13].
    low, high = ScriptedRng("low"), ScriptedRng("high")
    first = videox_frame_indices(100, 49, 4, 0.1, 0.9, low)
    last = videox_frame_indices(100, 49, 4, 0.1, 0.9, high)
    assert low.calls == [(9, 13)]
    np.testing.assert_array_equal(first, np.arange(9, 86, 4))
    np.testing.assert_array_equal(last, np.arange(13, 90, 4))


def test_videox_seed_command_clip_uses_stride_3_inside_the_kept_span() -> None:
    # 002/004 seed commands: 49 frames at stride 3. 200 frames -> n 49, L 180, clip 145, start 18..35.
    rng = ScriptedRng("high")
    indices = videox_frame_indices(200, 49, 3, 0.1, 0.9, rng)
    assert rng.calls == [(18, 35)]
    assert len(indices) == 49 and indices[0] == 35 and indices[-1] == 179
    assert set(np.diff(indices)) == {3}


def test_videox_clip_filling_the_kept_span_starts_at_zero_without_a_draw() -> None:
    # 10 frames, stride 1, drop 0..1, 10 wanted: L 10, clip 10 -> start 0, no draw.
    rng = ScriptedRng()
    np.testing.assert_array_equal(videox_frame_indices(10, 10, 1, 0.0, 1.0, rng), np.arange(10))
    assert rng.calls == []


@pytest.mark.parametrize(
    ("n_frames", "stride", "ds", "de"),
    [
        (49, 4, 0.1, 0.9),
        (49, 3, 0.1, 0.9),
        (81, 2, 0.1, 0.9),
        (17, 4, 0.0, 1.0),
        (16, 1, 0.25, 0.75),
        (49, 5, 0.33, 0.66),
    ],
)
@pytest.mark.parametrize("pick", ["low", "high"])
def test_videox_matches_the_original_expression_for_every_length(
    n_frames: int, stride: int, ds: float, de: float, pick: str
) -> None:
    for length in range(0, 600):
        ours_rng, theirs_rng = ScriptedRng(pick), ScriptedRng(pick)
        try:
            expected = original_videox_indices(
                length, n_frames, stride, ds, de, lambda a, b, r=theirs_rng: r.integers(a, b, endpoint=True)
            )
        except ValueError:
            with pytest.raises(TooFewFrames):
                videox_frame_indices(length, n_frames, stride, ds, de, ours_rng)
            continue
        ours = videox_frame_indices(length, n_frames, stride, ds, de, ours_rng)
        np.testing.assert_array_equal(ours, expected)
        assert ours_rng.calls == theirs_rng.calls
        assert len(ours) == videox_clip_frames(length, n_frames, stride, ds, de)


def test_videox_random_starts_cover_the_original_range_uniformly() -> None:
    rng = np.random.default_rng(0)
    starts = [videox_frame_indices(100, 49, 4, 0.1, 0.9, rng)[0] for _ in range(5000)]
    values, counts = np.unique(starts, return_counts=True)
    np.testing.assert_array_equal(values, [9, 10, 11, 12, 13])
    assert counts.min() > 850  # 1000 expected each


def test_videox_same_generator_state_gives_the_same_clip() -> None:
    a = videox_frame_indices(300, 49, 3, 0.1, 0.9, np.random.default_rng(7))
    b = videox_frame_indices(300, 49, 3, 0.1, 0.9, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_videox_too_short_video_says_how_long_it_is_and_what_it_needs() -> None:
    with pytest.raises(TooFewFrames) as caught:
        videox_frame_indices(4, 49, 4, 0.1, 0.9, np.random.default_rng(0))
    message = str(caught.value)
    assert "4 frames" in message and "at least 5 frames" in message and "--video_sample_stride 4" in message
    assert videox_min_frames(4, 0.1, 0.9) == 5
    assert videox_min_frames(3, 0.1, 0.9) == 4  # 4 * 0.8 = 3.2 -> one frame at stride 3


def test_videox_clip_frames_vectorised_equals_the_scalar_rule() -> None:
    lengths = np.arange(0, 20000)
    for n, stride, ds, de in [(49, 4, 0.1, 0.9), (81, 2, 0.1, 0.9), (49, 3, 0.1, 0.9), (17, 4, 0.0, 1.0)]:
        expected = [min(n, int(int(length) * (de - ds) // stride)) for length in lengths]
        np.testing.assert_array_equal(videox_clip_frames(lengths, n, stride, ds, de), expected)


def test_videox_rejects_inverted_drop_span() -> None:
    with pytest.raises(ValueError, match="drop_start"):
        videox_frame_indices(100, 49, 4, 0.9, 0.1, np.random.default_rng(0))


def test_videox_reference_first_frame_and_random_weights() -> None:
    rng = np.random.default_rng(1)
    assert videox_reference_index(49, rng, "first_frame") == 0
    draws = np.array([videox_reference_index(49, rng, "random") for _ in range(20000)])
    assert 0.38 < np.mean(draws == 0) < 0.42
    assert draws.min() == 0 and draws.max() == 48


# --- random_frame_crop ----------------------------------------------------------------------


def test_random_frame_crop_choices_for_49_frames() -> None:
    choices, probs = random_frame_crop_choices(49)
    np.testing.assert_array_equal(choices, [5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49])
    assert probs[-1] == 0.9
    np.testing.assert_allclose(probs[:-1], 0.1 / 11)
    assert probs.sum() == pytest.approx(1.0)


def test_random_frame_crop_keeps_the_full_clip_nine_times_in_ten() -> None:
    rng = np.random.default_rng(3)
    draws = np.array([random_frame_crop(49, rng) for _ in range(20000)])
    assert set(np.unique(draws)) <= set(range(5, 50, 4))
    assert 0.89 < np.mean(draws == 49) < 0.91
    assert all((d - 1) % 4 == 0 for d in np.unique(draws))


def test_random_frame_crop_edge_lengths() -> None:
    rng = np.random.default_rng(0)
    assert random_frame_crop(1, rng) == 1  # no choice at all -> 1, as the original
    assert random_frame_crop(4, rng) == 5  # one choice, longer than the clip: a no-op slice
    choices, _ = random_frame_crop_choices(81)
    assert choices[-1] == 81 and choices[0] == 5


# --- DynamiCtrl ---------------------------------------------------------------------------


def test_dynamictrl_frame_count_is_the_nearest_bucket_first_wins_ties() -> None:
    assert dynamictrl_frame_count(500, 37, [37]) == 37
    assert dynamictrl_frame_count(40, 49, [16, 24, 32, 48]) == 32  # 32 and 48 both 8 away
    assert dynamictrl_frame_count(100, 49, [49]) == 49
    assert dynamictrl_frame_count(20, 49, [16, 24, 32, 48, 64, 80]) == 16  # 16 and 24 both 4 away


def test_dynamictrl_seed_clip_is_37_consecutive_frames_from_1_to_30() -> None:
    rng = np.random.default_rng(5)
    starts = []
    for _ in range(3000):
        indices = dynamictrl_frame_indices(200, 37, [37], rng)
        assert len(indices) == 37 and set(np.diff(indices)) == {1}
        starts.append(indices[0])
    np.testing.assert_array_equal(np.unique(starts), np.arange(1, 31))


def test_dynamictrl_short_video_draws_only_starts_that_fit() -> None:
    rng = ScriptedRng("high")
    indices = dynamictrl_frame_indices(45, 37, [37], rng)
    assert rng.calls == [(1, 8)]  # the original draws 1..30 and crashes past 8
    assert indices[-1] == 44
    np.testing.assert_array_equal(dynamictrl_frame_indices(37, 37, [37], ScriptedRng()), np.arange(37))


def test_dynamictrl_video_shorter_than_the_bucket_is_reported() -> None:
    with pytest.raises(TooFewFrames, match=r"30 frames.*37 consecutive"):
        dynamictrl_frame_indices(30, 37, [37], np.random.default_rng(0))


# --- ControlNeXt --------------------------------------------------------------------------


def test_controlnext_seed_clip_every_third_frame_reference_anywhere() -> None:
    # seed 003: --sample_n_frames 21 --interval_frame 3. 100 frames: interval min(3, 100 // 21 = 4) = 3,
    # segment 63, start in [0, 37], reference in [0, 99].
    rng = ScriptedRng("high")
    clip = controlnext_frame_indices(100, 21, 3, rng)
    assert rng.calls == [(0, 37), (0, 99)]  # start first, then the reference, as the original
    np.testing.assert_array_equal(clip.window, np.arange(37, 100, 3))
    assert clip.reference == 99
    assert clip.target[0] == 99 and (clip.target[1:] == clip.window[1:]).all()


def test_controlnext_interval_shrinks_for_short_videos() -> None:
    rng = ScriptedRng("high")
    clip = controlnext_frame_indices(50, 21, 3, rng)  # interval min(3, 2) = 2, segment 42
    assert rng.calls == [(0, 8), (0, 49)]
    assert set(np.diff(clip.window)) == {2} and clip.window[-1] == 48


def test_controlnext_nonpositive_interval_draws_2_to_7() -> None:
    rng = ScriptedRng("low")
    clip = controlnext_frame_indices(1000, 14, 0, rng)
    assert rng.calls[0] == (2, 7)
    assert set(np.diff(clip.window)) == {2}


def test_controlnext_reference_is_uniform_over_the_video() -> None:
    rng = np.random.default_rng(11)
    refs = np.array([controlnext_frame_indices(60, 14, 2, rng).reference for _ in range(6000)])
    assert refs.min() == 0 and refs.max() == 59
    assert np.bincount(refs, minlength=60).min() > 60  # 100 expected each


def test_controlnext_video_shorter_than_the_clip_is_reported() -> None:
    with pytest.raises(TooFewFrames, match=r"20 frames.*--sample_n_frames 21"):
        controlnext_frame_indices(20, 21, 3, np.random.default_rng(0))


# --- video_repeat -------------------------------------------------------------------------


def test_repeat_puts_images_first_then_videos_repeated() -> None:
    kinds = ["video", "image", "video", "other"]
    np.testing.assert_array_equal(repeat_indices(kinds, 2), [1, 3, 0, 2, 0, 2])
    np.testing.assert_array_equal(repeat_indices(kinds, 1), [1, 3, 0, 2])
    np.testing.assert_array_equal(repeat_indices(kinds, 0), [0, 1, 2, 3])
    np.testing.assert_array_equal(repeat_indices(np.array([True, False]), 3), [1, 0, 0, 0])


def test_repeat_handles_a_million_records_fast() -> None:
    kinds = np.where(np.arange(1_000_000) % 3 == 0, "image", "video")
    began = time.perf_counter()
    out = repeat_indices(kinds, 4)
    assert time.perf_counter() - began < 2.0
    assert len(out) == 333_334 + 4 * 666_666
    assert out.dtype == np.int64


def test_repeat_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        repeat_indices(["video"], -1)


# --- control frames -----------------------------------------------------------------------


def test_control_with_matching_frames_reads_the_same_indices() -> None:
    target = np.array([3, 7, 11])
    np.testing.assert_array_equal(
        control_frame_indices(target, frames=20, control_frames=20, fps=30, control_fps=30), target
    )


def test_control_mismatch_is_an_error_that_names_the_fix() -> None:
    with pytest.raises(ControlFrameMismatch) as caught:
        control_frame_indices([0, 1], frames=53, control_frames=20)
    assert "20 frames" in str(caught.value) and "53" in str(caught.value)
    assert "--control_frame_policy resample" in str(caught.value)


def test_control_resample_maps_by_time_and_clamps() -> None:
    # target 30 fps, control 15 fps: t = i / 30, control = round_half_up(t * 15)
    mapped = control_frame_indices(
        np.arange(8), frames=8, control_frames=3, fps=30, control_fps=15, policy="resample"
    )
    np.testing.assert_array_equal(mapped, [0, 1, 1, 2, 2, 2, 2, 2])  # 3 frames: clamped at 2
    # no fps known: same duration assumed
    mapped = control_frame_indices([0, 10, 19], frames=20, control_frames=40, policy="resample")
    np.testing.assert_array_equal(mapped, [0, 20, 38])


def test_python_randint_is_inclusive_like_integers_with_endpoint() -> None:
    # The mapping the module docstring states: random.randint(a, b) covers b.
    assert {random.Random(s).randint(0, 1) for s in range(50)} == {0, 1}
    assert set(np.random.default_rng(0).integers(0, 1, size=200, endpoint=True)) == {0, 1}


def test_control_indices_treats_zero_fps_as_unknown() -> None:
    np.testing.assert_array_equal(
        control_indices([0, 5, 9], fps=0.0, control_fps=0.0, control_frames=5, frames=10), [0, 3, 4]
    )
    with pytest.raises(ValueError, match="frame count"):
        control_indices([0], fps=0.0, control_fps=24.0, control_frames=5)


def test_control_indices_by_real_times_pick_the_control_frame_shown_at_that_moment() -> None:
    # A variable-rate target (frames at 0, 40, 80, 100, 120, 300 ms) and a 50 fps control: by the
    # average rate (6 frames over 0.34 s) frame 5 would land 6 control frames early.
    times = np.array([0, 40, 80, 100, 120, 300]) / 1000
    control_times = np.arange(16) / 50
    np.testing.assert_array_equal(
        control_indices(range(6), fps=6 / 0.34, control_fps=50, control_frames=16,
                        times=times, control_times=control_times),
        [0, 2, 4, 5, 6, 15],
    )
    # Constant rates give the half-up rule of the fps formula, ties included.
    np.testing.assert_array_equal(
        control_indices(range(10), fps=30, control_fps=15, control_frames=5,
                        times=np.arange(10) / 30, control_times=np.arange(5) / 15),
        control_indices(range(10), fps=30, control_fps=15, control_frames=5),
    )

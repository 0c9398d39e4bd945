"""Which source frames make which clip: resampling and cutting are pure functions of length and rate."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from vidctrl.prepare.clips import ClipSettings, plan_clips, resample_indices


def test_halving_the_frame_rate_takes_every_other_frame() -> None:
    np.testing.assert_array_equal(resample_indices(10, 30, 15), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(
        resample_indices(11, 30, 15), [0, 2, 4, 6, 8, 10]
    )  # same duration: 6 frames


def test_raising_the_frame_rate_repeats_the_frame_shown_at_each_instant() -> None:
    np.testing.assert_array_equal(resample_indices(4, 24, 30), [0, 0, 1, 2, 3])
    ntsc = resample_indices(300, Fraction(30000, 1001), 30)
    # 300 frames at 29.97 fps last 10.01 s: 301 frames at 30 fps, one source frame shown twice
    assert len(ntsc) == 301 and ntsc[-1] == 299 and (np.diff(ntsc) == 0).sum() == 1


def test_whole_video_is_one_clip_named_after_it() -> None:
    (plan,) = plan_clips("dance", 49, 24.0, ClipSettings())
    assert plan.name == "dance" and plan.frames == 49 and plan.fps == 24
    assert plan.is_whole(49, Fraction(24))
    assert plan_clips("short", 9, 24.0, ClipSettings(min_frames=10)) == []


def test_cutting_makes_consecutive_clips_and_drops_a_short_tail() -> None:
    plans = plan_clips("walk", 50, 30.0, ClipSettings(fps=15, min_frames=5, max_frames=10))
    # 50 frames at 30 fps -> 25 at 15 fps -> 10 + 10 + 5
    assert [p.name for p in plans] == ["walk_clip000", "walk_clip001", "walk_clip002"]
    assert [p.frames for p in plans] == [10, 10, 5]
    np.testing.assert_array_equal(plans[1].source_indices, np.arange(20, 40, 2))
    assert not plans[0].is_whole(50, Fraction(30))
    assert len(plan_clips("walk", 50, 30.0, ClipSettings(fps=15, min_frames=6, max_frames=10))) == 2


@pytest.mark.parametrize("settings", [{"fps": 0}, {"min_frames": 0}, {"min_frames": 10, "max_frames": 5}])
def test_impossible_clip_settings_are_refused(settings: dict) -> None:
    with pytest.raises(ValueError):
        ClipSettings(**settings)

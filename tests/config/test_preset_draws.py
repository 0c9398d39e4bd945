"""Each preset draws clips and batch sizes as its own original does today (docs/data-semantics.md
names the repository, commit and file of every default)."""

from __future__ import annotations

import pytest

from vidctrl.config.train import parse_train_config


@pytest.mark.parametrize("preset", ["cogvideox-fun-inp", "cogvideox-fun-control"])
def test_cogvideox_presets_draw_sizes_with_cogvideox_funs_own_probabilities(preset: str) -> None:
    # VideoX-Fun scripts/cogvideox_fun/train_control.py: no downscale with p 0.75, token sizes uniform
    data = parse_train_config(["--preset", preset]).data
    assert (data.downsample_first_prob, data.size_weighting) == (0.75, "uniform")
    assert (data.video_length_drop_start, data.video_length_drop_end) == (0.0, 1.0)


@pytest.mark.parametrize("preset", ["wan2.1-fun-control-v1.0", "wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera"])
def test_wan_presets_follow_videox_funs_current_dataset_and_collate(preset: str) -> None:
    # ImageVideoControlDataset drops nothing since 3403651 (2026-04-16); Wan's collate: 0.90 / closest
    data = parse_train_config(["--preset", preset]).data
    assert (data.video_length_drop_start, data.video_length_drop_end) == (0.0, 1.0)
    assert (data.downsample_first_prob, data.size_weighting) == (0.9, "closest")


def test_a_flag_still_wins_over_the_presets_draws() -> None:
    data = parse_train_config(["--preset", "cogvideox-fun-inp", "--downsample_first_prob", "0.5",
                               "--size_weighting", "closest", "--video_length_drop_start", "0.1"]).data
    assert (data.downsample_first_prob, data.size_weighting, data.video_length_drop_start) == (0.5, "closest", 0.1)

"""Tiny stand-ins for the preparation models and a folder of raw sample videos, built once per run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vidctrl.data.synthetic import make_sample_dataset
from vidctrl.prepare.tiny import tiny_dwpose, tiny_qwen2_vl


@pytest.fixture(scope="session")
def pose_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dwpose(tmp_path_factory.mktemp("dwpose"))


@pytest.fixture(scope="session")
def caption_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"))


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample dataset (videos with their known keypoints), short clips."""
    root = tmp_path_factory.mktemp("sample")
    make_sample_dataset(root, num_videos=3, num_images=0, frames=(9, 13, 11), fps=(8, 12, 16))
    return root


@pytest.fixture(scope="session")
def raw_videos(tmp_path_factory: pytest.TempPathFactory, sample_videos: Path) -> Path:
    """A folder of raw videos as a user has it: one in a subfolder."""
    raw = tmp_path_factory.mktemp("raw")
    shutil.copy(sample_videos / "videos" / "video_000.mp4", raw / "video_000.mp4")
    (raw / "takes").mkdir()
    shutil.copy(sample_videos / "videos" / "video_001.mp4", raw / "takes" / "video_001.mp4")
    shutil.copy(sample_videos / "videos" / "video_002.mp4", raw / "video_002.mp4")
    return raw

"""Frames read for `data prepare` are the displayed ones: rotation metadata applied."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from vidctrl.prepare.media import iter_frames


def test_prepare_reads_a_rotated_phone_video_upright(tmp_path: Path) -> None:
    blocks = np.random.default_rng(0).integers(0, 256, (4, 4, 6, 3), dtype=np.uint8)
    stored = blocks.repeat(8, axis=1).repeat(8, axis=2)  # 4 frames of 32x48, in 8-pixel blocks
    path = tmp_path / "phone.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(-90)  # displayed turned a quarter clockwise, as iPhones store portrait
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    read = np.stack(list(iter_frames(path, 4)))
    assert read.shape == (4, 48, 32, 3)
    assert np.abs(read.astype(int) - np.rot90(stored, -1, axes=(1, 2))).mean() < 10


@pytest.mark.slow
def test_prepare_renders_the_pose_of_a_rotated_video_at_its_displayed_size(
    tmp_path: Path, pose_model_dir: Path, sample_videos: Path
) -> None:
    from vidctrl.cli import main
    from vidctrl.data.video import probe, read_frames

    source = sample_videos / "videos" / "video_000.mp4"
    stored = read_frames(source, np.arange(probe(source).frames))
    raw = tmp_path / "raw"
    raw.mkdir()
    with av.open(str(raw / "phone.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width = stored.shape[2], stored.shape[1]  # stored sideways
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(-90)  # turned back upright on display
        for frame in np.rot90(stored, 1, axes=(1, 2)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    code = main(["data", "prepare", "--videos", str(raw), "--out", str(out), "--pose_model_dir", str(pose_model_dir),
                 "--caption", "A person.", "--threads", "1", "--quiet"])
    assert code == 0
    (entry,) = json.loads((out / "metadata.json").read_text())
    target, pose = probe(out / entry["file_path"]), probe(out / entry["control_file_path"])
    assert (target.width, target.height) == (pose.width, pose.height) == (stored.shape[2], stored.shape[1])
    upright = read_frames(out / entry["file_path"], [0])[0]
    assert np.abs(upright.astype(int) - stored[0]).mean() < 10  # the person stands as in the source

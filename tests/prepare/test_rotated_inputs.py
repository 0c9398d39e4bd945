"""Frames read for `data prepare` are the displayed ones: rotation metadata applied."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

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

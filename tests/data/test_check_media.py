"""`vidctrl data check` judges a pair by what is displayed: rotation metadata and real timestamps."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidctrl.cli import main
from vidctrl.data.video import write_video

HEIGHT, WIDTH = 32, 48


def frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
    return [np.full((height, width, 3), 20 * i % 255, dtype=np.uint8) for i in range(count)]


def write_rotated(path: Path, stored: list[np.ndarray], degrees: int) -> None:
    """A video stored as `stored` whose display matrix turns it `degrees` counter-clockwise (a phone's)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def check(capsys: pytest.CaptureFixture[str], root: Path, pairs: list[tuple[str, str]], *extra: str) -> dict:
    entries = [{"file_path": m, "control_file_path": c, "text": "a clip", "type": "video"} for m, c in pairs]
    (root / "metadata.json").write_text(json.dumps(entries))
    main(["data", "check", "--train_data_meta", str(root / "metadata.json"), "--train_data_dir", str(root),
          "--video_sample_n_frames", "5", "--video_sample_stride", "1", "--json", "--workers", "1", *extra])
    return json.loads(capsys.readouterr().out)


def codes(report: dict, severity: str) -> set[str]:
    return {p["code"] for p in report["problems"] if p["severity"] == severity}


def test_check_compares_a_rotated_target_with_its_control_as_displayed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_rotated(tmp_path / "phone.mp4", frames(9), 90)  # stored landscape, displayed portrait
    write_video(tmp_path / "phone_pose.mp4", frames(9, WIDTH, HEIGHT), fps=8)  # rendered upright
    write_video(tmp_path / "sideways_pose.mp4", frames(9), fps=8)  # rendered ignoring the rotation
    report = check(capsys, tmp_path, [("phone.mp4", "phone_pose.mp4"), ("phone.mp4", "sideways_pose.mp4")])
    by_sample: dict[int, set[str]] = {}
    for problem in report["problems"]:
        by_sample.setdefault(problem["sample"], set()).add(f'{problem["severity"]}:{problem["code"]}')
    assert by_sample[0] == {"warning:control_rotation"}
    assert {"warning:control_rotation", "error:control_aspect"} <= by_sample[1]
    (message,) = {p["message"] for p in report["problems"] if p["sample"] == 0}
    assert "90°" in message and "0°" in message

"""`vidctrl data check` judges a pair by what is displayed: rotation metadata and real timestamps."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidctrl.cli import main
from vidctrl.data.config import DataConfig
from vidctrl.data.loader import build_loader
from vidctrl.data.video import probe, write_video

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


# A phone's variable frame rate: 40, 20 and 100 ms between frames (17 frames over 0.78 s)
PHONE_MS = [0, 40, 80, 100, 120, 160, 200, 300, 340, 380, 400, 440, 540, 580, 600, 700, 780]


def grey_frames(count: int, step: int) -> list[np.ndarray]:
    """Frame i is a flat grey of step * i: which frame a decoder returned is read off its value."""
    return [np.full((HEIGHT, WIDTH, 3), step * i, dtype=np.uint8) for i in range(count)]


def write_variable_rate(path: Path, stored: list[np.ndarray], times_ms: list[int]) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, pts in zip(stored, times_ms, strict=True):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
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


@pytest.fixture(scope="module")
def phone_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A variable-frame-rate target; a control rendered frame by frame at 25 fps; one rendered at 50 fps."""
    root = tmp_path_factory.mktemp("vfr")
    write_variable_rate(root / "phone.mp4", grey_frames(len(PHONE_MS), 12), PHONE_MS)
    write_video(root / "pose_per_frame.mp4", grey_frames(len(PHONE_MS), 12), fps=25)
    write_video(root / "pose_50fps.mp4", grey_frames(40, 6), fps=50)  # frame k at k * 20 ms
    return root


def test_variable_rate_target_with_a_same_length_control_is_a_frame_aligned_pair(
    capsys: pytest.CaptureFixture[str], phone_pair: Path
) -> None:
    assert probe(phone_pair / "phone.mp4").variable_rate
    assert not probe(phone_pair / "pose_per_frame.mp4").variable_rate
    report = check(capsys, phone_pair, [("phone.mp4", "pose_per_frame.mp4")])
    assert codes(report, "error") == set() and "control_fps" not in codes(report, "warning")
    batch = next(iter(build_loader(loader_config(phone_pair))))
    indices = batch["frame_indices"][0].numpy()
    greys = batch["control"][0].float().mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(greys, 12 * indices, atol=3)  # control frame i with target frame i


def test_resample_places_control_frames_by_the_targets_real_timestamps(
    capsys: pytest.CaptureFixture[str], phone_pair: Path
) -> None:
    report = check(capsys, phone_pair, [("phone.mp4", "pose_50fps.mp4")], "--control_frame_policy", "resample")
    assert codes(report, "error") == set()
    batch = next(iter(build_loader(loader_config(phone_pair, control_frame_policy="resample"))))
    indices = batch["frame_indices"][0].numpy()
    greys = batch["control"][0].float().mean(dim=(1, 2, 3)).numpy()
    at_same_moment = np.array(PHONE_MS)[indices] // 20  # the 50 fps control frame shown at each target frame
    np.testing.assert_allclose(greys, 6 * at_same_moment, atol=2)


def loader_config(root: Path, **overrides: object) -> DataConfig:
    values = dict(train_data_meta=root / "metadata.json", train_data_dir=root, video_sample_n_frames=13,
                  video_sample_stride=1, video_length_drop_start=0.0, video_length_drop_end=1.0,
                  video_sample_size=32, image_sample_size=32, token_sample_size=32, enable_bucket=False,
                  train_batch_size=1, seed=5)
    values.update(overrides)
    return DataConfig(**values)  # type: ignore[arg-type]


def test_training_reads_a_rotated_target_upright_like_its_control(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocks = np.random.default_rng(2).integers(0, 256, (9, WIDTH // 8, HEIGHT // 8, 3), dtype=np.uint8)
    displayed = list(blocks.repeat(8, axis=1).repeat(8, axis=2))  # portrait, 48 high and 32 wide
    write_rotated(tmp_path / "phone.mp4", [np.ascontiguousarray(np.rot90(f)) for f in displayed], -90)
    write_video(tmp_path / "pose.mp4", displayed, fps=8)
    report = check(capsys, tmp_path, [("phone.mp4", "pose.mp4")])
    assert codes(report, "error") == set()
    batch = next(iter(build_loader(loader_config(tmp_path, video_sample_n_frames=5))))
    pixels, control = batch["pixels"][0].float(), batch["control"][0].float()
    assert pixels.shape == control.shape
    assert (pixels - control).abs().mean() < 10  # the same picture, the same way up

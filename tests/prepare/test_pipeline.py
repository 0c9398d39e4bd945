"""`vidctrl data prepare` on the built-in sample videos with tiny models: every layout, checked and
loaded; pose videos frame for frame; resume after a kill; bad inputs said clearly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vidctrl.cli import main
from vidctrl.commands.data import source_flags
from vidctrl.data.config import DataConfig
from vidctrl.data.layouts.controlnext import load_frame_meta
from vidctrl.data.loader import build_loader
from vidctrl.data.pose import person_box, render_pose
from vidctrl.data.synthetic import FigureKeypoints, make_sample_dataset, meta_info_frames
from vidctrl.data.video import probe, read_frames
from vidctrl.prepare import PrepareError
from vidctrl.prepare.clips import ClipSettings
from vidctrl.prepare.config import PrepareConfig
from vidctrl.prepare.dwpose import FramePose
from vidctrl.prepare.pipeline import (
    STATE_DIR,
    PoseSettings,
    VideoJob,
    find_videos,
    output_name,
    prepare_dataset,
    process_video,
)

LAYOUT_FILES = {
    "videox": "metadata.json",
    "dynamictrl": "video.txt",
    "controlnext": "meta_info.json",
    "manifest": "manifest.jsonl",
}
CLIPS = ["takes__video_001", "video_000", "video_002"]


def settings(raw: Path, out: Path, pose_dir: Path, **overrides: object) -> PrepareConfig:
    values: dict[str, object] = dict(
        videos=raw, out=out, pose_model_dir=pose_dir, caption="A person moves.", threads=1, pose_batch_size=4
    )
    values.update(overrides)
    return PrepareConfig(**values)  # type: ignore[arg-type]


def data_flags(layout: str, out: Path) -> list[str]:
    return source_flags(layout, out / LAYOUT_FILES[layout], out)


def data_config(layout: str, out: Path) -> DataConfig:
    flags = data_flags(layout, out)
    values = {flags[i].lstrip("-"): Path(flags[i + 1]) for i in range(0, len(flags), 2)}
    return DataConfig(
        **values,
        video_sample_n_frames=5,
        video_sample_stride=1,
        video_sample_size=64,  # type: ignore[arg-type]
        image_sample_size=64,
        token_sample_size=64,
        train_batch_size=1,
        seed=0,
    )


def check(capsys: pytest.CaptureFixture[str], layout: str, out: Path) -> dict:
    capsys.readouterr()
    code = main(
        [
            "data",
            "check",
            *data_flags(layout, out),
            "--video_sample_n_frames",
            "5",
            "--video_sample_stride",
            "1",
            "--json",
            "--workers",
            "1",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["problems"]
    return report


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, raw_videos: Path, pose_model_dir: Path, caption_model_dir: Path
) -> Path:
    """The sample videos prepared once, in the VideoX-Fun layout, captioned by the tiny Qwen2-VL."""
    out = tmp_path_factory.mktemp("prepared")
    report = prepare_dataset(
        settings(
            raw_videos,
            out,
            pose_model_dir,
            caption=None,
            caption_model=caption_model_dir,
            caption_frames=2,
            caption_max_new_tokens=8,
            caption_device="cpu",
        ),
        progress=False,
    )
    assert report.ok and report.processed == 3 and report.reused == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["videox", "dynamictrl", "controlnext", "manifest"])
def test_each_layout_passes_check_and_the_loader_reads_it(
    capsys: pytest.CaptureFixture[str],
    prepared: Path,
    raw_videos: Path,
    pose_model_dir: Path,
    caption_model_dir: Path,
    layout: str,
) -> None:
    # Same settings as the first run: every clip and caption is reused, only the layout is written.
    report = prepare_dataset(
        settings(
            raw_videos,
            prepared,
            pose_model_dir,
            caption=None,
            caption_model=caption_model_dir,
            caption_frames=2,
            caption_max_new_tokens=8,
            caption_device="cpu",
            layout=layout,
        ),
        progress=False,
    )
    assert report.ok and report.processed == 0 and report.reused == 3
    assert report.layout_path == prepared / LAYOUT_FILES[layout]
    assert sorted(Path(r.media).stem for r in report.records) == CLIPS
    assert all(r.caption and "\n" not in r.caption for r in report.records)
    result = check(capsys, layout, prepared)
    assert result["summary"]["good_samples"] == 3
    batch = next(iter(build_loader(data_config(layout, prepared), hand_boxes=layout == "controlnext")))
    assert batch["pixels"].dtype == torch.uint8 and batch["control"].shape == batch["pixels"].shape
    assert batch["pixels"].shape[1] == 5
    if layout == "controlnext":
        assert batch["hand_boxes"].shape[:3] == (1, 5, 2)


def test_outputs_match_their_target_frame_for_frame(prepared: Path, raw_videos: Path) -> None:
    for name in CLIPS:
        target, pose = probe(prepared / "videos" / f"{name}.mp4"), probe(prepared / "poses" / f"{name}.mp4")
        assert (pose.frames, pose.width, pose.height) == (target.frames, target.width, target.height)
        assert pose.fps == pytest.approx(target.fps)
        meta = load_frame_meta(prepared / "meta_info" / f"{name}.json")
        with np.load(prepared / "keypoints" / f"{name}.npz") as kp:
            people = kp["people"]
            assert kp["body"].shape[:1] == (target.frames,) and tuple(kp["size"]) == (
                target.height,
                target.width,
            )
        assert len(meta) == target.frames
        assert all(
            len(f["hands_boxes"]) == len(f["hands_score"]) == 2 * people[t] for t, f in enumerate(meta)
        )
    # an mp4 that needs no re-encoding is the source, byte for byte
    assert (prepared / "videos" / "video_000.mp4").read_bytes() == (raw_videos / "video_000.mp4").read_bytes()


class _Oracle:
    """A pose estimator that knows the sample figure's true keypoints (frames recognised by content)."""

    def __init__(self, sample: Path, names: list[str]) -> None:
        self.truth: dict[bytes, FramePose] = {}
        for name in names:
            kp = FigureKeypoints.load(sample / "keypoints" / f"{name}.npz")
            frames = read_frames(sample / "videos" / f"{name}.mp4", range(len(kp)))
            for t, frame in enumerate(frames):
                box = person_box(kp.body[t], kp.hands[t], kp.face[t])
                self.truth[frame.tobytes()] = FramePose(
                    body=kp.body[t][None],
                    foot=np.zeros((1, 6, 3)),
                    face=kp.face[t][None],
                    hands=kp.hands[t][None],
                    boxes=np.array([[*box[0], *box[1]]]),
                )

    def __call__(self, frames: list[np.ndarray]) -> list[FramePose]:
        return [self.truth[np.ascontiguousarray(frame).tobytes()] for frame in frames]


def test_pose_videos_draw_the_known_keypoints_of_the_sample_figure(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample_videos: Path,
    raw_videos: Path,
    pose_model_dir: Path,
) -> None:
    """With an estimator that returns the figure's true keypoints, the prepared pose video is the
    sample's own skeleton video (drawn by `render_pose` from those keypoints), and the meta_info holds
    the figure's hand boxes and scores."""
    names = ["video_000", "video_001", "video_002"]
    monkeypatch.setattr("vidctrl.prepare.pipeline._estimator", lambda settings: _Oracle(sample_videos, names))
    out = tmp_path / "out"
    report = prepare_dataset(settings(raw_videos, out, pose_model_dir), progress=False)
    assert report.ok and report.processed == 3
    for name, clip in zip(names, ["video_000", "takes__video_001", "video_002"], strict=True):
        kp = FigureKeypoints.load(sample_videos / "keypoints" / f"{name}.npz")
        prepared = read_frames(out / "poses" / f"{clip}.mp4", range(len(kp)))
        drawn = np.stack(
            [
                render_pose(kp.body[t], kp.hands[t], kp.face[t], height=kp.height, width=kp.width)
                for t in range(len(kp))
            ]
        )
        own = read_frames(sample_videos / "poses" / f"{name}.mp4", range(len(kp)))
        # As close to the drawing as the sample's own pose video (both lose the same to 4:2:0 H.264).
        error, own_error = np.abs(prepared.astype(int) - drawn).mean(), np.abs(own.astype(int) - drawn).mean()
        assert error <= own_error + 0.25 and np.abs(prepared.astype(int) - own).mean() < 1
        meta = load_frame_meta(out / "meta_info" / f"{clip}.json")
        expected = meta_info_frames(kp)
        for ours, theirs in zip(meta, expected, strict=True):
            np.testing.assert_allclose(ours["hands_boxes"], theirs["hands_boxes"], atol=1e-6)
            np.testing.assert_allclose(ours["hands_score"], theirs["hands_score"], atol=1e-6)
            np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-6)
        with np.load(out / "keypoints" / f"{clip}.npz") as stored:
            np.testing.assert_allclose(stored["body"][:, 0], kp.body, atol=1e-6)


def test_frames_are_decoded_once_and_clips_cut_and_resampled(
    tmp_path: Path, raw_videos: Path, pose_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vidctrl.prepare import pipeline

    reported: list[tuple[str, int]] = []
    monkeypatch.setattr(pipeline, "_frame_progress", reported.append)  # what the progress bar is told
    # video_001: 13 frames at 12 fps -> 7 frames at 6 fps -> clips of 4 and 3
    pose = PoseSettings(
        str(pose_model_dir / "yolox_l.onnx"), str(pose_model_dir / "dw-ll_ucoco_384.onnx"), threads=1
    )
    job = VideoJob(
        source=str(raw_videos / "takes" / "video_001.mp4"),
        relative="takes/video_001.mp4",
        name="takes__video_001",
        out=str(tmp_path),
        clips=ClipSettings(fps=6, min_frames=3, max_frames=4),
        pose=pose,
    )
    result = process_video(job)
    assert result.error is None and result.frames_decoded == 13
    assert sum(n for kind, n in reported if kind == "total") == 13  # the bar counts frames
    assert sum(n for kind, n in reported if kind == "frames") == 13
    assert [c.name for c in result.clips] == ["takes__video_001_clip000", "takes__video_001_clip001"]
    for clip, frames in zip(result.clips, (4, 3), strict=True):
        for path in (clip.media, clip.control):
            info = probe(path)
            assert (info.frames, info.fps) == (frames, 6.0)
    source = read_frames(raw_videos / "takes" / "video_001.mp4", [8, 10, 12])
    cut = read_frames(result.clips[1].media, [0, 1, 2])  # source frames 8, 10, 12 re-encoded
    assert np.abs(cut.astype(int) - source).mean() < 3
    again = process_video(job)
    assert again.frames_decoded == 0 and all(c.reused for c in again.clips)


@pytest.mark.slow
def test_rerun_after_a_kill_resumes_and_leaves_no_half_written_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pose_model_dir: Path
) -> None:
    sample = tmp_path / "sample"
    make_sample_dataset(sample, num_videos=3, num_images=0, frames=(30,), fps=(8,))
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(sample / "videos", raw)
    command = [
        sys.executable,
        "-m",
        "vidctrl",
        "data",
        "prepare",
        "--videos",
        str(raw),
        "--out",
        str(out),
        "--pose_model_dir",
        str(pose_model_dir),
        "--caption",
        "A person moves.",
        "--threads",
        "1",
        "--pose_batch_size",
        "2",
        "--quiet",
    ]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    done = out / STATE_DIR / "done"
    deadline = time.monotonic() + 120
    try:
        while not (done.is_dir() and any(done.glob("*.json"))):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = sorted(p.stem for p in done.glob("*.json"))
    assert 1 <= len(finished) < 3, "the run should be killed half-way"
    # Whatever is visible under its real name is whole: it decodes to the end.
    for folder in ("videos", "poses"):
        for path in (out / folder).glob("[!.]*.mp4"):
            assert len(read_frames(path, [probe(path).frames - 1])) == 1
    stamps = {name: os.stat(out / "poses" / f"{name}.mp4").st_mtime_ns for name in finished}

    report = prepare_dataset(settings(raw, out, pose_model_dir), progress=False)
    assert report.ok and report.reused == len(finished) and report.processed == 3 - len(finished)
    assert {name: os.stat(out / "poses" / f"{name}.mp4").st_mtime_ns for name in finished} == stamps
    assert not [p for p in out.rglob(".*partial*")]
    check(capsys, "videox", out)


def test_unreadable_video_is_reported_and_the_others_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw_videos: Path, pose_model_dir: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(raw_videos / "video_000.mp4", raw / "good.mp4")
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    out = tmp_path / "out"
    code = main(
        [
            "data",
            "prepare",
            "--videos",
            str(raw),
            "--out",
            str(out),
            "--pose_model_dir",
            str(pose_model_dir),
            "--caption",
            "A person.",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "broken.mp4" in captured.err and "1 failed" in captured.out
    assert [json.loads(out.joinpath("metadata.json").read_text())[0]["file_path"]] == ["videos/good.mp4"]
    check(capsys, "videox", out)


def test_missing_models_and_captions_are_usage_errors_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw_videos: Path, pose_model_dir: Path
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "data",
            "prepare",
            "--videos",
            str(raw_videos),
            "--out",
            str(out),
            "--pose_model_dir",
            str(tmp_path),
            "--caption",
            "x",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "yolox_l.onnx" in err
        and "dw-ll_ucoco_384.onnx" in err
        and "huggingface.co/yzd-v/DWPose" in err
    )
    with pytest.raises(PrepareError, match="no caption source"):
        prepare_dataset(settings(raw_videos, out, pose_model_dir, caption=None), progress=False)
    captions = tmp_path / "captions.txt"
    captions.write_text(
        "video_000.mp4#####A person walks.\nvideo_002#####A person waves.\n", encoding="utf-8"
    )
    with pytest.raises(PrepareError, match=r"no caption for 1 videos: takes/video_001\.mp4"):
        prepare_dataset(
            settings(raw_videos, out, pose_model_dir, caption=None, caption_from=captions), progress=False
        )
    with pytest.raises(PrepareError, match=r"--caption_frames sets up the caption model"):
        prepare_dataset(settings(raw_videos, out, pose_model_dir, caption_frames=3), progress=False)
    with pytest.raises(PrepareError, match="several caption sources"):
        prepare_dataset(settings(raw_videos, out, pose_model_dir, caption_from=captions), progress=False)
    assert not out.exists()


def test_controlnext_data_needs_no_captions_and_other_settings_need_overwrite(
    tmp_path: Path, raw_videos: Path, pose_model_dir: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(raw_videos / "video_000.mp4", raw / "a.mp4")
    out = tmp_path / "out"
    report = prepare_dataset(
        settings(raw, out, pose_model_dir, caption=None, layout="controlnext", media="symlink"),
        progress=False,
    )
    assert report.ok and report.records[0].caption == "" and (out / "videos" / "a.mp4").is_symlink()
    with pytest.raises(PrepareError, match=r"other settings \(draw_face differ\).*--overwrite"):
        prepare_dataset(
            settings(
                raw, out, pose_model_dir, caption=None, layout="controlnext", media="symlink", draw_face=False
            ),
            progress=False,
        )
    report = prepare_dataset(
        settings(
            raw,
            out,
            pose_model_dir,
            caption=None,
            layout="controlnext",
            media="symlink",
            draw_face=False,
            overwrite=True,
        ),
        progress=False,
    )
    assert report.processed == 1 and report.reused == 0


@pytest.mark.slow
class RecordingBar:
    """Stands in for tqdm: what a progress bar was told."""

    def __init__(self, **options: object) -> None:
        self.options, self.total, self.n, self.postfix = options, int(options.get("total", 0)), 0, ""

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


RAW_FRAMES = 9 + 13 + 11  # the three raw sample videos (conftest.sample_videos)


def recording_bars(monkeypatch: pytest.MonkeyPatch) -> list[RecordingBar]:
    from vidctrl.prepare import pipeline

    bars: list[RecordingBar] = []
    monkeypatch.setattr(pipeline, "_bar", lambda enabled, **options: bars.append(RecordingBar(**options)) or bars[-1])
    return bars


def test_worker_processes_write_the_same_dataset(
    tmp_path: Path, prepared: Path, raw_videos: Path, pose_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = recording_bars(monkeypatch)
    out = tmp_path / "out"
    report = prepare_dataset(settings(raw_videos, out, pose_model_dir, workers=2), progress=True)
    assert report.ok and report.processed == 3
    (bar,) = [b for b in bars if b.options.get("desc") == "poses"]
    assert bar.n == bar.total == RAW_FRAMES  # frames decoded in the workers reach the bar
    for name in CLIPS:
        ours = json.loads((out / "meta_info" / f"{name}.json").read_text())
        single = json.loads((prepared / "meta_info" / f"{name}.json").read_text())
        assert ours == single


def test_videos_are_found_recursively_and_named_flat(raw_videos: Path) -> None:
    found = find_videos(raw_videos)
    assert [rel for _, rel in found] == ["takes/video_001.mp4", "video_000.mp4", "video_002.mp4"]
    assert output_name("takes/video_001.mp4") == "takes__video_001"


def test_symlink_loops_and_dangling_links_are_named_and_left_out_of_the_videos(
    tmp_path: Path, raw_videos: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(raw_videos / "video_000.mp4", raw / "good.mp4")
    (raw / "loop_a.mp4").symlink_to(raw / "loop_b.mp4")
    (raw / "loop_b.mp4").symlink_to(raw / "loop_a.mp4")
    (raw / "dangling.mp4").symlink_to(raw / "gone.mp4")
    unusable: list[tuple[str, str]] = []
    found = find_videos(raw, unusable=unusable)
    assert [rel for _, rel in found] == ["good.mp4"]
    reasons = dict(unusable)
    assert reasons[str(raw / "loop_a.mp4")] == "is a symlink loop (it links back to itself); skipped"
    assert reasons[str(raw / "loop_b.mp4")].startswith("is a symlink loop")
    assert "is a broken symlink" in reasons[str(raw / "dangling.mp4")]


def test_prepare_with_a_symlink_loop_keeps_the_other_videos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw_videos: Path, pose_model_dir: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(raw_videos / "video_000.mp4", raw / "good.mp4")
    (raw / "loop.mp4").symlink_to(raw / "loop.mp4")
    out = tmp_path / "out"
    code = main(["data", "prepare", "--videos", str(raw), "--out", str(out), "--pose_model_dir", str(pose_model_dir),
                 "--caption", "A person.", "--threads", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "loop.mp4" in captured.err and "symlink loop" in captured.err
    assert "Traceback" not in captured.err
    assert [e["file_path"] for e in json.loads(out.joinpath("metadata.json").read_text())] == ["videos/good.mp4"]

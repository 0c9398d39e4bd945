"""`vidctrl data check` on a dataset broken on purpose in every way the issue names."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidctrl.cli import main
from vidctrl.data.layouts import write_layout
from vidctrl.data.synthetic import make_sample_dataset
from vidctrl.data.video import write_video


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    records = make_sample_dataset(root, num_videos=7, num_images=2, seed=3)
    write_layout(records, root, "videox")
    return root


def run_check(capsys: pytest.CaptureFixture[str], meta: Path, root: Path, *extra: str) -> tuple[int, dict]:
    code = main(["data", "check", "--train_data_meta", str(meta), "--train_data_dir", str(root),
                 "--video_sample_n_frames", "9", "--video_sample_stride", "1", "--json", "--workers", "1", *extra])
    return code, json.loads(capsys.readouterr().out)


def frames(n: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    return [np.full((h, w, 3), 10 * i % 255, dtype=np.uint8) for i in range(n)]


def test_clean_sample_dataset_passes(capsys: pytest.CaptureFixture[str], clean_dataset: Path) -> None:
    code, report = run_check(capsys, clean_dataset / "metadata.json", clean_dataset)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert errors == [] and code == 0 and report["ok"]


def test_every_broken_sample_is_reported_with_its_file(
    capsys: pytest.CaptureFixture[str], clean_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(clean_dataset, root, symlinks=True)
    entries = json.loads((root / "metadata.json").read_text())
    videos = [i for i, e in enumerate(entries) if e["type"] == "video"]
    images = [i for i, e in enumerate(entries) if e["type"] == "image"]
    path = lambda i, key="file_path": root / entries[i][key]  # noqa: E731

    expected: dict[int, str] = {}
    path(videos[0]).unlink()
    expected[videos[0]] = "missing_file"
    path(videos[1]).write_bytes(b"this is not a video" * 100)
    expected[videos[1]] = "unreadable"
    data = path(videos[2]).read_bytes()
    path(videos[2]).write_bytes(data[: len(data) // 2])
    expected[videos[2]] = "truncated"
    path(videos[3]).write_bytes(b"")
    expected[videos[3]] = "empty"
    info = json.loads(json.dumps(entries[videos[4]]))
    write_video(path(videos[4], "control_file_path"), frames(5, info.get("height", 64), info.get("width", 64)), fps=8)
    expected[videos[4]] = "control_frames"
    entries[videos[5]]["type"] = "image"
    expected[videos[5]] = "type_mismatch"
    entries[images[0]]["text"] = 123
    expected[images[0]] = "caption_not_text"
    entries[images[1]]["text"] = ""
    expected[images[1]] = "caption_missing"

    # a too-short video, a control of another aspect, a control at another fps, and a duplicate
    write_video(root / "short.mp4", frames(1), fps=8)  # stride 2 over 1 frame gives no clip at all
    write_video(root / "short_pose.mp4", frames(1), fps=8)
    write_video(root / "wide.mp4", frames(12), fps=8)
    write_video(root / "wide_pose.mp4", frames(12, 64, 128), fps=8)
    write_video(root / "slow.mp4", frames(12), fps=8)
    write_video(root / "slow_pose.mp4", frames(12), fps=12)
    extra = [
        ("short.mp4", "short_pose.mp4", "too_few_frames"),
        ("wide.mp4", "wide_pose.mp4", "control_aspect"),
        ("slow.mp4", "slow_pose.mp4", "control_fps"),
    ]
    for media, control, code in extra:
        expected[len(entries)] = code
        entries.append({"file_path": media, "control_file_path": control, "text": "a clip", "type": "video"})
    expected[len(entries)] = "duplicate"
    entries.append(dict(entries[videos[6]]))
    (root / "metadata.json").write_text(json.dumps(entries))

    code, report = run_check(capsys, root / "metadata.json", root, "--video_length_drop_start", "0",
                             "--video_length_drop_end", "1", "--video_sample_stride", "2",
                             "--require_captions", "true")
    assert code == 1 and not report["ok"]
    found: dict[int, set[str]] = {}
    for problem in report["problems"]:
        if problem["severity"] == "error":
            found.setdefault(problem["sample"], set()).add(problem["code"])
    for sample, code_name in expected.items():
        assert code_name in found.get(sample, set()), (sample, code_name, found.get(sample))
    bad_files = {p["file"] for p in report["problems"] if p["sample"] == videos[0]}
    assert str(path(videos[0])) in bad_files
    assert report["summary"]["bad_samples"] == len(found)


def test_text_report_names_file_and_fix(capsys: pytest.CaptureFixture[str], clean_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    shutil.copytree(clean_dataset, root, symlinks=True)
    entries = json.loads((root / "metadata.json").read_text())
    (root / entries[0]["file_path"]).unlink()
    code = main(["data", "check", "--train_data_meta", str(root / "metadata.json"), "--train_data_dir", str(root),
                 "--workers", "1", "--video_sample_n_frames", "9", "--video_sample_stride", "1"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(line for line in out.splitlines() if "missing_file" in line or "does not exist" in line)
    assert line.startswith("error: sample 0") and entries[0]["file_path"] in line and "fix the path" in line


def test_malformed_metadata_names_file_line_and_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text('[\n  {"file_path": "a.mp4", "text": "x", "type": "video"},\n  {"file_path": "b.mp4" "text": 1}\n]\n')
    code, report = run_check(capsys, meta, tmp_path)
    assert code == 1
    (problem,) = [p for p in report["problems"] if p["code"] == "malformed_metadata"]
    assert problem["file"] == str(meta) and "line 3" in problem["where"] and "column" in problem["where"]


def test_check_runs_samples_in_parallel_processes(capsys: pytest.CaptureFixture[str], clean_dataset: Path) -> None:
    code = main(["data", "check", "--train_data_meta", str(clean_dataset / "metadata.json"), "--train_data_dir",
                 str(clean_dataset), "--workers", "2", "--video_sample_n_frames", "9", "--video_sample_stride", "1"])
    assert code == 0 and capsys.readouterr().out.strip().endswith("ok")


def test_check_opens_each_video_once(clean_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header probe and the end-of-file check share one open container per file."""
    import av

    from vidctrl.data.check import InspectSettings, inspect_record
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.layouts import read_layout

    records = read_layout("videox", clean_dataset / "metadata.json", root=clean_dataset).records
    video = next(r for r in records if r.kind == "video")
    opened: list[str] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(str(a[0])) or real_open(*a, **k))
    inspection = inspect_record(0, video, InspectSettings(rules=ClipRules.permissive(), deep=True))
    assert inspection.problems == [] and inspection.target is not None and inspection.control is not None
    assert sorted(opened) == sorted([video.media, video.control])


def test_a_symlink_loop_is_named_as_one_not_as_a_missing_file(
    capsys: pytest.CaptureFixture[str], clean_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "looped"
    shutil.copytree(clean_dataset, root, symlinks=True)
    entries = json.loads((root / "metadata.json").read_text())
    looped, dangling = root / entries[0]["file_path"], root / entries[1]["file_path"]
    looped.unlink()
    partner = looped.with_name("partner.mp4")
    looped.symlink_to(partner)
    partner.symlink_to(looped)
    dangling.unlink()
    dangling.symlink_to(root / "gone.mp4")
    code, report = run_check(capsys, root / "metadata.json", root)
    messages = {p["sample"]: p["message"] for p in report["problems"] if p["code"] == "missing_file"}
    assert code == 1
    assert messages[0].endswith("is a symlink loop (it links back to itself)")
    assert "is a broken symlink" in messages[1] and "gone.mp4" in messages[1]

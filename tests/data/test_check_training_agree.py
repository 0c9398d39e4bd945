"""`vidctrl data check` and training agree: what check passes, training trains; what it fails,
strict training stops on (naming the file) and lenient training leaves out.

Each bad kind is generated once on a copy of a small clean dataset; check (the CLI, `--json`) and
the training data path (`load_manifest`, in both `--bad_sample_policy` modes) judge the same copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from vidctrl.cli import main
from vidctrl.data.config import DataConfig
from vidctrl.data.layouts import write_layout
from vidctrl.data.loader import load_manifest
from vidctrl.data.records import DataError
from vidctrl.data.synthetic import make_sample_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("agree")
    write_layout(make_sample_dataset(root, num_videos=3, num_images=1, seed=3), root, "videox")
    return root


def entries(root: Path) -> list[dict]:
    return json.loads((root / "metadata.json").read_text())


def save(root: Path, values: list[dict]) -> None:
    (root / "metadata.json").write_text(json.dumps(values))


def first_video(values: list[dict]) -> dict:
    return next(e for e in values if e["type"] == "video")


def duplicate(root: Path) -> int:
    values = entries(root)
    save(root, [*values, dict(first_video(values))])
    return len(values)


def declared_size(root: Path) -> int:
    values = entries(root)
    first_video(values)["width"] += 16
    save(root, values)
    return values.index(first_video(values))


def video_declared_image(root: Path) -> int:
    values = entries(root)
    video = first_video(values)
    video["type"] = "image"
    save(root, values)
    return values.index(video)


def caption_not_text(root: Path) -> int:
    values = entries(root)
    values[0]["text"] = 123
    save(root, values)
    return 0


def malformed_hand_boxes(root: Path) -> int:
    values = entries(root)
    meta = root / first_video(values)["meta_info"]
    frames = json.loads(meta.read_text())
    frames[2]["hands_boxes"] = [[0.1, 0.2]]  # a corner, not a box
    frames[3]["hands_score"] = "high"
    meta.unlink()  # the copy shares its files with the clean dataset: replace, do not write through
    meta.write_text(json.dumps(frames))
    return values.index(first_video(values))


def bom_in_meta_info(root: Path) -> None:
    values = entries(root)
    meta = root / first_video(values)["meta_info"]
    text = meta.read_text()
    meta.unlink()
    meta.write_bytes(b"\xef\xbb\xbf" + text.encode())


def bom_in_metadata(root: Path) -> None:
    text = (root / "metadata.json").read_text()
    (root / "metadata.json").write_bytes(b"\xef\xbb\xbf" + text.encode())


def missing_caption(root: Path) -> None:
    values = entries(root)
    values[0]["text"] = ""
    save(root, values)


def copy_of(clean: Path, tmp_path: Path, damage: Callable[[Path], object]) -> tuple[Path, object]:
    root = tmp_path / "data"
    shutil.copytree(clean, root, symlinks=True)
    return root, damage(root)


def data_config(root: Path, **overrides: object) -> DataConfig:
    values = dict(train_data_meta=root / "metadata.json", train_data_dir=root, video_sample_n_frames=9,
                  video_sample_stride=1, video_sample_size=64, image_sample_size=64, token_sample_size=64)
    values.update(overrides)
    return DataConfig(**values)  # type: ignore[arg-type]


def check(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, dict]:
    code = main(["data", "check", "--train_data_meta", str(root / "metadata.json"), "--train_data_dir", str(root),
                 "--video_sample_n_frames", "9", "--video_sample_stride", "1", "--json", "--workers", "1", *extra])
    return code, json.loads(capsys.readouterr().out)


def check_bad_samples(report: dict) -> set[int]:
    return {p["sample"] for p in report["problems"] if p["severity"] == "error" and p["sample"] is not None}


@pytest.mark.parametrize(
    "damage, code",
    [
        (duplicate, "duplicate"),
        (declared_size, "metadata_mismatch"),
        (video_declared_image, "type_mismatch"),
        (caption_not_text, "caption_not_text"),
    ],
)
def test_a_sample_check_fails_is_skipped_by_lenient_and_stops_strict_training(
    capsys: pytest.CaptureFixture[str], clean: Path, tmp_path: Path, damage: Callable[[Path], int], code: str
) -> None:
    root, bad = copy_of(clean, tmp_path, damage)
    status, report = check(capsys, root)
    assert status == 1 and check_bad_samples(report) == {bad}
    assert code in {p["code"] for p in report["problems"] if p["sample"] == bad}

    lenient = load_manifest(data_config(root), workers=1)
    assert [p.sample for p in lenient.excluded] == [bad]
    assert lenient.excluded[0].code == code
    assert len(lenient.manifest) == report["summary"]["good_samples"]

    with pytest.raises(DataError) as stopped:
        load_manifest(data_config(root, bad_sample_policy="strict"), workers=1)
    assert stopped.value.problem.sample == bad and stopped.value.problem.code == code


@pytest.mark.parametrize("damage", [bom_in_meta_info, bom_in_metadata, missing_caption, malformed_hand_boxes])
def test_what_check_passes_both_training_modes_train(
    capsys: pytest.CaptureFixture[str], clean: Path, tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    """A BOM is read (utf-8-sig) everywhere; a missing caption trains as an empty one (check warns);
    hand boxes are not read by a preset that does not weigh hands, so bad ones cannot stop it."""
    root, _ = copy_of(clean, tmp_path, damage)
    hand_boxes = damage is bom_in_meta_info
    status, report = check(capsys, root, *(["--hand_boxes", "true"] if hand_boxes else []))
    assert status == 0 and report["ok"], report["problems"]
    for policy in ("lenient", "strict"):
        loaded = load_manifest(data_config(root, bad_sample_policy=policy), workers=1, hand_boxes=hand_boxes)
        assert loaded.excluded == [] and len(loaded.manifest) == report["summary"]["samples"]


def test_malformed_hand_boxes_fail_both_for_a_preset_that_weighs_hands_naming_file_and_frame(
    capsys: pytest.CaptureFixture[str], clean: Path, tmp_path: Path
) -> None:
    root, bad = copy_of(clean, tmp_path, malformed_hand_boxes)
    meta = str(root / first_video(entries(root))["meta_info"])
    status, report = check(capsys, root, "--hand_boxes", "true")
    assert status == 1 and check_bad_samples(report) == {bad}
    (problem,) = [p for p in report["problems"] if p["sample"] == bad]
    assert problem["file"] == meta and "frame 2" in problem["message"]

    lenient = load_manifest(data_config(root), workers=1, hand_boxes=True)
    assert [p.sample for p in lenient.excluded] == [bad]
    with pytest.raises(DataError) as stopped:
        load_manifest(data_config(root, bad_sample_policy="strict"), workers=1, hand_boxes=True)
    assert meta in str(stopped.value) and "frame 2" in str(stopped.value)


def test_an_empty_metadata_list_is_an_error_for_check_and_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "metadata.json").write_text("[]\n")
    status, report = check(capsys, tmp_path)
    assert status == 1
    (problem,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert problem["code"] == "no_samples" and problem["file"] == str(tmp_path / "metadata.json")
    for policy in ("lenient", "strict"):
        with pytest.raises(DataError, match=r"metadata\.json: the dataset holds no samples"):
            load_manifest(data_config(tmp_path, bad_sample_policy=policy), workers=1)

import json
from pathlib import Path

import numpy as np
import pytest

from vidctrl.data.manifest import Manifest, read_manifest_records, write_manifest
from vidctrl.data.records import DataError, Record


def records(root: Path) -> list[Record]:
    return [
        Record(media=str(root / "videos/a.mp4"), control=str(root / "poses/a.mp4"), caption="a dancer",
               frames=49, fps=24.0, width=64, height=96, control_frames=49, control_fps=24.0,
               control_width=64, control_height=96, meta_info=str(root / "meta_info/a.json")),
        Record(media=str(root / "images/b.png"), kind="image", control=str(root / "image_poses/b.png"),
               caption="ünïcode ✓", extra={"source_id": 7, "tags": ["x"]}),
        Record(media="/elsewhere/c.mp4", caption="outside", camera="/elsewhere/c.txt"),
    ]


def test_manifest_round_trips_records_and_keeps_extra_keys(tmp_path: Path) -> None:
    path = write_manifest(records(tmp_path), tmp_path / "manifest.jsonl")
    back = Manifest.read(path)
    assert [r.to_dict() for r in back.records()] == [r.to_dict() for r in records(tmp_path)]
    assert [r.to_dict() for r in read_manifest_records(path).records] == [r.to_dict() for r in records(tmp_path)]


def test_paths_under_the_manifest_folder_are_stored_relative(tmp_path: Path) -> None:
    path = write_manifest(records(tmp_path), tmp_path / "manifest.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["media"] == "videos/a.mp4"
    third = json.loads(path.read_text().splitlines()[2])
    assert third["media"] == "/elsewhere/c.mp4"
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "manifest.jsonl").write_text(path.read_text())
    assert Manifest.read(moved / "manifest.jsonl")[0].media == str(moved / "videos/a.mp4")


def test_numeric_columns_mark_unknown_values(tmp_path: Path) -> None:
    manifest = Manifest.from_records(records(tmp_path))
    assert manifest.numeric("frames").tolist() == [49, -1, -1]
    assert np.isnan(manifest.numeric("fps")[1])
    assert manifest.is_video().tolist() == [True, False, True]
    assert manifest.unprobed().tolist() == [1, 2]


def test_malformed_line_is_reported_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"media": "a.mp4"}\n{"media": "b.mp4", caption: 1}\n')
    result = read_manifest_records(path)
    assert len(result.records) == 1
    (problem,) = result.problems
    assert problem.where == "line 2 column 20" and problem.file == str(path)
    with pytest.raises(DataError, match=r"m.jsonl: line 2 column 20: malformed JSON"):
        Manifest.read(path)


@pytest.mark.slow
def test_a_million_records_load_whole_and_columnar(tmp_path: Path) -> None:
    # Speed is benchmarks/bench_manifest_scale.py's to measure (1.6 s there); a timed assertion here
    # would fail on a loaded machine and prove nothing on a fast one.
    line = json.dumps({"media": "videos/clip_0000001.mp4", "control": "poses/clip_0000001.mp4",
                       "caption": "A person in a red shirt dances in front of a blue wall.", "kind": "video",
                       "frames": 120, "fps": 24.0, "width": 1280, "height": 720})
    path = tmp_path / "big.jsonl"
    path.write_text((line + "\n") * 1_000_000)
    manifest = Manifest.read(path)
    frames = manifest.numeric("frames")
    assert len(manifest) == 1_000_000 and frames.sum() == 120_000_000 and frames.dtype.kind in "iu"
    assert manifest[999_999].media == str(tmp_path / "videos/clip_0000001.mp4")

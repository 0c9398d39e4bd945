import csv
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from vidctrl.data.config import DataConfig
from vidctrl.data.layouts import LAYOUTS, load_dataset, read_layout, source_of, write_layout
from vidctrl.data.layouts.controlnext import load_frame_meta
from vidctrl.data.loader import load_manifest
from vidctrl.data.records import DataError, ImportResult, Problem, Record

PATH_FIELDS = ("media", "control", "camera", "meta_info")


def touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def resolved(records: list[Record]) -> list[dict[str, Any]]:
    """to_dict() with every path followed through symlinks, so a linked dataset compares equal."""
    out = []
    for record in records:
        row = record.to_dict()
        for name in PATH_FIELDS:
            if row[name] is not None:
                row[name] = os.path.realpath(row[name])
        out.append(row)
    return out


def errors(result: ImportResult) -> list[Problem]:
    return [p for p in result.problems if p.severity == "error"]


def codes(result: ImportResult) -> list[str]:
    return [p.code for p in result.problems]


def load(layout: str, path: Path, out: Path) -> ImportResult:
    """Read a dataset written by write_layout with the flags a user would pass."""
    if layout == "videox":
        config = DataConfig(train_data_meta=path, train_data_dir=out)
    elif layout == "dynamictrl":
        config = DataConfig(data_root=out)
    elif layout == "controlnext":
        config = DataConfig(meta_info_path=path)
    else:
        config = DataConfig(manifest=path)
    result = load_dataset(config)
    assert result.layout == layout
    return result


# --- VideoX-Fun -----------------------------------------------------------------------------------


def test_videox_json_joins_train_data_dir_and_reads_every_key(tmp_path: Path) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text(
        json.dumps(
            [
                {
                    "file_path": "train/1.mp4",
                    "control_file_path": "control/1.mp4",
                    "text": "a dancer",
                    "type": "video",
                    "width": 640,
                    "height": "360",
                    "object_file_path": ["x.png"],
                },
                {"file_path": "train/2.jpg", "control_file_path": "control/2.jpg", "text": "a photo"},
                {
                    "file_path": "/abs/3.mp4",
                    "control_file_path": "cams/3.TXT",
                    "text": "pan",
                    "type": "video",
                },
                {
                    "file_path": "train/4.mp4",
                    "control_file_path": None,
                    "type": "video",
                    "meta_info": "meta/4.json",
                },
            ]
        )
    )
    result = load_dataset(DataConfig(train_data_meta=meta, train_data_dir=tmp_path / "data"))
    assert result.layout == "videox" and result.problems == []
    video, image, camera, bare = result.records
    data = tmp_path / "data"
    assert video.media == str(data / "train/1.mp4") and video.control == str(data / "control/1.mp4")
    assert (video.kind, video.caption, video.width, video.height) == ("video", "a dancer", 640, 360)
    assert video.extra == {"object_file_path": ["x.png"]}
    assert image.kind == "image"  # no type means image, as in VideoX-Fun
    assert (
        camera.media == "/abs/3.mp4" and camera.camera == str(data / "cams/3.TXT") and camera.control is None
    )
    assert bare.control is None and bare.caption is None and bare.meta_info == str(data / "meta/4.json")
    assert "entry 2 (line" in camera.source


def test_videox_without_train_data_dir_reads_paths_from_the_working_folder(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    meta = tmp_path / "meta" / "metadata.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps([{"file_path": "train/1.mp4", "text": "t", "type": "video"}]))
    result = load_dataset(DataConfig(train_data_meta=meta))
    assert result.records[0].media == str(tmp_path / "train/1.mp4")
    (warning,) = result.problems
    assert warning.code == "relative_to_cwd" and warning.severity == "warning"
    assert "--train_data_dir" in warning.fix


def test_videox_csv_reads_columns_keeps_unknown_ones_and_treats_empty_cells_as_absent(tmp_path: Path) -> None:
    meta = tmp_path / "metadata.csv"
    meta.write_text(
        "file_path,control_file_path,text,type,width,height,source\n"
        'train/1.mp4,control/1.mp4,"a caption, with a comma",video,640,,web\n'
        "train/2.jpg,,,,,,\n"
        'train/3.mp4,cam/3.txt,"two\nlines",video,,,\n'
    )
    result = load_dataset(DataConfig(train_data_meta=meta, train_data_dir=tmp_path))
    assert result.problems == []
    first, second, third = result.records
    assert (first.caption, first.width, first.height, first.extra) == (
        "a caption, with a comma",
        640,
        None,
        {"source": "web"},
    )
    assert (second.kind, second.control, second.caption, second.extra) == ("image", None, "", {})
    assert third.camera == str(tmp_path / "cam/3.txt") and third.caption == "two\nlines"
    assert "line 4" in third.source


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            '[\n  {"file_path": "a.mp4"},\n  {"file_path": "b.mp4" "text": "x"}\n]',
            "line 3 column 25",
            "delimiter",
        ),
        ('[\n  {"file_path": "a.mp4"},\n]\n', "line 3 column 1", "Expecting value"),
        ('[{"file_path": "a.mp4"}] x', "line 1 column 26", "Extra data"),
        ('{"file_path": "a.mp4"}', "line 1", "top level is a JSON object"),
        ('[{"file_path": "a.mp4"', "line 1 column 23", "delimiter"),
        ("", "", "empty"),
    ],
)
def test_malformed_json_is_a_problem_with_line_and_column(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text(text)
    result = read_layout("videox", meta)
    assert result.records == []
    (problem,) = result.problems
    assert problem.file == str(meta) and problem.where == where and message in problem.message
    assert problem.code == "malformed_metadata" and problem.fix
    with pytest.raises(DataError, match=r"metadata\.json"):
        result.raise_for_errors()


def test_bad_entries_are_named_by_entry_and_line_and_good_ones_still_load(tmp_path: Path) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text(
        "[\n"
        '  {"file_path": "ok.mp4", "type": "video", "text": "fine"},\n'  # entry 0, line 2
        '  "just a string",\n'  # entry 1, line 3
        '  {"text": "no path"},\n'  # entry 2, line 4
        '  {"file_path": "v.mp4", "type": "Video"},\n'  # entry 3, line 5
        '  {"file_path": 7},\n'  # entry 4, line 6
        '  {"file_path": "w.mp4", "type": "video",\n   "width": "wide", "control_file_path": 3}\n'  # entry 5, line 7
        "]\n"
    )
    result = read_layout("videox", meta, root=tmp_path)
    assert [r.media for r in result.records] == [str(tmp_path / "ok.mp4"), str(tmp_path / "w.mp4")]
    found = {(p.code, p.where, p.sample) for p in result.problems}
    assert found == {
        ("malformed_entry", "entry 1 (line 3)", None),
        ("missing_key", "entry 2 (line 4)", None),
        ("bad_type", "entry 3 (line 5)", None),
        ("bad_value", "entry 4 (line 6)", None),
        ("bad_value", "entry 5 (line 7)", 1),
    }
    assert all(p.file == str(meta) and p.fix and p.severity == "error" for p in result.problems)
    assert sum("width" in p.message for p in result.problems) == 1
    assert result.records[1].control is None and result.records[1].width is None


def test_csv_problems_name_the_line(tmp_path: Path) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text("path,text\na.mp4,x\n")
    (problem,) = read_layout("videox", meta).problems
    assert (problem.code, problem.where, problem.file) == ("missing_column", "line 1", str(meta))
    meta.write_text('file_path,text\na.mp4,x\n"b.mp4",y,extra\nc.mp4,"multi\nline"\nd.mp4,z,1\n')
    result = read_layout("videox", meta)
    assert [os.path.basename(r.media) for r in result.records] == ["a.mp4", "c.mp4"]
    assert [(p.code, p.where) for p in result.problems] == [
        ("malformed_entry", "line 3"),
        ("malformed_entry", "line 6"),
        ("relative_to_cwd", ""),
    ]


def test_csv_unterminated_quote_is_an_error_naming_the_line_where_it_opens(tmp_path: Path) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text('file_path,text,type\na.mp4,ok,video\nb.mp4,"open quote,video\nc.mp4,x,video\nd.mp4,y,video\n')
    result = read_layout("videox", meta, root=tmp_path)
    assert [os.path.basename(r.media) for r in result.records] == ["a.mp4"]
    (problem,) = result.problems
    assert (problem.code, problem.where, problem.sample, problem.file) == ("malformed_metadata", "line 3", None, str(meta))
    assert "never closed" in problem.message and "2 lines after it" in problem.message
    with pytest.raises(DataError, match="line 3"):
        load_manifest(DataConfig(train_data_meta=meta, train_data_dir=tmp_path, bad_sample_policy="lenient"))


def test_csv_unterminated_quote_on_the_last_line_is_an_error(tmp_path: Path) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text('file_path,text\na.mp4,ok\nb.mp4,"open')
    result = read_layout("videox", meta, root=tmp_path)
    assert [p.where for p in result.problems] == ["line 3"]
    assert [os.path.basename(r.media) for r in result.records] == ["a.mp4"]


def test_csv_stray_quote_swallowing_rows_until_a_later_quote_is_an_error(tmp_path: Path) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text('file_path,text,type\na.mp4,"stray,video\nb.mp4,x,video\nc.mp4,"closed",video\n')
    (problem,) = read_layout("videox", meta, root=tmp_path).problems
    assert (problem.code, problem.where) == ("malformed_metadata", "line 2")
    assert "swallowing line 3" in problem.message and "b.mp4" in problem.message


def test_csv_multi_line_captions_and_escaped_quotes_are_read_whole(tmp_path: Path) -> None:
    meta = tmp_path / "m.csv"
    meta.write_text('file_path,text\na.mp4,"two, lines\nof text, here"\nb.mp4,"say ""hi"""\n')
    result = read_layout("videox", meta, root=tmp_path)
    assert result.problems == []
    assert [r.caption for r in result.records] == ["two, lines\nof text, here", 'say "hi"']


def test_missing_metadata_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    result = load_dataset(DataConfig(train_data_meta=tmp_path / "nope.json"))
    assert result.records == [] and codes(result) == ["missing_metadata"]


# --- DynamiCtrl -----------------------------------------------------------------------------------


def dynamictrl_root(root: Path, names: list[str]) -> Path:
    for name in names:
        touch(root / "videos" / name)
        touch(root / "poses" / name)
    return root


def test_dynamictrl_matches_prompts_by_name_even_when_prompts_are_reordered(tmp_path: Path) -> None:
    root = dynamictrl_root(tmp_path / "data", ["a.mp4", "b.mp4", "c.mp4"])
    (root / "video.txt").write_text(f"videos/a.mp4\n\n{root}/videos/b.mp4\nvideos/c.mp4\n")
    (root / "prompts.txt").write_text(
        "c.mp4#####caption of c\nb.mp4#####caption of b\na.mp4#####caption of a\n"
    )
    result = load_dataset(DataConfig(data_root=root))
    assert [r.caption for r in result.records] == ["caption of a", "caption of b", "caption of c"]
    assert [r.media for r in result.records] == [
        str(root / "videos" / n) for n in ("a.mp4", "b.mp4", "c.mp4")
    ]
    assert [r.control for r in result.records] == [
        str(root / "poses" / n) for n in ("a.mp4", "b.mp4", "c.mp4")
    ]
    assert errors(result) == []
    (warning,) = result.problems
    assert warning.code == "prompt_order" and "2 of 3" in warning.message
    assert result.records[1].source.endswith("video.txt line 3")


def test_dynamictrl_reports_missing_orphan_duplicate_and_malformed_prompts(tmp_path: Path) -> None:
    root = dynamictrl_root(tmp_path / "data", ["a.mp4", "b.mp4", "c.mp4"])
    touch(root / "more" / "videos" / "a.mp4")
    (root / "video.txt").write_text("videos/a.mp4\nvideos/b.mp4\nvideos/c.mp4\nmore/videos/a.mp4\n")
    (root / "prompts.txt").write_text(
        "a.mp4#####first\n"
        "b.mp4 just a caption\n"
        "c.mp4#####one\n"
        "c.mp4#####another\n"
        "gone.mp4#####its video was deleted\n"
    )
    result = load_dataset(DataConfig(data_root=root))
    prompts, videos = str(root / "prompts.txt"), str(root / "video.txt")
    found = {
        (p.code, p.severity, p.file, p.where, p.sample) for p in result.problems if p.code != "prompt_order"
    }
    assert found == {
        ("duplicate_name", "error", videos, "line 4", 3),  # a.mp4 twice, from two folders
        ("missing_prompt", "error", prompts, "", 1),  # b.mp4: its line has no #####
        ("malformed_prompt", "error", prompts, "line 2", None),
        ("duplicate_name", "error", prompts, "line 4", None),
        ("orphan_prompt", "warning", prompts, "line 5", None),
    }
    assert [r.caption for r in result.records] == ["first", None, "one", "first"]
    assert result.records[3].control == str(root / "more" / "poses" / "a.mp4")


def test_dynamictrl_pose_path_swaps_only_the_folder_named_videos(tmp_path: Path) -> None:
    root = tmp_path / "myvideos"
    (root).mkdir()
    (root / "video.txt").write_text("videos/x.mp4\nclips/y.mp4\n")
    (root / "prompts.txt").write_text("x.mp4#####x\ny.mp4#####y\n")
    result = load_dataset(DataConfig(data_root=root))
    # the original's str.replace("videos", "poses") would look in .../myposes/poses/x.mp4
    assert result.records[0].control == str(root / "poses" / "x.mp4")
    assert result.records[1].control == str(root / "poses" / "y.mp4")
    assert [p.code for p in result.problems] == ["pose_path"]


def test_dynamictrl_reads_meta_info_extension_and_custom_list_names(tmp_path: Path) -> None:
    root = dynamictrl_root(tmp_path, ["a.mp4", "b.mp4"])
    touch(root / "meta_info" / "a.mp4.json", b"[]")
    (root / "list.txt").write_text("videos/a.mp4\nvideos/b.mp4\n")
    (root / "captions.txt").write_text("a.mp4#####a\nb.mp4#####b\n")
    result = load_dataset(DataConfig(data_root=root, video_column="list.txt", caption_column="captions.txt"))
    assert result.problems == []
    assert result.records[0].meta_info == str(root / "meta_info" / "a.mp4.json")
    assert result.records[1].meta_info is None


def test_dynamictrl_missing_lists_are_problems(tmp_path: Path) -> None:
    assert codes(load_dataset(DataConfig(data_root=tmp_path / "nope"))) == ["missing_metadata"]
    assert codes(load_dataset(DataConfig(data_root=tmp_path))) == ["missing_metadata"]
    (tmp_path / "video.txt").write_text("videos/a.mp4\n")
    result = load_dataset(DataConfig(data_root=tmp_path))
    assert codes(result) == ["missing_metadata"] and result.records[0].caption is None


# --- ControlNeXt ----------------------------------------------------------------------------------


def test_controlnext_reads_entries_keeps_text_and_unknown_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    meta = tmp_path / "meta_info.json"
    meta.write_text(
        json.dumps(
            [
                {"video_path": "/data/v/1.mp4", "guide_path": "/data/p/1.mp4", "meta_info": "/data/m/1.json"},
                {
                    "video_path": "v/2.mp4",
                    "guide_path": "p/2.mp4",
                    "text": "a caption",
                    "valid_index": [1, 2, 3],
                },
            ],
            indent=2,
        )
    )
    result = load_dataset(DataConfig(meta_info_path=meta, dataset_type="ubc"))
    first, second = result.records
    assert (first.media, first.control, first.meta_info, first.caption) == (
        "/data/v/1.mp4",
        "/data/p/1.mp4",
        "/data/m/1.json",
        "",
    )
    assert second.media == str(tmp_path / "v/2.mp4") and second.caption == "a caption"
    assert second.extra == {"valid_index": [1, 2, 3]}
    assert codes(result) == ["relative_to_cwd"]


def test_controlnext_bad_entries_are_problems(tmp_path: Path) -> None:
    meta = tmp_path / "meta_info.json"
    meta.write_text(
        '[\n  {"video_path": "/v/1.mp4"},\n  [],\n  {"guide_path": "/p.mp4"},\n'
        '  {"video_path": "/v/2.mp4", "guide_path": "/p/2.mp4", "meta_info": 5}\n]'
    )
    result = read_layout("controlnext", meta)
    assert {(p.code, p.where, p.sample) for p in result.problems} == {
        ("missing_key", "entry 0 (line 2)", 0),
        ("malformed_entry", "entry 1 (line 3)", None),
        ("missing_key", "entry 2 (line 4)", None),
        ("bad_value", "entry 3 (line 5)", 1),
    }
    assert [r.control for r in result.records] == [None, "/p/2.mp4"]


def test_frame_meta_reads_the_example_layout_and_names_a_bad_frame(tmp_path: Path) -> None:
    frame = {
        "boxes": [[[0.21, 0.26], [0.66, 0.99]]],
        "hands_boxes": [[[0.28, 0.27], [0.37, 0.34]]],
        "hands_score": [[0.8] * 21],
    }
    path = tmp_path / "1.json"
    path.write_text(json.dumps([frame, frame]))
    assert load_frame_meta(path) == [frame, frame]
    path.write_text(json.dumps([frame, {**frame, "hands_boxes": [[0.1, 0.2, 0.3, 0.4]]}]))
    with pytest.raises(DataError, match="hands_boxes must be a list") as info:
        load_frame_meta(path)
    assert info.value.problem.where == "frame 1"
    path.write_text(json.dumps([{**frame, "hands_score": []}]))
    with pytest.raises(DataError, match="1 hand boxes but 0 hand scores"):
        load_frame_meta(path)


# --- choosing the layout --------------------------------------------------------------------------


def test_exactly_one_source_flag_is_needed(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"no dataset given.*--train_data_meta.*--data_root.*--meta_info_path"
    ):
        load_dataset(DataConfig())
    with pytest.raises(DataError, match=r"several datasets given \(--train_data_meta, --data_root\)"):
        load_dataset(DataConfig(train_data_meta=tmp_path / "m.json", data_root=tmp_path))


def test_source_flags_pick_the_layout(tmp_path: Path) -> None:
    assert source_of(DataConfig(train_data_meta=tmp_path / "m.json"))[0] == "videox"
    assert source_of(DataConfig(train_data_meta=tmp_path / "m.csv"))[0] == "videox"
    assert source_of(DataConfig(train_data_meta=tmp_path / "m.jsonl"))[0] == "manifest"
    assert source_of(DataConfig(manifest=tmp_path / "m.jsonl"))[0] == "manifest"
    assert source_of(DataConfig(data_root=tmp_path))[0] == "dynamictrl"
    assert source_of(DataConfig(meta_info_path=tmp_path / "meta_info.json"))[0] == "controlnext"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DataConfig(data_root=Path("d"), train_data_dir=Path("x")), "--train_data_dir"),
        (DataConfig(train_data_meta=Path("m.json"), video_column="v.txt"), "--video_column"),
        (DataConfig(meta_info_path=Path("m.json"), caption_column="c.txt"), "--caption_column"),
        (DataConfig(meta_info_path=Path("m.json"), dataset_type="webvid"), "--dataset_type 'webvid'"),
    ],
)
def test_flags_the_layout_cannot_honour_are_errors(config: DataConfig, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(config)


def test_write_layout_refuses_options_the_layout_does_not_take(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="videox layout does not take copy"):
        write_layout([], tmp_path, "videox", copy=True)
    with pytest.raises(DataError, match="unknown layout"):
        write_layout([], tmp_path, "webdataset")  # type: ignore[arg-type]


# --- round trips ----------------------------------------------------------------------------------


def portable_records(src: Path) -> list[Record]:
    """Records every seed layout can hold: pose-controlled videos with captions; two share a name."""
    meta = touch(src / "meta" / "a.json", b"[]")
    return [
        Record(
            media=str(touch(src / "train/a.mp4")),
            control=str(touch(src / "control/a.mp4")),
            caption="a person dances",
            meta_info=str(meta),
        ),
        Record(
            media=str(touch(src / "train/x/c.mp4")),
            control=str(touch(src / "control/x/c_pose.mp4")),
            caption="ünïcode ✓ caption with ##### and a \u2028 line separator",
        ),
        Record(
            media=str(touch(src / "train/y/c.mp4")), control=str(touch(src / "control/y/c.mp4")), caption=""
        ),
        Record(
            media=str(touch(src / "train/C.mp4")), control=str(touch(src / "control/C.mp4")), caption="upper"
        ),
    ]


@pytest.mark.parametrize(("first", "second"), list(itertools.product(LAYOUTS, LAYOUTS)))
def test_round_trip_between_layouts_keeps_every_record(tmp_path: Path, first: str, second: str) -> None:
    original = portable_records(tmp_path / "src")
    path_a = write_layout(original, tmp_path / "a", first)  # type: ignore[arg-type]
    loaded_a = load(first, path_a, tmp_path / "a")
    assert errors(loaded_a) == []
    assert resolved(loaded_a.records) == resolved(original)
    path_b = write_layout(loaded_a.records, tmp_path / "b", second)  # type: ignore[arg-type]
    loaded_b = load(second, path_b, tmp_path / "b")
    assert errors(loaded_b) == []
    assert resolved(loaded_b.records) == resolved(original)


def rich_videox_records(src: Path) -> list[Record]:
    return [
        Record(
            media=str(src / "train/1.mp4"),
            control=str(src / "control/1.mp4"),
            caption="a",
            width=640,
            height=360,
            extra={"source": "web", "score": "0.5"},
        ),
        Record(media=str(src / "train/2.jpg"), kind="image", control=str(src / "control/2.jpg"), caption="b"),
        Record(media="/elsewhere/3.mp4", camera=str(src / "cams/3.txt"), caption="pan left"),
        Record(
            media=str(src / "train/4.mp4"),
            caption='multi\nline,\r\nwith "quotes" and\rcomma',
            meta_info=str(src / "meta/4.json"),
        ),
    ]


@pytest.mark.parametrize("as_csv", [False, True])
def test_videox_round_trip_keeps_images_cameras_sizes_and_unknown_keys(tmp_path: Path, as_csv: bool) -> None:
    original = rich_videox_records(tmp_path)
    path = write_layout(original, tmp_path, "videox", as_csv=as_csv)
    assert path.name == ("metadata.csv" if as_csv else "metadata.json")
    back = load("videox", path, tmp_path)
    assert back.problems == []
    assert [r.to_dict() for r in back.records] == [r.to_dict() for r in original]
    if as_csv:
        rows = list(csv.DictReader(path.open(newline="")))
        first = rows[0]
    else:
        first = json.loads(path.read_text())[0]
    assert first["file_path"] == "train/1.mp4"  # relative to the output folder: a portable dataset
    assert (json.loads(path.read_text())[2] if not as_csv else rows[2])["file_path"] == "/elsewhere/3.mp4"


def test_videox_json_keeps_an_absent_caption_absent_and_any_json_extra(tmp_path: Path) -> None:
    original = [
        Record(media=str(tmp_path / "v.mp4"), caption=None, extra={"tags": ["a"], "n": 3, "ok": True})
    ]
    path = write_layout(original, tmp_path, "videox")
    assert "text" not in json.loads(path.read_text())[0]
    assert [r.to_dict() for r in load("videox", path, tmp_path).records] == [r.to_dict() for r in original]
    with pytest.raises(DataError, match=r"sample 0.*a CSV cell cannot hold"):
        write_layout(original, tmp_path, "videox", as_csv=True)


def test_dynamictrl_writer_links_resolves_name_clashes_and_copies_on_request(tmp_path: Path) -> None:
    original = portable_records(tmp_path / "src")
    write_layout(original, tmp_path / "linked", "dynamictrl")
    linked = tmp_path / "linked"
    assert (linked / "video.txt").read_text().splitlines() == [
        "videos/a.mp4",
        "videos/c.mp4",
        "videos/c_2.mp4",
        "videos/C_3.mp4",  # names compare case-blind
    ]
    assert (linked / "prompts.txt").read_text().split("\n")[2] == "c_2.mp4#####"
    assert os.path.islink(linked / "videos/c_2.mp4")
    assert os.path.realpath(linked / "poses/c_2.mp4") == str(tmp_path / "src/control/y/c.mp4")
    assert os.path.realpath(linked / "meta_info/a.mp4.json") == str(tmp_path / "src/meta/a.json")

    touch(tmp_path / "src/train/a.mp4", b"video bytes")
    write_layout(original, tmp_path / "copied", "dynamictrl", copy=True)
    copied = tmp_path / "copied/videos/a.mp4"
    assert not copied.is_symlink() and copied.read_bytes() == b"video bytes"
    back = load("dynamictrl", tmp_path / "copied/video.txt", tmp_path / "copied")
    assert back.records[0].media == str(copied)

    write_layout(original, linked, "dynamictrl", copy=True)  # copying over links replaces them
    assert (
        not (linked / "videos/a.mp4").is_symlink()
        and (linked / "videos/a.mp4").read_bytes() == b"video bytes"
    )


def test_dynamictrl_writer_leaves_a_dataset_in_place_and_never_overwrites_other_files(tmp_path: Path) -> None:
    root = dynamictrl_root(tmp_path / "data", ["a.mp4", "b.mp4"])
    (root / "video.txt").write_text("videos/a.mp4\nvideos/b.mp4\n")
    (root / "prompts.txt").write_text("b.mp4#####b\na.mp4#####a\n")
    records = load_dataset(DataConfig(data_root=root)).records
    write_layout(records, root, "dynamictrl")
    assert not (root / "videos/a.mp4").is_symlink() and not (root / "poses/b.mp4").is_symlink()
    assert (root / "prompts.txt").read_text() == "a.mp4#####a\nb.mp4#####b\n"
    assert resolved(load_dataset(DataConfig(data_root=root)).records) == resolved(records)

    # a.mp4 is in place and keeps its name, but poses/a.mp4 is the user's file, not this pose
    intruder = Record(media=str(root / "videos/a.mp4"), control=str(touch(tmp_path / "other/pose.mp4")))
    with pytest.raises(DataError, match=r"poses/a\.mp4 already exists") as info:
        write_layout([intruder], root, "dynamictrl")
    assert info.value.problem.code == "output_exists"
    assert (root / "poses/a.mp4").read_bytes() == b""


@pytest.mark.parametrize(
    ("layout", "record", "message"),
    [
        (
            "dynamictrl",
            Record(media="/d/i.png", kind="image", control="/d/p.png"),
            "DynamiCtrl trains on videos",
        ),
        ("dynamictrl", Record(media="/d/v.mp4", camera="/d/c.txt"), "camera trajectory"),
        ("dynamictrl", Record(media="/d/v.mp4"), "no pose video"),
        ("dynamictrl", Record(media="/d/v.mp4", control="/d/p.mp4", caption="two\nlines"), "line break"),
        ("dynamictrl", Record(media="/d/a#####b.mp4", control="/d/p.mp4"), "cannot be written in the lists"),
        ("controlnext", Record(media="/d/i.png", kind="image", control="/d/p.png"), "trains on videos"),
        ("controlnext", Record(media="/d/v.mp4", camera="/d/c.txt"), "camera trajectory"),
        ("controlnext", Record(media="/d/v.mp4"), "no pose video"),
        ("videox", Record(media="/d/v.mp4", control="/d/p.mp4", camera="/d/c.txt"), "both"),
        ("videox", Record(media="/d/v.mp4", camera="/d/c.json"), "does not end in .txt"),
    ],
)
def test_records_a_layout_cannot_hold_raise_naming_the_sample(
    tmp_path: Path, layout: str, record: Record, message: str
) -> None:
    good = Record(media=str(touch(tmp_path / "ok.mp4")), control=str(touch(tmp_path / "ok_pose.mp4")))
    with pytest.raises(DataError, match=rf"sample 1 \({record.media}\).*{message}") as info:
        write_layout([good, record], tmp_path / "out", layout)  # type: ignore[arg-type]
    assert info.value.problem.code == "unrepresentable" and info.value.problem.sample == 1
    path = write_layout([good, record], tmp_path / "out", layout, skip_unrepresentable=True)  # type: ignore[arg-type]
    assert [os.path.realpath(r.media) for r in load(layout, path, tmp_path / "out").records] == [good.media]


def test_dynamictrl_writer_drops_extra_keys_with_a_warning(tmp_path: Path, caplog) -> None:
    record = Record(
        media=str(touch(tmp_path / "v.mp4")),
        control=str(touch(tmp_path / "p.mp4")),
        extra={"valid_index": [1]},
    )
    write_layout([record], tmp_path / "out", "dynamictrl")
    assert "valid_index" in caplog.text


def test_controlnext_writer_writes_absolute_paths_and_keeps_text_and_extra(tmp_path: Path) -> None:
    record = Record(
        media=str(tmp_path / "out/v.mp4"),
        control=str(tmp_path / "p.mp4"),
        caption="c",
        extra={"valid_index": [4, 5]},
    )
    path = write_layout([record], tmp_path / "out", "controlnext")
    assert json.loads(path.read_text()) == [
        {
            "video_path": str(tmp_path / "out/v.mp4"),
            "guide_path": str(tmp_path / "p.mp4"),
            "text": "c",
            "valid_index": [4, 5],
        }
    ]
    assert [r.to_dict() for r in load("controlnext", path, tmp_path).records] == [record.to_dict()]

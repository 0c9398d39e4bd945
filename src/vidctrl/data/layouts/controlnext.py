"""ControlNeXt-SVD-v2's `meta_info.json`: a JSON list of `{video_path, guide_path, meta_info}`.

What the original does (dvlab-research/ControlNeXt `ControlNeXt-SVD-v2-Training/train_svd.py` and
`utils/vid_dataset.py`, `UBCFashion`):

- `--dataset_type ubc` (the default) reads `--meta_info_path` with `json.load`; `webvid` is another
  dataset altogether (`--csv_path`, folders of frames, depth maps and motion values) and any other
  value leaves the dataset undefined.
- `video_path` and `guide_path` (the pose video) are opened as written: relative paths are
  relative to the working folder. `meta_info` is optional; when present it is the path of a
  per-video JSON list with one entry per frame (`boxes`, `hands_boxes` as normalised
  `[[x0, y0], [x1, y1]]`, `hands_score` as 21 confidences per hand) used for the hand loss weight.
- Other keys are ignored (`utils/ubc_dataset.py` also reads `valid_index` and `ref_path`).
- There are no captions (SVD is conditioned on the reference image).

vidctrl keeps unknown keys in `Record.extra` and reads a `text` key, if present, as the caption,
so conversions through this layout are lossless. The writer writes absolute paths: the layout has
no root folder, so a relative path would only work from one working folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vidctrl.data.layouts._common import (
    Resolver,
    dump_json_list,
    json_type,
    read_json_list,
    relative_paths_warning,
    unrepresentable,
    write_text_atomic,
)
from vidctrl.data.records import DataError, ImportResult, Problem, Record

LAYOUT = "controlnext"
NATIVE_KEYS = ("video_path", "guide_path", "meta_info")
CAPTION_KEY = "text"  # vidctrl's addition; ControlNeXt ignores unknown keys
DATASET_TYPES = ("ubc",)
HAND_SCORES = 21
_FIX_ENTRY = 'write each entry as {"video_path": ..., "guide_path": ..., "meta_info": ...}'


def read_controlnext(path: str | os.PathLike[str]) -> ImportResult:
    """Read a ControlNeXt `meta_info.json`. Never raises for bad data: faults become `Problem`s.

    The per-video meta_info files are not opened here (see `load_frame_meta`).
    """
    path = Path(path)
    entries, problems = read_json_list(
        path, what="meta info file", fix="pass the dataset list with --meta_info_path"
    )
    records: list[Record] = []
    resolve = Resolver(None)  # as written: relative to the working folder

    for entry in entries:
        where = f"entry {entry.index} (line {entry.line})"
        value = entry.value
        if not isinstance(value, dict):
            problems.append(
                Problem(
                    message=f"the entry is a JSON {json_type(value)}, not an object",
                    file=str(path),
                    where=where,
                    code="malformed_entry",
                    fix=_FIX_ENTRY,
                )
            )
            continue
        video = value.get("video_path")
        if not isinstance(video, str) or not video:
            problems.append(
                Problem(
                    message="no video_path" if video is None else f"video_path is {video!r}, not a path",
                    file=str(path),
                    where=where,
                    code="missing_key" if video is None else "bad_value",
                    fix=_FIX_ENTRY,
                )
            )
            continue
        index = len(records)
        guide = value.get("guide_path")
        if not isinstance(guide, str) or not guide:
            problems.append(
                Problem(
                    message=("no guide_path" if guide is None else f"guide_path is {guide!r}, not a path")
                    + f" ({video})",
                    file=str(path),
                    sample=index,
                    where=where,
                    code="missing_key" if guide is None else "bad_value",
                    fix="give every entry the path of its pose video as guide_path",
                )
            )
            guide = None
        meta = value.get("meta_info")
        if meta is not None and (not isinstance(meta, str) or not meta):
            problems.append(
                Problem(
                    message=f"meta_info is {meta!r}, not a path ({video})",
                    file=str(path),
                    sample=index,
                    where=where,
                    code="bad_value",
                    fix="write meta_info as the path of the per-frame JSON, or leave it out",
                )
            )
            meta = None
        records.append(
            Record(
                media=resolve(video),
                kind="video",
                control=resolve(guide) if guide else None,
                caption=value.get(CAPTION_KEY, ""),
                meta_info=resolve(meta) if meta else None,
                extra={k: v for k, v in value.items() if k not in NATIVE_KEYS and k != CAPTION_KEY},
                source=f"{path} {where}",
            )
        )
    if resolve.relative:
        problems.append(relative_paths_warning(path, ""))
    return ImportResult(records=records, problems=problems, layout=LAYOUT)


def write_controlnext(
    records: Iterable[Record],
    out_dir: str | os.PathLike[str],
    *,
    filename: str = "meta_info.json",
    skip_unrepresentable: bool = False,
) -> Path:
    """Write `OUT/meta_info.json` with absolute paths. Returns its path."""
    path = Path(out_dir) / filename
    entries = []
    for index, record in enumerate(records):
        entry = _entry(record, index, skip=skip_unrepresentable)
        if entry is not None:
            entries.append(entry)
    write_text_atomic(path, dump_json_list(entries))
    return path


def _entry(record: Record, index: int, *, skip: bool) -> dict[str, Any] | None:
    def refuse(reason: str, fix: str) -> None:
        unrepresentable(record, index, "ControlNeXt", reason, fix, skip=skip)

    if record.kind != "video":
        return refuse(
            f"it is an {record.kind}; ControlNeXt-SVD trains on videos", "leave images out of this layout"
        )
    if record.camera:
        return refuse(
            "it is controlled by a camera trajectory; ControlNeXt's guide is a pose video",
            "use the VideoX-Fun layout or a manifest for camera data",
        )
    if not record.control:
        return refuse("it has no pose video (guide_path)", "add the pose video")
    entry: dict[str, Any] = {
        "video_path": os.path.abspath(record.media),
        "guide_path": os.path.abspath(record.control),
    }
    if record.meta_info:
        entry["meta_info"] = os.path.abspath(record.meta_info)
    if record.caption:  # no key means no caption, which reads back as ""
        entry[CAPTION_KEY] = record.caption
    for key, value in record.extra.items():
        if key in NATIVE_KEYS or key == CAPTION_KEY:
            return refuse(f"its extra key {key!r} is a ControlNeXt key", f"rename the extra key {key!r}")
        entry[key] = value
    return entry


# --- per-video meta_info files -------------------------------------------------------------------


def load_frame_meta(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a per-video meta_info JSON: one object per frame. Raises `DataError` naming the frame.

    Each frame may hold `boxes` and `hands_boxes` (lists of `[[x0, y0], [x1, y1]]`, normalised to
    the frame size) and `hands_score` (one list of 21 keypoint confidences per hand box).
    """
    path = os.fspath(path)

    def fail(message: str, where: str = "") -> DataError:
        return DataError(
            Problem(
                message=message,
                file=path,
                where=where,
                code="malformed_meta_info",
                fix="write one object per frame with boxes, hands_boxes and hands_score",
            )
        )

    try:
        with open(path, encoding="utf-8-sig") as handle:
            frames = json.load(handle)
    except FileNotFoundError:
        raise DataError(
            Problem(
                message="meta_info file not found",
                file=path,
                code="missing_file",
                fix="fix meta_info in the dataset list, or leave it out",
            )
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise fail(f"malformed JSON: {exc}", where) from None
    if not isinstance(frames, list):
        raise fail(f"the top level is a JSON {json_type(frames)}, not a list with one entry per frame")
    for number, frame in enumerate(frames):
        where = f"frame {number}"
        if not isinstance(frame, dict):
            raise fail(f"the entry is a JSON {json_type(frame)}, not an object", where)
        for key in ("boxes", "hands_boxes"):
            boxes = frame.get(key, [])
            if not isinstance(boxes, list) or not all(_is_box(box) for box in boxes):
                raise fail(f"{key} must be a list of [[x0, y0], [x1, y1]] boxes", where)
        scores = frame.get("hands_score", [])
        if not isinstance(scores, list) or not all(
            isinstance(hand, list) and all(_is_number(s) for s in hand) for hand in scores
        ):
            raise fail(f"hands_score must hold one list of {HAND_SCORES} numbers per hand", where)
        if "hands_boxes" in frame and len(scores) < len(frame["hands_boxes"]):
            raise fail(f"{len(frame['hands_boxes'])} hand boxes but {len(scores)} hand scores", where)
    return frames


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 2
        and all(
            isinstance(corner, list) and len(corner) == 2 and all(map(_is_number, corner)) for corner in box
        )
    )


__all__ = [
    "CAPTION_KEY",
    "DATASET_TYPES",
    "LAYOUT",
    "NATIVE_KEYS",
    "load_frame_meta",
    "read_controlnext",
    "write_controlnext",
]

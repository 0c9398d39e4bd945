"""VideoX-Fun / EasyAnimate / CogVideoX-Fun metadata: a JSON list (or a CSV) of samples.

What the originals do (VideoX-Fun `videox_fun/data/dataset_image_video.py`, `ImageVideoControlDataset`;
`bucket_sampler.py`, `AspectRatioBatchImageVideoSampler`):

- `--train_data_meta` ending in `.csv` is read with `csv.DictReader` (every column a key, every value
  a string), one ending in `.json` with `json.load`; each entry has `file_path`, `text`,
  `control_file_path` and `type`, which defaults to `"image"` when absent.
- `os.path.join(--train_data_dir, path)` when the flag is given, else the path as written: relative
  paths are then relative to the working folder. An absolute path ignores the folder.
- Control-Camera (`train_mode=control_camera_ref`) recognises a camera trajectory by
  `control_file_path.lower().endswith('.txt')`; a `null` control of a video gives an all-zero control.
- Optional `width` / `height` (cast with `int()`) spare the bucket sampler opening the file.

vidctrl keeps every other key in `Record.extra` (written back unchanged) and adds one key the
originals ignore, `meta_info` (the ControlNeXt per-frame JSON), so that conversions are lossless.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vidctrl.data.camera import is_camera_file
from vidctrl.data.layouts._common import (
    Portable,
    Resolver,
    dump_json_list,
    json_type,
    read_json_list,
    read_text,
    relative_paths_warning,
    unrepresentable,
    write_text_atomic,
)
from vidctrl.data.records import ImportResult, Problem, Record
from vidctrl.data.video import IMAGE_SUFFIXES

LAYOUT = "videox"
NATIVE_KEYS = ("file_path", "control_file_path", "text", "type", "width", "height")
META_INFO_KEY = "meta_info"  # vidctrl's addition; VideoX-Fun ignores unknown keys
KINDS = ("video", "image")
_FIX_JSON = "write a JSON list of objects with file_path, control_file_path, text and type"
_MEDIA_SUFFIXES = IMAGE_SUFFIXES | {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif"}
_FIX_META = "pass the metadata file with --train_data_meta (a .json list or a .csv table)"


def read_videox(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> ImportResult:
    """Read VideoX-Fun metadata (`.csv` by suffix, else JSON); relative paths join `root`.

    Never raises for bad data: a malformed file or entry becomes a `Problem` with the file, the
    entry and its line; good entries still become records.
    """
    path = Path(path)
    reader = _Reader(path, root)
    if path.suffix.lower() == ".csv":
        reader.read_csv()
    else:
        reader.read_json()
    if reader.resolve.relative and root is None:
        reader.problems.append(relative_paths_warning(path, "--train_data_dir"))
    return ImportResult(records=reader.records, problems=reader.problems, layout=LAYOUT)


class _Reader:
    def __init__(self, path: Path, root: str | os.PathLike[str] | None) -> None:
        self.path = path
        self.resolve = Resolver(root)
        self.records: list[Record] = []
        self.problems: list[Problem] = []

    # --- files ----------------------------------------------------------------------------------

    def read_json(self) -> None:
        entries, problems = read_json_list(self.path, what="metadata file", fix=_FIX_META)
        self.problems += problems
        for entry in entries:
            where = f"entry {entry.index} (line {entry.line})"
            if not isinstance(entry.value, dict):
                self._problem(
                    where,
                    f"the entry is a JSON {json_type(entry.value)}, not an object",
                    "malformed_entry",
                    _FIX_JSON,
                )
                continue
            self.add(entry.value, where)

    def read_csv(self) -> None:
        text, problem = read_text(self.path, what="metadata file", fix=_FIX_META)
        if text is None:
            self.problems += [problem] if problem else []
            return
        # The physical lines are kept: a row that does not end cleanly is explained by where its
        # quote opened, which the csv module does not say.
        physical = io.StringIO(text, newline="").readlines()
        rows = csv.reader(physical)
        try:
            header = next(rows, None)
            if header is None:
                self._problem(
                    "",
                    "the CSV file is empty",
                    "malformed_metadata",
                    "write a header line naming the columns: file_path,control_file_path,text,type",
                )
                return
            columns = [name.strip() for name in header]
            duplicated = sorted({c for c in columns if columns.count(c) > 1})
            if duplicated:
                self._problem(
                    "line 1",
                    f"columns named twice: {duplicated}",
                    "malformed_metadata",
                    "give every column of the header its own name",
                )
                return
            if "file_path" not in columns:
                self._problem(
                    "line 1",
                    f"no file_path column (the header names {columns})",
                    "missing_column",
                    "name the column of media paths file_path in the header line",
                )
                return
            line = rows.line_num + 1
            for values in rows:
                where = f"line {line}"
                spans = rows.line_num > line or rows.line_num == len(physical)  # several lines, or the last
                if spans and not self._row_ends_cleanly(physical, line, rows.line_num, columns):
                    return  # the rest of the file is inside one value: nothing after it can be trusted
                line = rows.line_num + 1
                if not values:  # a blank line; DictReader skips them too
                    continue
                if len(values) > len(columns):
                    self._problem(
                        where,
                        f"{len(values)} values, but the header names {len(columns)} columns",
                        "malformed_entry",
                        "quote values that contain commas",
                    )
                    continue
                row = dict(zip(columns, values, strict=False))
                # CSV cannot tell an empty value from an absent key: an empty cell is absent, except
                # text, where it is an empty caption.
                self.add({k: v for k, v in row.items() if v != "" or k == "text"}, where)
        except csv.Error as exc:
            self._problem(
                f"line {rows.line_num}",
                f"malformed CSV: {exc}",
                "malformed_metadata",
                "check the quoting on that line",
            )

    def _row_ends_cleanly(self, physical: list[str], first: int, last: int, columns: list[str]) -> bool:
        """Whether a row spanning lines `first`..`last` (1-based) is one row with a multi-line value.

        A quote that is never closed makes the csv module swallow the rest of the file into one
        value; a stray quote closed by a later one swallows the rows in between. Either way rows
        vanish silently, so both are a problem naming the line where the quote opened: the first
        when the file ends inside the quotes, the second when a swallowed line reads as a row of its
        own (as many values as the header, a media file in the file_path column).
        """
        opened = _unclosed_quote(physical[first - 1 : last], first)
        if opened is not None:
            self._problem(
                f"line {opened}",
                f"a quoted value opens on line {opened} and is never closed: the file ends inside it"
                + (f", so the {_lines(last - opened)} after it would be read as one value and their rows lost"
                   if last > opened else ""),
                "malformed_metadata",
                'close the quote on that line, or write a literal quote inside a quoted value as ""',
            )
            return False
        position = columns.index("file_path")
        for number in range(first + 1, last + 1):
            cells = next(csv.reader([physical[number - 1]]), [])
            if len(cells) == len(columns) and os.path.splitext(cells[position].strip())[1].lower() in _MEDIA_SUFFIXES:
                self._problem(
                    f"line {first}",
                    f"the row on line {first} runs to line {last} inside a quoted value, swallowing line {number}, "
                    f"which reads as a row of its own ({cells[position].strip()}): a quote is not closed where "
                    "it should be",
                    "malformed_metadata",
                    f'close the quote on line {first}, or write a literal quote inside a quoted value as ""',
                )
                return False
        return True

    # --- entries ---------------------------------------------------------------------------------

    def add(self, entry: Mapping[str, Any], where: str) -> None:
        media = entry.get("file_path")
        if media is None:
            self._problem(
                where, "no file_path", "missing_key", "give every entry the path of its video or image"
            )
            return
        if not isinstance(media, str) or not media:
            self._problem(
                where,
                f"file_path is {media!r}, not a path",
                "bad_value",
                "write file_path as a non-empty string",
            )
            return
        kind = entry.get("type", "image")
        if kind not in KINDS:
            self._problem(
                where,
                f'type is {kind!r}; it must be "video" or "image"',
                "bad_type",
                'write type as "video" or "image" (an absent type means image, as in VideoX-Fun)',
            )
            return
        index = len(self.records)
        problems: list[Problem] = []
        control = camera = meta_info = None
        value = entry.get("control_file_path")
        if isinstance(value, str) and value:
            path = self.resolve(value)
            if is_camera_file(value):
                camera = path
            else:
                control = path
        elif value not in (None, ""):
            problems.append(
                self._sample_problem(
                    index,
                    media,
                    where,
                    f"control_file_path is {value!r}, not a path",
                    "bad_value",
                    "write control_file_path as a string or null",
                )
            )
        value = entry.get(META_INFO_KEY)
        if isinstance(value, str) and value:
            meta_info = self.resolve(value)
        elif value not in (None, ""):
            problems.append(
                self._sample_problem(
                    index,
                    media,
                    where,
                    f"meta_info is {value!r}, not a path",
                    "bad_value",
                    "write meta_info as the path of a JSON file",
                )
            )
        size: dict[str, int | None] = {}
        for key in ("width", "height"):
            size[key], message = _positive_int(entry.get(key))
            if message:
                problems.append(
                    self._sample_problem(
                        index,
                        media,
                        where,
                        f"{key} is {message}",
                        "bad_value",
                        f"write {key} as a whole number of pixels, or leave it out",
                    )
                )
        extra = {k: v for k, v in entry.items() if k not in NATIVE_KEYS and k != META_INFO_KEY}
        self.records.append(
            Record(
                media=self.resolve(media),
                kind=kind,
                control=control,
                camera=camera,
                caption=entry.get("text"),  # absent -> None; a non-string caption is `data check`'s to report
                meta_info=meta_info,
                width=size["width"],
                height=size["height"],
                extra=extra,
                source=f"{self.path} {where}",
            )
        )
        self.problems += problems

    def _problem(self, where: str, message: str, code: str, fix: str) -> None:
        self.problems.append(Problem(message=message, file=str(self.path), where=where, code=code, fix=fix))

    def _sample_problem(
        self, index: int, media: str, where: str, message: str, code: str, fix: str
    ) -> Problem:
        return Problem(
            message=f"{message} ({media})", file=str(self.path), sample=index, where=where, code=code, fix=fix
        )


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def _unclosed_quote(lines: list[str], first: int) -> int | None:
    """The line number (lines start at `first`) where a quoted value opens and never closes, if one does.

    Follows the csv module's default dialect: a quote opens a value only at the start of a field,
    `""` inside quotes is a literal quote, and a quote elsewhere is an ordinary character.
    """
    in_quotes, field_start, opened = False, True, None
    for number, text in enumerate(lines, start=first):
        position = 0
        while position < len(text):
            char = text[position]
            if in_quotes:
                if char == '"':
                    if text.startswith('"', position + 1):
                        position += 1
                    else:
                        in_quotes = False
            elif char == '"' and field_start:
                in_quotes, opened = True, number
            field_start = not in_quotes and char in ",\r\n"
            position += 1
    return opened if in_quotes else None


def _positive_int(value: Any) -> tuple[int | None, str]:
    """(the value as an int, "") or (None, why not). None and "" mean absent."""
    if value is None or value == "":
        return None, ""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None or number <= 0:
        return None, f"{value!r}, not a positive whole number"
    return number, ""


# --- writing ---------------------------------------------------------------------------------------


def write_videox(
    records: Iterable[Record],
    out_dir: str | os.PathLike[str],
    *,
    filename: str | None = None,
    as_csv: bool = False,
    skip_unrepresentable: bool = False,
) -> Path:
    """Write `OUT/metadata.json` (or `metadata.csv` with `as_csv`, or a `filename` ending in .csv).

    Paths under `out_dir` are written relative to it (read them back with
    `--train_data_dir OUT`), others absolute. Returns the metadata file's path.
    """
    out = Path(out_dir)
    name = filename or ("metadata.csv" if as_csv else "metadata.json")
    as_csv = as_csv or name.lower().endswith(".csv")
    path = out / name
    portable = Portable(out)
    entries = []
    for index, record in enumerate(records):
        entry = _entry(record, index, portable, as_csv=as_csv, skip=skip_unrepresentable)
        if entry is not None:
            entries.append(entry)
    write_text_atomic(path, _csv_text(entries) if as_csv else dump_json_list(entries))
    return path


def _entry(
    record: Record, index: int, portable: Portable, *, as_csv: bool, skip: bool
) -> dict[str, Any] | None:
    def refuse(reason: str, fix: str) -> None:
        unrepresentable(record, index, "VideoX-Fun", reason, fix, skip=skip)

    if record.control and record.camera:
        return refuse(
            "it has both a control video and a camera trajectory; control_file_path holds one",
            "keep one of the two",
        )
    if record.camera and not is_camera_file(record.camera):
        return refuse(
            f"its camera file {record.camera} does not end in .txt, which is how VideoX-Fun tells "
            "camera trajectories from control videos",
            "rename the camera file to .txt",
        )
    if record.control and is_camera_file(record.control):
        return refuse(
            f"its control video {record.control} ends in .txt, so it would be read as a camera file",
            "give the control video a video suffix",
        )
    control = record.control or record.camera
    entry: dict[str, Any] = {
        "file_path": portable(record.media),
        "control_file_path": portable(control) if control else None,
    }
    if record.caption is not None:
        entry["text"] = record.caption
    entry["type"] = record.kind
    if record.width is not None:
        entry["width"] = record.width
    if record.height is not None:
        entry["height"] = record.height
    if record.meta_info is not None:
        entry[META_INFO_KEY] = portable(record.meta_info)
    for key, value in record.extra.items():
        if key in NATIVE_KEYS or key == META_INFO_KEY:
            return refuse(f"its extra key {key!r} is a VideoX-Fun key", f"rename the extra key {key!r}")
        entry[key] = value
    if as_csv:
        # A CSV cell holds text: numbers are written as digits (and read back as text, except
        # width/height); lists, objects and booleans have no faithful spelling.
        for key, value in entry.items():
            allowed = (str,) if key == "text" else (str, int, float)
            if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
                what = "caption" if key == "text" else f"value of {key!r}"
                return refuse(
                    f"its {what} is a {json_type(value)}, which a CSV cell cannot hold",
                    "write JSON metadata instead of CSV",
                )
    return entry


def _csv_text(entries: list[dict[str, Any]]) -> str:
    columns: dict[str, None] = dict.fromkeys(("file_path", "control_file_path", "text", "type"))
    for entry in entries:
        columns.update(dict.fromkeys(entry))
    buffer = io.StringIO(newline="")
    # Quoting every cell keeps a caption's line breaks (even a lone "\r") inside its cell.
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: "" if v is None else v for k, v in entry.items()})
    return buffer.getvalue()


__all__ = ["KINDS", "LAYOUT", "META_INFO_KEY", "NATIVE_KEYS", "read_videox", "write_videox"]

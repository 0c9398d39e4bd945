"""Helpers shared by the seed-layout importers and writers: paths, JSON entries with their line
numbers, atomic writes, materialising media, and the "this record cannot be written" error."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidctrl.data.records import DataError, Problem, Record

logger = logging.getLogger("vidctrl.data.layouts")

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class Resolver:
    """Turns metadata paths into absolute ones: joined to `root`, or to the working folder when
    there is none (as `os.path.join` / `Path.joinpath` do in the originals), then normalised.

    An absolute path stays itself. The disk is not touched: symlinks are kept, and a missing file
    is `data check`'s business. `relative` records whether any relative path was met.
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.base = os.path.abspath(root if root is not None else os.curdir)
        self.relative = False

    def __call__(self, path: str) -> str:
        if os.path.isabs(path):
            return os.path.normpath(path)
        self.relative = True
        return os.path.normpath(os.path.join(self.base, path))


class Portable:
    """Paths as a dataset under `base` stores them: relative (POSIX separators) when under `base`,
    absolute otherwise."""

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.prefix = os.path.join(os.path.abspath(base), "")

    def __call__(self, path: str) -> str:
        full = os.path.abspath(path)
        if full.startswith(self.prefix):
            return full[len(self.prefix) :].replace(os.sep, "/")
        return full


def relative_paths_warning(file: Path, flag: str) -> Problem:
    """One warning per metadata file whose relative paths were resolved against the working folder."""
    return Problem(
        message=f"relative paths are resolved against the current folder {os.getcwd()}, "
        "as the original trainer does",
        file=str(file),
        code="relative_to_cwd",
        fix=f"pass {flag} FOLDER if they are relative to another folder"
        if flag
        else "write absolute paths if the dataset is read from another folder",
        severity="warning",
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside the destination and rename, so a reader never sees half a metadata file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def unrepresentable(record: Record, index: int, layout: str, reason: str, fix: str, *, skip: bool) -> None:
    """Raise (or, when told to skip, log) that `record` has no place in `layout`."""
    problem = Problem(
        message=f"cannot be written in the {layout} layout: {reason}",
        file=record.media,
        sample=index,
        code="unrepresentable",
        fix=fix + " (or pass skip_unrepresentable=True to leave such samples out)",
    )
    if not skip:
        raise DataError(problem)
    logger.warning("skipped: %s", problem)


# --- JSON lists, entry by entry --------------------------------------------------------------


@dataclass
class JsonEntry:
    index: int
    line: int
    value: Any


class _Lines:
    """Offset -> line number for increasing offsets: counts the newlines since the last offset,
    so a large file costs one pass and no index."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._offset = 0
        self._line = 1

    def line(self, offset: int) -> int:
        if offset < self._offset:
            self._offset, self._line = 0, 1
        self._line += self._text.count("\n", self._offset, offset)
        self._offset = offset
        return self._line


def _syntax_problem(path: Path, error: json.JSONDecodeError) -> Problem:
    return Problem(
        message=f"malformed JSON: {error.msg}",
        file=str(path),
        where=f"line {error.lineno} column {error.colno}",
        code="malformed_metadata",
        fix="fix the JSON at that place (`python -m json.tool FILE` shows the same position)",
    )


def read_text(path: Path, *, what: str, fix: str) -> tuple[str | None, Problem | None]:
    """The text of a metadata file, or the problem that stops it being read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, Problem(message=f"{what} not found", file=str(path), code="missing_metadata", fix=fix)
    except OSError as exc:
        return None, Problem(
            message=f"cannot read {what}: {exc.strerror}", file=str(path), code="missing_metadata", fix=fix
        )
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, Problem(
            message="not UTF-8 text",
            file=str(path),
            where=f"line {line}",
            code="malformed_metadata",
            fix="save the file as UTF-8",
        )


def read_json_list(path: Path, *, what: str, fix: str) -> tuple[list[JsonEntry], list[Problem]]:
    """The entries of a JSON list with the line each starts on, or the problem that stops reading.

    The list is decoded element by element (`raw_decode` runs the same C scanner as `json.load`),
    which gives each entry's line at no extra cost, so an error about entry 17 can say where it is.
    A syntax error anywhere makes the whole file unreadable: no entries are returned with it.
    """
    text, problem = read_text(path, what=what, fix=fix)
    if text is None:
        return [], [problem] if problem else []
    decoder = json.JSONDecoder()
    lines = _Lines(text)
    idx = _JSON_SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if idx == len(text):
        return [], [
            Problem(
                message=f"{what} is empty",
                file=str(path),
                code="malformed_metadata",
                fix="write a JSON list of entries: [{...}, {...}]",
            )
        ]
    if text[idx] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [_syntax_problem(path, exc)]
        return [], [
            Problem(
                message=f"the top level is a JSON {json_type(value)}, not a list of entries",
                file=str(path),
                where=f"line {lines.line(idx)}",
                code="malformed_metadata",
                fix="write a JSON list of entries: [{...}, {...}]",
            )
        ]
    entries: list[JsonEntry] = []
    try:
        for index, (start, value) in enumerate(_list_items(text, idx, decoder)):
            entries.append(JsonEntry(index=index, line=lines.line(start), value=value))
    except json.JSONDecodeError as exc:
        return [], [_syntax_problem(path, exc)]
    return entries, []


def _list_items(text: str, idx: int, decoder: json.JSONDecoder) -> Iterator[tuple[int, Any]]:
    """(start offset, value) of each element of the JSON list opening at `text[idx]`."""
    idx = _JSON_SPACE.match(text, idx + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", idx):
        idx += 1
    else:
        while True:
            value, end = decoder.raw_decode(text, idx)
            yield idx, value
            idx = _JSON_SPACE.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(",", idx):
                idx = _JSON_SPACE.match(text, idx + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", idx):
                idx += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, idx)
    idx = _JSON_SPACE.match(text, idx).end()  # type: ignore[union-attr]
    if idx != len(text):
        raise json.JSONDecodeError("Extra data after the list", text, idx)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def dump_json_list(entries: list[dict[str, Any]]) -> str:
    """A JSON list with one entry per line: fast (the C encoder), diffable, and entry i sits on
    line i + 2, so an error's line number points at its entry."""
    if not entries:
        return "[]\n"
    body = ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries)
    return f"[\n{body}\n]\n"


# --- materialising media under a layout's folders -----------------------------------------------


def materialize(src: str, dest: Path, *, copy: bool, root: Path, index: int) -> None:
    """Make `dest` show the file `src`: a symlink (relative when `src` lies under `root`) or a copy.

    Existing links are replaced (no data is lost); an existing regular file that is not `src`
    itself is never overwritten.
    """
    src_abs = os.path.abspath(src)
    origin = os.path.realpath(src_abs)  # what a copy copies, resolved before any link is removed
    if os.path.lexists(dest):
        same = (
            os.path.abspath(dest) == src_abs
            or os.path.realpath(dest) == origin
            or (os.path.exists(dest) and os.path.exists(origin) and os.path.samefile(dest, origin))
        )
        if same and not (copy and dest.is_symlink()):
            return
        if not dest.is_symlink() and not same:
            raise DataError(
                Problem(
                    message=f"{dest} already exists and is another file than {src_abs}",
                    file=src_abs,
                    sample=index,
                    code="output_exists",
                    fix="write into an empty folder, or remove that file",
                )
            )
        dest.unlink()  # a link: replacing it loses no data
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        try:
            shutil.copy2(origin, dest)
        except FileNotFoundError:
            raise DataError(
                Problem(
                    message="cannot copy a file that does not exist",
                    file=src_abs,
                    sample=index,
                    code="missing_file",
                    fix="fix the path in the source dataset, or symlink instead of copying",
                )
            ) from None
        return
    try:
        target = os.path.relpath(src_abs, dest.parent) if Path(src_abs).is_relative_to(root) else src_abs
    except ValueError:  # another drive (Windows)
        target = src_abs
    os.symlink(target, dest)


__all__ = [
    "JsonEntry",
    "Portable",
    "Resolver",
    "dump_json_list",
    "json_type",
    "materialize",
    "read_json_list",
    "read_text",
    "relative_paths_warning",
    "unrepresentable",
    "write_text_atomic",
]

"""The vidctrl manifest: one JSON object per line, held in memory as columns.

A million-record dataset must load and plan its buckets in seconds, so the manifest is read with
pyarrow's multi-threaded JSON reader into a columnar table, numeric columns are exposed as numpy
arrays for vectorised planning, and a `Record` is materialised only when a sample is loaded.

On disk each line is `Record.to_dict()`. Paths under the manifest's folder are stored relative
to it, so a dataset folder can be moved as a whole; other paths are absolute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from vidctrl.data.records import PROBED_FIELDS, ImportResult, Problem, Record

PATH_FIELDS = ("media", "control", "camera", "meta_info")
TEXT_FIELDS = ("kind", "caption")
INT_FIELDS = ("frames", "width", "height", "control_frames", "control_width", "control_height")
FLOAT_FIELDS = ("fps", "control_fps")

SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in (*PATH_FIELDS, *TEXT_FIELDS)]
    + [pa.field(name, pa.int64()) for name in INT_FIELDS]
    + [pa.field(name, pa.float64()) for name in FLOAT_FIELDS]
)
assert set(PROBED_FIELDS) == set(INT_FIELDS) | set(FLOAT_FIELDS)


class Manifest:
    """Records of a dataset as columns; `manifest[i]` gives the `Record` of sample i."""

    def __init__(self, table: pa.Table, *, origin: str = "") -> None:
        for name in SCHEMA.names:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
        self.table = table
        self.origin = origin
        self._numpy: dict[str, np.ndarray] = {}

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Sequence[Record], *, origin: str = "") -> Manifest:
        columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        extras: list[str | None] = []
        sources: list[str] = []
        for record in records:
            for name in SCHEMA.names:
                columns[name].append(getattr(record, name))
            extras.append(json.dumps(record.extra, ensure_ascii=False) if record.extra else None)
            sources.append(record.source)
        table = pa.table({name: pa.array(values, SCHEMA.field(name).type) for name, values in columns.items()})
        table = table.append_column("extra_json", pa.array(extras, pa.string()))
        table = table.append_column("source", pa.array(sources, pa.string()))
        return cls(table, origin=origin)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a JSONL manifest fast; malformed lines raise a DataError naming line and column."""
        from vidctrl.data.records import DataError

        path = Path(path)
        if not path.is_file():
            raise DataError(Problem(message="manifest file not found", file=str(path), code="missing_metadata",
                                    fix="pass the manifest written by `vidctrl data convert --to manifest`"))
        try:
            table = pa_json.read_json(
                path,
                read_options=pa_json.ReadOptions(block_size=1 << 24),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=SCHEMA, unexpected_field_behavior="infer", newlines_in_values=False
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # pyarrow says little about where; the slow reader finds the exact line and column.
            result = read_manifest_records(path)
            errors = [p for p in result.problems if p.severity == "error"]
            if errors:
                raise DataError(errors[0]) from None
            return cls.from_records(result.records, origin=str(path))
        if "extra" in table.column_names:
            extras = [None if v is None else json.dumps(v, ensure_ascii=False) for v in table["extra"].to_pylist()]
            table = table.drop_columns(["extra"]).append_column("extra_json", pa.array(extras, pa.string()))
        else:
            table = table.append_column("extra_json", pa.nulls(table.num_rows, pa.string()))
        unknown = [n for n in table.column_names if n not in SCHEMA.names and n != "extra_json"]
        if unknown:
            raise DataError(
                Problem(
                    message=f"unknown keys {unknown} in the manifest",
                    file=str(path),
                    code="malformed_metadata",
                    fix="keep only Record fields (media, kind, control, camera, caption, meta_info, probed sizes, extra)",
                )
            )
        base = str(path.resolve().parent) + os.sep
        for name in PATH_FIELDS:
            column = table[name]
            absolute = pc.if_else(
                pc.starts_with(column, os.sep), column, pc.binary_join_element_wise(base, column, "")
            )
            table = table.set_column(table.schema.get_field_index(name), name, absolute)
        return cls(table, origin=str(path))

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSONL (atomically: written beside it and renamed into place)."""
        return write_manifest(self.records(), path)

    # --- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> Record:
        row = {name: self.table[name][index].as_py() for name in SCHEMA.names}
        extra_json = self.table["extra_json"][index].as_py()
        if "source" in self.table.column_names:
            source = self.table["source"][index].as_py()
        else:
            source = f"{self.origin} line {index + 1}"
        return Record(**row, extra=json.loads(extra_json) if extra_json else {}, source=source)

    def records(self) -> list[Record]:
        return [self[i] for i in range(len(self))]

    def numeric(self, name: str) -> np.ndarray:
        """A probed column as a numpy array; unknown values are -1 (ints) or nan (floats)."""
        if name not in self._numpy:
            column = self.table[name]
            fill = -1 if name in INT_FIELDS else float("nan")
            self._numpy[name] = column.fill_null(fill).to_numpy()
        return self._numpy[name]

    def is_video(self) -> np.ndarray:
        if "is_video" not in self._numpy:
            self._numpy["is_video"] = pc.equal(self.table["kind"].fill_null("video"), "video").to_numpy(
                zero_copy_only=False
            )
        return self._numpy["is_video"]

    def unprobed(self) -> np.ndarray:
        """Indices of records whose size or length is unknown (they need a probe before planning)."""
        missing = (self.numeric("width") < 0) | (self.numeric("height") < 0) | (self.numeric("frames") < 0)
        return np.flatnonzero(missing)

    def with_probed(self, index: np.ndarray, values: dict[str, Sequence[Any]]) -> Manifest:
        """A copy with the probed columns of `index` rows filled in."""
        table = self.table
        for name, new_values in values.items():
            column = table[name].to_pylist()
            for i, value in zip(index.tolist(), new_values, strict=True):
                column[i] = value
            table = table.set_column(
                table.schema.get_field_index(name), name, pa.array(column, SCHEMA.field(name).type)
            )
        return Manifest(table, origin=self.origin)


def _relative(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value)
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return value


def write_manifest(records: Iterable[Record], path: str | os.PathLike[str]) -> Path:
    """Write records as a JSONL manifest; paths under the manifest's folder become relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            row = record.to_dict()
            for name in PATH_FIELDS:
                row[name] = _relative(row[name], base)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest_records(path: str | os.PathLike[str]) -> ImportResult:
    """Read a JSONL manifest line by line into Records, reporting every malformed line."""
    path = Path(path)
    if not path.is_file():
        problem = Problem(message="manifest file not found", file=str(path), code="missing_metadata",
                          fix="pass the manifest written by `vidctrl data convert --to manifest`")
        return ImportResult(records=[], problems=[problem], layout="manifest")
    base = path.resolve().parent
    records: list[Record] = []
    problems: list[Problem] = []
    known = {*SCHEMA.names, "extra"}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(
                        message=f"malformed JSON: {exc.msg}",
                        file=str(path),
                        where=f"line {line_number} column {exc.colno}",
                        code="malformed_metadata",
                        fix="each line of a manifest must be one JSON object",
                    )
                )
                continue
            if not isinstance(row, dict) or not isinstance(row.get("media"), str):
                problems.append(
                    Problem(
                        message="a manifest line must be a JSON object with a 'media' path",
                        file=str(path),
                        where=where,
                        code="missing_key",
                        fix="regenerate the manifest with `vidctrl data convert --to manifest`",
                    )
                )
                continue
            unknown = sorted(set(row) - known)
            if unknown:
                problems.append(
                    Problem(
                        message=f"unknown keys {unknown}",
                        file=str(path),
                        where=where,
                        code="malformed_metadata",
                        fix="move layout-specific keys under 'extra'",
                    )
                )
                continue
            for name in PATH_FIELDS:
                if row.get(name):
                    row[name] = str(base / row[name])
            records.append(Record(**row, source=f"{path} {where}"))
    return ImportResult(records=records, problems=problems, layout="manifest")

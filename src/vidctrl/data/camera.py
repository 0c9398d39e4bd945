"""Camera trajectories of Control-Camera datasets: the CameraCtrl / RealEstate10K pose `.txt`.

VideoX-Fun (Wan2.1-Fun Control-Camera) reads these with `process_pose_file`, taken from CameraCtrl:
the first line is skipped (a YouTube URL in RealEstate10K and CameraCtrl files, empty in
VideoX-Fun's samples) and every other line holds 19 numbers::

    frame fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3

`frame` is a timestamp (RealEstate10K: microseconds) or a frame id and is not used for training;
fx and cx are normalised by the image width, fy and cy by its height; the two zeros are kept as
read; the last twelve numbers are the 3x4 world-to-camera matrix [R | t], row by row.

Only parsing lives here. The Plücker ray embedding built from a trajectory belongs to the camera
control adapter.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidctrl.data.records import DataError, Problem

VALUES_PER_LINE = 19
CAMERA_SUFFIX = ".txt"

_FORMAT = "frame fx fy cx cy 0 0 and the 12 numbers of a 3x4 world-to-camera matrix"


def is_camera_file(path: str | os.PathLike[str]) -> bool:
    """True for a camera trajectory path. VideoX-Fun tells them from control videos by `.txt`."""
    return os.fspath(path).lower().endswith(CAMERA_SUFFIX)


@dataclass(frozen=True, eq=False)
class CameraTrajectory:
    """One camera pose per frame, as stored in the file (nothing is rescaled or made relative)."""

    intrinsics: np.ndarray  # (N, 4) float64: fx, fy, cx, cy, normalised by width / height
    w2c: np.ndarray  # (N, 3, 4) float64: world-to-camera [R | t]
    frame_ids: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) float64
    reserved: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N, 2): the "0 0" columns
    header: str = ""  # the skipped first line, kept so that a rewrite is identical

    def __post_init__(self) -> None:
        n = len(self.intrinsics)
        if self.frame_ids is None:
            object.__setattr__(self, "frame_ids", np.arange(n, dtype=np.float64))
        if self.reserved is None:
            object.__setattr__(self, "reserved", np.zeros((n, 2)))
        shapes = {
            "intrinsics": (self.intrinsics.shape, (n, 4)),
            "w2c": (self.w2c.shape, (n, 3, 4)),
            "frame_ids": (self.frame_ids.shape, (n,)),
            "reserved": (self.reserved.shape, (n, 2)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"CameraTrajectory.{name} has shape {got}, expected {want}")
        if "\n" in self.header or "\r" in self.header:
            raise ValueError("the header of a camera file is one line")

    def __len__(self) -> int:
        return len(self.intrinsics)

    @property
    def world_to_camera(self) -> np.ndarray:
        """(N, 4, 4) homogeneous world-to-camera matrices."""
        out = np.tile(np.eye(4), (len(self), 1, 1))
        out[:, :3, :] = self.w2c
        return out

    @property
    def camera_to_world(self) -> np.ndarray:
        """(N, 4, 4) camera-to-world matrices (the inverses), as CameraCtrl's `Camera.c2w_mat`."""
        return np.linalg.inv(self.world_to_camera)

    def to_array(self) -> np.ndarray:
        """(N, 19) rows as in the file: frame, fx, fy, cx, cy, the two reserved values, then [R | t]
        row by row (VideoX-Fun's `process_pose_file(..., return_poses=True)`)."""
        return np.concatenate(
            [self.frame_ids[:, None], self.intrinsics, self.reserved, self.w2c.reshape(-1, 12)], axis=1
        )

    @classmethod
    def from_array(cls, rows: np.ndarray, header: str = "") -> CameraTrajectory:
        """The inverse of `to_array`."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != VALUES_PER_LINE:
            raise ValueError(f"camera rows must have shape (N, {VALUES_PER_LINE}), got {rows.shape}")
        return cls(
            frame_ids=rows[:, 0].copy(),
            intrinsics=rows[:, 1:5].copy(),
            reserved=rows[:, 5:7].copy(),
            w2c=rows[:, 7:].reshape(-1, 3, 4).copy(),
            header=header,
        )

    def resampled(self, num_frames: int) -> CameraTrajectory:
        """Every number linearly interpolated to `num_frames` rows, first and last rows kept.

        This is how VideoX-Fun fits a camera file to its video (its bucket path runs
        `F.interpolate(rows[None, None], size=(len(video), 19), mode="bilinear",
        align_corners=True)` and then picks the sampled frames), so a file of 81 poses drives a
        video of any length. Matrices are interpolated entry by entry, as there.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        rows = self.to_array()
        positions = np.linspace(0.0, len(rows) - 1, num_frames)
        low = np.floor(positions).astype(int)
        high = np.minimum(low + 1, len(rows) - 1)
        weight = (positions - low)[:, None]
        return CameraTrajectory.from_array(rows[low] * (1 - weight) + rows[high] * weight, header=self.header)


class CameraFileError(DataError):
    """A camera file that cannot be read; its problem names the file and the line."""


def _error(path: str, where: str, message: str, fix: str = "") -> CameraFileError:
    return CameraFileError(
        Problem(
            message=message,
            file=path,
            where=where,
            code="malformed_camera",
            fix=fix or f"each line after the first must hold {VALUES_PER_LINE} numbers: {_FORMAT}",
        )
    )


def parse_camera_lines(lines: Iterable[str], source: str = "<camera>") -> CameraTrajectory:
    """Parse the lines of a camera file; `source` names it in errors. Raises `CameraFileError`."""
    header: str | None = None
    rows: list[list[float]] = []
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if header is None:
            header = text  # skipped unread, as VideoX-Fun and CameraCtrl do
            continue
        tokens = text.split()
        if not tokens:  # blank lines (a trailing newline) carry nothing; the originals crash on them
            continue
        if len(tokens) != VALUES_PER_LINE:
            raise _error(
                source, f"line {number}", f"{len(tokens)} values, expected {VALUES_PER_LINE} ({_FORMAT})"
            )
        values = []
        for column, token in enumerate(tokens, start=1):
            try:
                value = float(token)
            except ValueError:
                raise _error(source, f"line {number}, value {column}", f"{token!r} is not a number") from None
            if not np.isfinite(value):
                raise _error(source, f"line {number}, value {column}", f"{token!r} is not a finite number")
            values.append(value)
        if values[1] <= 0 or values[2] <= 0:
            raise _error(
                source,
                f"line {number}",
                f"focal lengths fx={tokens[1]}, fy={tokens[2]} must be positive",
                "fx and fy are the focal lengths divided by the image width and height",
            )
        rows.append(values)
    if header is None:
        raise _error(source, "", "the camera file is empty")
    if not rows:
        raise _error(
            source, "", "no camera poses after the first line (the first line is a header and is skipped)"
        )
    return CameraTrajectory.from_array(np.asarray(rows, dtype=np.float64), header=header)


def read_camera_txt(path: str | os.PathLike[str]) -> CameraTrajectory:
    """Read a camera trajectory file. Raises `CameraFileError` (a `DataError`) naming the file and
    line of any fault."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return parse_camera_lines(handle, source=path)
    except FileNotFoundError:
        raise CameraFileError(
            Problem(
                message="camera file not found",
                file=path,
                code="missing_file",
                fix="fix control_file_path in the metadata",
            )
        ) from None
    except UnicodeDecodeError:
        raise _error(path, "", "not a text file", "a camera file is UTF-8 text") from None


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def format_camera_txt(trajectory: CameraTrajectory) -> str:
    """The file text of a trajectory; numbers are written so that they read back exactly."""
    lines = [trajectory.header]
    for i in range(len(trajectory)):
        values = [
            trajectory.frame_ids[i],
            *trajectory.intrinsics[i],
            *trajectory.reserved[i],
            *trajectory.w2c[i].reshape(-1),
        ]
        first = _number(values[0])
        lines.append(" ".join([first, *(repr(float(v)) for v in values[1:])]))
    return "\n".join(lines) + "\n"


def write_camera_txt(path: str | os.PathLike[str], trajectory: CameraTrajectory) -> Path:
    """Write a trajectory in the format VideoX-Fun reads (for sample data and tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(format_camera_txt(trajectory), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_camera_txt(path: str | os.PathLike[str]) -> list[Problem]:
    """Problems of a camera file, for `data check`: a parse error, or a header that is a pose."""
    try:
        trajectory = read_camera_txt(path)
    except DataError as exc:
        return [exc.problem]
    tokens = trajectory.header.split()
    if len(tokens) == VALUES_PER_LINE:
        try:
            [float(t) for t in tokens]
        except ValueError:
            return []
        return [
            Problem(
                message="the first line looks like a camera pose, but the first line is a header and is skipped",
                file=os.fspath(path),
                where="line 1",
                code="camera_header",
                severity="warning",
                fix="put a header line (a URL or an empty line) before the first pose",
            )
        ]
    return []


__all__ = [
    "CAMERA_SUFFIX",
    "VALUES_PER_LINE",
    "CameraFileError",
    "CameraTrajectory",
    "check_camera_txt",
    "format_camera_txt",
    "is_camera_file",
    "parse_camera_lines",
    "read_camera_txt",
    "write_camera_txt",
]

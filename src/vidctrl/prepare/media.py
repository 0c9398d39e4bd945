"""Video in and out for data preparation: exact frame rates, one sequential decode, streaming writes.

`vidctrl.data.video` reads the frames a training sample needs and writes whole clips; preparing data
needs the opposite: every frame once, in order, and two videos (the skeletons and, when a clip is
re-encoded, the target) written side by side while the frames stream through.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidctrl.data.video import MediaError, frame_to_rgb


def source_rate(path: str | os.PathLike[str]) -> Fraction:
    """The frame rate of a video as an exact fraction (average rate, else FFmpeg's guess)."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise MediaError(path, "FFmpeg cannot tell the frame rate", "re-encode it with a constant frame rate")
    return Fraction(rate)


def iter_frames(path: str | os.PathLike[str], count: int) -> Iterator[np.ndarray]:
    """The first `count` frames of a video, in order, as uint8 RGB; every frame decoded once."""
    if count <= 0:
        return
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # a full sequential decode: frame threads pay off here
            for index, frame in enumerate(container.decode(stream)):
                yield frame_to_rgb(frame)  # turned upright as its display matrix says
                if index + 1 >= count:
                    return
    except av.FFmpegError as exc:
        raise MediaError(path, f"decoding failed ({exc})", "re-encode the video or remove it") from None


class VideoWriter:
    """An H.264 (yuv420p) file written frame by frame beside its destination, renamed on `close`."""

    def __init__(self, path: Path, rate: Fraction, *, crf: int) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(os.fspath(self.tmp), mode="w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf)}
        self.frames = 0
        self.closed = False

    def write(self, frame: np.ndarray) -> None:
        if self.frames == 0:
            self.stream.height, self.stream.width = frame.shape[:2]
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self.container.mux(self.stream.encode(video_frame))
        self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()
        self.closed = True
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            # Closing flushes what was muxed; a writer aborted because encoding failed may fail again.
            with contextlib.suppress(av.FFmpegError):
                self.container.close()
        self.tmp.unlink(missing_ok=True)


def place_source(source: str, dest: Path, mode: str) -> None:
    """Put the source video at `dest` unchanged: a copy (written beside it, then renamed) or a symlink."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial{dest.suffix}")
    tmp.unlink(missing_ok=True)
    if mode == "symlink":
        os.symlink(os.path.abspath(source), tmp)
    else:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


__all__ = ["VideoWriter", "iter_frames", "place_source", "source_rate"]

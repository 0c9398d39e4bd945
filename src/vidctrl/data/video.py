"""Video and image I/O on PyAV: probe, decode exactly the requested frames, write."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
    gop: int | None = None,
) -> None:
    """Write uint8 RGB frames (H, W, 3) to `path` as yuv420p video.

    The file is written beside its destination and renamed into place, so a reader (or a killed
    writer) never sees half a video. `gop` sets the keyframe interval (tests use it to exercise
    seeking); H and W must be even for yuv420p.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf)} if codec == "libx264" else {}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options["keyint"] = str(gop)
                options["min-keyint"] = str(gop)
                options["scenecut"] = "0"
        stream.options = options
        for i, frame in enumerate(frames):
            if i == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    os.replace(tmp, path)

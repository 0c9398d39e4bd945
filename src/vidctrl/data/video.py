"""Video and image I/O on PyAV and Pillow: probe, decode exactly the requested frames, write.

Frame index `i` of a video means the i-th frame of a full sequential decode (display order), and
`read_frames` returns exactly those frames while decoding only what it must: it seeks to the
keyframe before each run of requested frames and decodes forward. Images are one-frame clips.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidctrl.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

# Default keyframe interval assumed, in seconds of video, until a decode shows the real one: it
# only decides whether reaching the next requested frame by decoding forward is cheaper than a seek.
_ASSUMED_GOP_SECONDS = 2.0
# A seek flushes the decoder, which then decodes again the few frames it held for reordering; it
# pays off only when it skips more frames than that.
_MIN_FRAMES_SAVED_BY_SEEK = 4
# A demuxer that indexes by decode time can land on a keyframe after the requested frame; each retry
# asks for an earlier one. Beyond this many, decode sequentially.
_MAX_SEEK_RETRIES = 8
# Frame threads add a delay of one frame per thread and make every seek flush them all; loader
# workers already use every core. On 720p H.264 clips (benchmarks/README.md) "AUTO" was 8% slower
# than FFmpeg's default (slice threads, which x264 streams without slices do not use).
_THREAD_TYPE: str | None = None

_IMAGE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError)
_CHECK_PATH = "check the path (a relative path joins the data root)"
_TOO_SHORT_FIX = "re-encode it or remove the sample"
_COPY_AGAIN = "copy it again from its source, or remove the sample"
_REENCODE = (
    "re-encode it with `ffmpeg -i {name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`, or remove the sample"
)


class MediaError(UserError, ValueError):
    """A media file that cannot be used as it is: `reason` says what is wrong, `fix` what to do.

    The message reads "<path>: <reason>; <fix>".
    """

    def __init__(self, path: str | os.PathLike[str], reason: str = "", fix: str = "") -> None:
        # Everything goes to args so that the error survives pickling (DataLoader workers re-raise it).
        super().__init__(str(path), reason, fix)
        self.path = str(path)
        self.reason = reason
        self.fix = fix

    def __str__(self) -> str:
        message = f"{self.path}: {self.reason}" if self.reason else self.path
        return f"{message}; {self.fix}" if self.fix else message


@dataclass(frozen=True)
class MediaInfo:
    """What a manifest stores about a media file.

    An image is a one-frame clip with `fps` 0.0: it has no time axis, and 0.0 cannot be mistaken
    for a real frame rate. `width` and `height` are the displayed ones: a video whose display matrix
    (or an image whose EXIF orientation) turns it by `rotation` degrees counter-clockwise, a multiple
    of 90, is decoded turned, so a phone's portrait video is portrait everywhere.
    A variable-frame-rate video's frames are placed in time by `frame_times`, not by `fps`.
    """

    kind: Literal["video", "image"]
    frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0
    variable_rate: bool = False  # frames of different durations: `fps` is only their average


def probe(path: str | os.PathLike[str], *, verify: bool = False) -> MediaInfo:
    """Kind, frame count, frame rate and size of a video or image, without decoding frames.

    The frame count comes from the container header when it has one (mp4, mov); otherwise (mkv,
    webm) packets are counted by demuxing, which reads the file but decodes nothing. Whether a file
    is an image is decided by opening it, with the suffix only choosing which library tries first.
    `verify` also runs `verify_decodable` on the container already open (`data check` opens each
    file once instead of twice: benchmarks/README.md).
    """
    path = _existing_file(path)
    image_name = path.suffix.lower() in IMAGE_SUFFIXES
    if image_name:
        try:
            return _probe_image(path, verify=verify)
        except _IMAGE_ERRORS:
            pass  # perhaps a video under an image name: let FFmpeg say what it is
    try:
        container = _open_container(path)
    except MediaError as error:
        if image_name:
            raise MediaError(path, "neither Pillow nor FFmpeg can read this image", _reencode(path)) from None
        try:
            return _probe_image(path, verify=verify)  # an image under a video name
        except _IMAGE_ERRORS:
            raise error from None
    with container:
        if _is_image_demuxer(container):
            try:
                return _probe_image(path, verify=verify)  # an image under a video name
            except _IMAGE_ERRORS:
                pass
        stream = _video_stream(container, path)
        rotation = _mp4_rotation(path) if _is_mp4(container) else None
        if rotation is None:
            rotation, read = _stream_rotation(container, stream, path)
        else:
            read = []
        timestamps: list[int | None] | None = None
        if stream.frames:
            frames = stream.frames
            entries = getattr(stream, "index_entries", None)  # mp4: every frame's time, from the header
            if entries is not None and len(entries) == frames:
                timestamps = [entry.timestamp for entry in entries]
        else:
            timestamps = read + _packet_times(container, stream)
            frames = len(timestamps)
        if frames <= 0:
            raise MediaError(path, "the video stream has no frames (is the file truncated?)", _COPY_AGAIN)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise MediaError(path, "FFmpeg cannot tell the frame size", _reencode(path))
        if rotation % 180:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate
        times = _seconds(timestamps, stream) if timestamps else None
        if times is not None:
            variable = is_variable_rate(times)
            if variable and times[-1] > 0:  # the real average; Matroska's stream rate is a nominal one
                rate = len(times) / (times[-1] + float(np.median(np.diff(times))))
        else:  # FFmpeg's guessed rate divides every timestamp; an average that differs means uneven frames
            guessed, average = stream.guessed_rate, stream.average_rate
            variable = bool(guessed and average and abs(float(average) / float(guessed) - 1.0) > 1e-3)
        info = MediaInfo("video", frames, float(rate) if rate else 0.0, width, height, rotation, variable)
        if verify:
            _verify_open(container, path, info)
        return info


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    *,
    info: MediaInfo | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frames `indices` of a video as uint8 RGB, shape (len(indices), H, W, 3), in the order asked.

    Indices may repeat and need not be sorted. The result equals a full sequential decode taken at
    the same indices, but only the frames from the keyframe before each run of requested frames to
    the last requested frame are decoded. Frames are located by their timestamps; a video whose
    timestamps do not map one-to-one onto frame numbers (variable frame rate, missing timestamps)
    is decoded sequentially from the start instead. `info` (from `probe` or the manifest) saves
    opening the file twice and lets an out-of-range index be reported before any decoding.
    An image is a one-frame video: only index 0 exists.

    `size` (height, width) scales every frame while it is converted to RGB (one swscale pass,
    bilinear), which costs less than converting at full size and resizing afterwards.
    """
    path = _existing_file(path)
    wanted, inverse = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1), return_inverse=True)
    if wanted.size == 0:
        raise ValueError(f"{path}: no frame indices requested")
    if wanted[0] < 0:
        raise MediaError(path, f"frame index {int(wanted[0])} is negative", "indices count from 0")
    if info is None and path.suffix.lower() in IMAGE_SUFFIXES:
        info = probe(path)
    if info is not None:
        _check_range(path, info.frames, int(wanted[-1]), info.kind)
    if info is not None and info.kind == "image":
        frames = _read_image(path, size)[None]
    else:
        frames = _read_video(path, wanted.tolist(), info, size)
    if wanted.size == inverse.size and (inverse == np.arange(inverse.size)).all():
        return frames  # already sorted and unique: no gather copy
    return frames[inverse]


def verify_decodable(path: str | os.PathLike[str], info: MediaInfo) -> None:
    """Raise MediaError unless the file decodes to its last frame; cheap enough for `data check`.

    A video is opened and seeked to its last keyframe; every packet from there to the end is read
    and the keyframe decoded, so that a file cut short after its header was written (a killed
    download, a full disk) is caught without decoding it.
    An empty file and bytes that are not media are caught on opening. An image is decoded in full.
    """
    path = _existing_file(path)
    if info.kind == "image":
        try:
            _read_image(path)
        except MediaError as error:
            raise MediaError(path, f"{error.reason} (it may be truncated)", error.fix) from None
        return
    with _open_container(path) as container:
        _verify_open(container, path, info)


def _verify_open(container: av.container.InputContainer, path: Path, info: MediaInfo) -> None:
    """`verify_decodable` on an open container (probed already, or just opened)."""
    last = info.frames - 1
    stream = _video_stream(container, path)
    timing = _Timing.of(stream)
    expected = _duration_in_frames(container, stream, timing)
    if expected is not None and expected > info.frames + 1:
        raise MediaError(
            path,
            f"truncated: the header gives a duration of {expected} frames, only {info.frames} are in the file",
            _COPY_AGAIN,
        )
    decoded = 0
    last_index = -1
    read_errors: list[str] = []
    try:
        if timing is not None:
            container.seek(timing.seek_ts(last), backward=True, any_frame=False, stream=stream)
        else:
            # Timestamps cannot name frame `last`; seek by time near the end and see what decodes.
            _seek_near_end(container)
        for packet in _demux_until_error(container, stream, read_errors):
            if packet.is_corrupt:  # the demuxer flags a packet that the end of the file cuts short
                read_errors.append("a packet is incomplete")
                break
            # Every packet up to the end must be there (that is what truncation takes away); only
            # keyframes are decoded, which proves the decoder accepts the stream at a fraction of
            # the cost of decoding the whole last group of pictures.
            if timing is not None and packet.pts is not None and packet.size > 0:
                last_index = max(last_index, timing.index_of(packet.pts))
            if not packet.is_keyframe:
                continue
            for frame in packet.decode():
                if frame.is_corrupt:
                    raise MediaError(path, "corrupt: the last frames decode with errors", _reencode(path))
                decoded += 1
        if decoded == 0 and not read_errors:
            # The decoder holds a keyframe back until it is flushed.
            decoded = sum(1 for frame in stream.codec_context.decode(None) if not frame.is_corrupt)
    except av.FFmpegError as error:  # the decoder rejects what the demuxer read
        reason = f"corrupt: decoding the last frames failed ({_ffmpeg_message(error)})"
        raise MediaError(path, reason, _reencode(path)) from None
    if last_index >= last or (timing is None and decoded > 0 and not read_errors):
        return
    found = last_index + 1 if last_index >= 0 else _count_packets_of(path)
    failure = f" (reading stopped: {read_errors[0]})" if read_errors else ""
    raise MediaError(
        path, f"truncated: header says {info.frames} frames, only {found} decode{failure}", _COPY_AGAIN
    )


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
    gop: int | None = None,
    preset: str | None = None,
) -> None:
    """Write uint8 RGB frames (H, W, 3) to `path` as yuv420p video.

    The file is written beside its destination and renamed into place, so a reader (or a killed
    writer) never sees half a video, and a writer that fails removes what it wrote. `gop` sets the
    keyframe interval (tests use it to exercise seeking); `preset` is the libx264 speed preset. H and W
    must be even for yuv420p.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.pix_fmt = "yuv420p"
            options = {"crf": str(crf)} if codec == "libx264" else {}
            if preset is not None:
                options["preset"] = preset
            if gop is not None:
                stream.codec_context.gop_size = gop
                if codec == "libx264":
                    options["keyint"] = str(gop)
                    options["min-keyint"] = str(gop)
                    options["scenecut"] = "0"
            stream.options = options
            size = None
            for frame in frames:
                if size is None:
                    size = _check_writable_frame(frame, even=True)
                    stream.height, stream.width = size
                elif frame.shape[:2] != size:
                    raise ValueError(
                        f"frame size changed from {size} to {frame.shape[:2]} while writing {path}"
                    )
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(video_frame))
            if size is None:
                raise ValueError(f"no frames to write to {path}")
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_image(path: str | os.PathLike[str], frame: np.ndarray) -> None:
    """Write one uint8 RGB frame (H, W, 3) as an image whose format follows the suffix of `path`.

    Written beside its destination and renamed into place, like `write_video`.
    """
    path = Path(path)
    _check_writable_frame(frame, even=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_image(path: str | os.PathLike[str], *, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), upright (EXIF orientation applied), by `image_to_rgb`'s rules.

    `size` (height, width) resizes it (bilinear). Every image vidctrl reads (training samples,
    validation references and control frames) goes through here.
    """
    return _read_image(_existing_file(path), size)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image of any mode as uint8 RGB (H, W, 3), its values mapped by the mode's real range.

    Pillow's own `convert("RGB")` clips wide modes instead of scaling them (a 16-bit grey of
    70 * 257 becomes 255), so the rules are spelled out here:

    - 16-bit greyscale (`I;16`, `I;16L`, `I;16B`, `I;16N`): 0..65535 maps to 0..255 (value / 257).
    - `I` (32-bit integers, what some TIFF and PGM readers produce) and other integer modes: read as
      16-bit, 0..65535; a value outside that range is an error rather than a guess.
    - `F` (32-bit float): read as 0.0..1.0; NaN, infinities or values outside it are an error.
    - Transparency (`RGBA`, `LA`, `PA`, `P` or `L`/`RGB` with a transparent colour; premultiplied
      `RGBa`): composited on black, so a transparent pixel is black whatever colour it stores (what
      dropping the alpha of a cut-out usually gives, without the garbage some editors leave in it).
    - Every other mode (`1`, `L`, `P`, `RGB`, `CMYK`, `YCbCr`, `LAB`, `HSV`) is 8-bit: Pillow's conversion.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = np.asarray(image).astype(np.uint32)
        return _grey_to_rgb((grey * 255 + 32767) // 65535)
    if mode == "I" or mode.startswith("I;"):  # 32-bit, or a signed or odd-width integer mode
        grey = np.asarray(image).astype(np.int64)
        low, high = (int(grey.min()), int(grey.max())) if grey.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(
                f"an integer image (mode {mode}) with values {low}..{high}: vidctrl reads integer "
                "images as 16-bit (0..65535) and will not guess another range"
            )
        return _grey_to_rgb((grey * 255 + 32767) // 65535)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0.0 and grey.max() <= 1.0):
            finite = grey[np.isfinite(grey)]
            shown = f"{finite.min():g}..{finite.max():g}" if finite.size else "no finite values"
            extra = "" if finite.size == grey.size else " and NaN or infinite values"
            raise ValueError(
                f"a 32-bit float image (mode F) with values {shown}{extra}: vidctrl reads mode F as 0.0..1.0"
            )
        return _grey_to_rgb(np.floor(grey * 255.0 + 0.5))
    if mode == "RGBa":  # premultiplied alpha: the colour is already composited on black
        return np.array(np.asarray(image)[..., :3])
    if "A" in mode or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint16)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
    # np.array, not np.asarray: the latter is read-only, and torch.from_numpy warns about it.
    return np.array(image.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


# ---------------------------------------------------------------------------------------------------
# Opening and probing


def _reencode(path: Path) -> str:
    return _REENCODE.format(name=path.name)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise MediaError(path, "no such file", _CHECK_PATH) from None
    if not stat.S_ISREG(status.st_mode):
        raise MediaError(path, "not a regular file", _CHECK_PATH)
    if status.st_size == 0:
        raise MediaError(path, "the file is empty (0 bytes): an interrupted copy or download?", _COPY_AGAIN)
    return path


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except FileNotFoundError:
        raise MediaError(path, "no such file", _CHECK_PATH) from None
    except (av.FFmpegError, OSError) as error:
        failure = _ffmpeg_message(error)
        with open(path, "rb") as file:
            mp4 = file.read(8)[4:8] == b"ftyp"
        if mp4:  # an MP4/MOV header, but FFmpeg found no usable index (the moov box) after it
            reason = (
                f"truncated: an MP4 without its index, as a copy or recording cut short leaves it ({failure})"
            )
            raise MediaError(path, reason, _COPY_AGAIN) from None
        raise MediaError(path, f"FFmpeg cannot read it as a video ({failure})", _reencode(path)) from None


def _ffmpeg_message(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _is_image_demuxer(container: av.container.InputContainer) -> bool:
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise MediaError(path, f"the file has no video stream (streams: {kinds})", _reencode(path))
    stream = container.streams.video[0]
    if _THREAD_TYPE is not None:
        stream.thread_type = _THREAD_TYPE
    return stream


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frames of a container without a frame count in its header: one video packet per frame.

    A file cut short counts the packets before the cut.
    """
    return sum(packet.size > 0 for packet in _demux_until_error(container, stream, []))


def _stream_rotation(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> tuple[int, list[int | None]]:
    """(rotation, timestamps of the packets read) from the first decoded frame, which carries the
    display matrix.

    PyAV exposes the container's display matrix (the `rotate` of older FFmpeg) only on decoded
    frames, so the first one is decoded; a video whose first frame does not decode is unusable.
    """
    read: list[int | None] = []
    stream.codec_context.thread_count = 1  # one frame: decoder threads would only add their start-up
    try:
        for packet in container.demux(stream):
            if packet.size > 0 and not packet.is_discard:
                read.append(packet.pts)
            for frame in packet.decode():
                return display_rotation(frame), read
        for frame in stream.codec_context.decode(None):  # a one-frame stream is held until flushed
            return display_rotation(frame), read
    except av.FFmpegError as error:
        reason = f"FFmpeg cannot decode its first frame ({_ffmpeg_message(error)})"
        raise MediaError(path, reason, _reencode(path)) from None
    return 0, read


def _is_mp4(container: av.container.InputContainer) -> bool:
    return "mp4" in container.format.name.split(",")


def _mp4_rotation(path: Path) -> int | None:
    """The rotation in the first video track's header (tkhd) of an mp4/mov, read without decoding.

    The matrix is the one FFmpeg turns into the display matrix; its rotation is
    `-atan2(b, a)` as in `av_display_rotation_get`, rounded to a quarter turn. None when the boxes
    cannot be read (a compressed or unusual header): the caller decodes a frame instead.
    """
    try:
        with open(path, "rb") as file:
            moov = _mp4_box(file, b"moov", os.fstat(file.fileno()).st_size)
        if moov is None:
            return None
        for trak in _mp4_children(moov, b"trak"):
            mdia = next(_mp4_children(trak, b"mdia"), None)
            hdlr = next(_mp4_children(mdia, b"hdlr"), None) if mdia is not None else None
            if hdlr is None or hdlr[8:12] != b"vide":
                continue
            tkhd = next(_mp4_children(trak, b"tkhd"), None)
            if tkhd is None:
                return None
            offset = 52 if tkhd[0] == 1 else 40  # version 1 has 64-bit times and duration
            a, b = (int.from_bytes(tkhd[offset + 4 * i : offset + 4 * i + 4], "big", signed=True) for i in (0, 1))
            if a == 0 and b == 0:
                return None
            return round(-math.degrees(math.atan2(b, a)) / 90) % 4 * 90
    except (OSError, IndexError, ValueError):
        return None
    return None


def _mp4_box(file: io.BufferedReader, kind: bytes, end: int) -> bytes | None:
    """The payload of the first top-level box `kind`, skipping the others (mdat may be gigabytes)."""
    position = 0
    while position + 8 <= end:
        file.seek(position)
        header = file.read(16)
        size, name = int.from_bytes(header[:4], "big"), header[4:8]
        start = 8
        if size == 1:
            size, start = int.from_bytes(header[8:16], "big"), 16
        elif size == 0:
            size = end - position
        if size < start:
            return None
        if name == kind:
            file.seek(position + start)
            return file.read(size - start)
        position += size
    return None


def _mp4_children(payload: bytes, kind: bytes) -> Iterator[bytes]:
    position = 0
    while position + 8 <= len(payload):
        size, name = int.from_bytes(payload[position : position + 4], "big"), payload[position + 4 : position + 8]
        if size < 8:
            return
        if name == kind:
            yield payload[position + 8 : position + size]
        position += size


def _packet_times(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> list[int | None]:
    """The presentation timestamps of the remaining packets of `stream` (a file cut short ends them)."""
    # A discarded packet (before an mp4 edit list's start) is never shown: it is no frame.
    packets = _demux_until_error(container, stream, [])
    return [packet.pts for packet in packets if packet.size > 0 and not packet.is_discard]


def _seconds(timestamps: Sequence[int | None], stream: av.video.stream.VideoStream) -> np.ndarray | None:
    if any(t is None for t in timestamps) or not stream.time_base:
        return None
    ticks = np.sort(np.asarray(timestamps, dtype=np.int64))
    return (ticks - ticks[0]) * float(stream.time_base)


def frame_times(path: str | os.PathLike[str]) -> np.ndarray | None:
    """When each frame of a video is shown, in seconds from the first frame, in display order.

    Read from the packets' timestamps (demuxed, not decoded), so a variable-frame-rate video's
    frames are placed where they really are; None when the container gives frames no timestamps.
    Kept per process for the files seen last, as a loader asks for the same videos every epoch.
    """
    path = _existing_file(path)
    status = path.stat()
    return _frame_times(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=256)
def _frame_times(path: str, mtime_ns: int, size: int) -> np.ndarray | None:
    with _open_container(Path(path)) as container:
        stream = _video_stream(container, Path(path))
        times = _seconds(_packet_times(container, stream), stream)
    if times is not None:
        times.setflags(write=False)  # shared by every caller of the cache
    return times


#: relative difference under which two frame rates are the same rate
FPS_TOLERANCE = 1e-3


def frames_correspond(frames: int | None, control_frames: int | None, fps: float | None, control_fps: float | None,
                      *, variable_rate: Callable[[], bool]) -> bool:
    """Whether frame i of a control shows the moment of frame i of its target: the same frame count at the
    same rate, or the same count where either video has a variable frame rate (a pose rendered frame by
    frame from a phone's video, at some nominal rate: the rates say nothing). `variable_rate` is asked
    only when the counts agree and the rates differ (it may read every timestamp)."""
    if frames != control_frames:
        return False
    if fps is None or control_fps is None or math.isclose(fps, control_fps, rel_tol=FPS_TOLERANCE):
        return True
    return variable_rate()


def is_variable_rate(times: np.ndarray) -> bool:
    """Whether frames last different times: an interval off the typical one by over 10% and 1.5 ms.

    The 1.5 ms lets through timestamps rounded to milliseconds (29.97 fps in Matroska alternates
    33 and 34 ms); phones' variable rates differ by far more.
    """
    if len(times) < 3:
        return False
    intervals = np.diff(times)
    typical = float(np.median(intervals))
    deviation = np.abs(intervals - typical)
    return bool(((deviation > 0.1 * typical) & (deviation > 1.5e-3)).any())


def display_rotation(frame: av.VideoFrame) -> int:
    """How many degrees (0, 90, 180 or 270) counter-clockwise a decoded frame is turned for display.

    The display matrix is rounded to the nearest quarter turn; its mirroring, which cameras do not
    write, is ignored.
    """
    return round(frame.rotation / 90) % 4 * 90


def _demux_until_error(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, errors: list[str]
) -> Iterator[av.Packet]:
    """The packets of `stream`; a read error (a file cut short) ends them and is added to `errors`."""
    try:
        yield from container.demux(stream)
    except av.FFmpegError as error:
        errors.append(_ffmpeg_message(error))


def _count_packets_of(path: Path) -> int:
    try:
        with av.open(str(path)) as container:
            return _count_packets(container, container.streams.video[0])
    except (av.FFmpegError, OSError, IndexError):
        return 0


def _probe_image(path: Path, *, verify: bool = False) -> MediaInfo:
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise UnidentifiedImageError("animated image: let FFmpeg read it as a video")
        if verify:
            _decode_image(image, path)
        width, height = image.size
        # Phones store rotated photos with an EXIF orientation; frames are returned upright.
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        rotation = {3: 180, 4: 180, 5: 270, 6: 270, 7: 90, 8: 90}.get(orientation, 0)
        return MediaInfo("image", 1, 0.0, width, height, rotation)


def _decode_image(image: Image.Image, path: Path) -> None:
    """Decode every pixel of an open image (a truncated file fails here, not on opening)."""
    try:
        image.load()
    except _IMAGE_ERRORS as error:
        raise MediaError(
            path, f"Pillow cannot decode the image ({error}) (it may be truncated)", "re-save it, or remove the sample"
        ) from None


def _read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image_to_rgb(ImageOps.exif_transpose(image))
    except _IMAGE_ERRORS as error:
        raise MediaError(
            path, f"Pillow cannot decode the image ({error})", "re-save it, or remove the sample"
        ) from None
    except ValueError as error:  # a mode whose values have no range to map (see image_to_rgb)
        raise MediaError(path, str(error), "re-save it as an 8- or 16-bit PNG, or remove the sample") from None
    if size is not None and rgb.shape[:2] != size:
        rgb = np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return rgb


def _check_range(path: Path, frames: int, index: int, kind: str) -> None:
    if index < frames:
        return
    if kind == "image":
        raise MediaError(path, f"an image is a single frame, frame {index} was requested")
    raise MediaError(path, _too_short(frames, index), _TOO_SHORT_FIX)


def _too_short(frames: int, index: int) -> str:
    return f"the video has {frames} frames, frame {index} was requested; it may be truncated"


def _check_writable_frame(frame: np.ndarray, *, even: bool) -> tuple[int, int]:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB frame of shape (H, W, 3), got {frame.dtype} {frame.shape}")
    height, width = frame.shape[:2]
    if even and (height % 2 or width % 2):
        raise ValueError(f"yuv420p video needs an even width and height, got {width}x{height}")
    return height, width


# ---------------------------------------------------------------------------------------------------
# Decoding


class _UnreliableTiming(Exception):
    """Timestamps do not map one-to-one onto frame numbers; decode sequentially instead."""


@dataclass(frozen=True)
class _Timing:
    """Maps presentation timestamps to frame indices for a constant-frame-rate stream."""

    start: int
    ticks_per_frame: Fraction  # timestamps per frame, in the stream's time base

    @staticmethod
    def of(stream: av.video.stream.VideoStream) -> _Timing | None:
        rate = stream.guessed_rate or stream.average_rate
        if stream.start_time is None or not stream.time_base or not rate or rate <= 0:
            return None
        average = stream.average_rate
        # FFmpeg's guessed rate is the one all timestamps are multiples of; an average rate that
        # differs from it means frames of different durations (variable frame rate).
        if average and abs(float(average) / float(rate) - 1.0) > 1e-3:
            return None
        return _Timing(stream.start_time, 1 / (Fraction(stream.time_base) * Fraction(rate)))

    def index_of(self, pts: int) -> int:
        return math.floor((pts - self.start) / self.ticks_per_frame + Fraction(1, 2))

    def seek_ts(self, index: int) -> int:
        # The largest timestamp that still maps to `index`: a backward seek to it lands on the
        # keyframe at or before frame `index`, and never on frame `index + 1`.
        return math.ceil(self.start + (index + Fraction(1, 2)) * self.ticks_per_frame) - 1


def _duration_in_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, timing: _Timing | None
) -> int | None:
    """How many frames the header's duration of the video stream holds, if it gives one."""
    if timing is None:
        return None
    seconds_per_frame = timing.ticks_per_frame * Fraction(stream.time_base)
    if stream.duration:
        return round(stream.duration / timing.ticks_per_frame)
    tag = stream.metadata.get("DURATION")  # Matroska keeps a per-track duration as a tag
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            total = (int(hours) * 60 + int(minutes)) * 60 + Fraction(seconds)
        except ValueError:
            return None
        return round(total / seconds_per_frame)
    if container.duration and len(container.streams) == 1:
        return round(Fraction(container.duration, av.time_base) / seconds_per_frame)
    return None


def _seek_near_end(container: av.container.InputContainer) -> None:
    if container.duration:
        container.seek(max(container.duration - av.time_base, 0), backward=True, any_frame=False)


def _read_video(path: Path, wanted: list[int], info: MediaInfo | None, size: tuple[int, int] | None) -> np.ndarray:
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        frames = info.frames if info is not None else stream.frames or _count_packets(container, stream)
        _check_range(path, frames, wanted[-1], "video")
        timing = _Timing.of(stream)
        expected = _duration_in_frames(container, stream, timing)
        if expected is not None and abs(expected - frames) > 1:
            # Timestamps span more (or fewer) frame slots than there are frames: a gap or a cut
            # somewhere, so a frame's timestamp does not give its number.
            timing = None
        if timing is not None:
            try:
                return _decode_by_seeking(path, container, stream, timing, wanted, frames, size, info)
            except _UnreliableTiming:
                pass
    return _decode_sequentially(path, wanted, frames, size, info)


class _Output:
    """The decoded frames at the sorted, unique requested indices."""

    def __init__(
        self, path: Path, count: int, size: tuple[int, int] | None = None, info: MediaInfo | None = None
    ) -> None:
        self.path = path
        self.array: np.ndarray | None = None
        self.count = count
        self.size = size
        self.info = info

    def put(self, slot: int, frame: av.VideoFrame) -> None:
        if self.array is None and self.info is not None:
            _check_displayed_size(self.path, frame, self.info)
        rgb = frame_to_rgb(frame, self.size)
        if self.array is None:
            self.array = np.empty((self.count, *rgb.shape), dtype=np.uint8)
        elif rgb.shape != self.array.shape[1:]:
            reason = f"the frame size changes mid-stream ({self.array.shape[1:3]} to {rgb.shape[:2]})"
            raise MediaError(self.path, reason, _reencode(self.path))
        self.array[slot] = rgb


def _check_displayed_size(path: Path, frame: av.VideoFrame, info: MediaInfo) -> None:
    """Refuse a manifest that gives a turned video's stored size: its crops would squash every frame."""
    rotation = display_rotation(frame)
    stored = (frame.width, frame.height)
    if rotation % 180 and stored == (info.width, info.height) and frame.width != frame.height:
        raise MediaError(
            path,
            f"the metadata gives {info.width}x{info.height}, the size it is stored at, but it is displayed turned "
            f"{rotation}° ({info.height}x{info.width}); sizes probed before vidctrl applied rotation",
            "regenerate the manifest from the source metadata (`vidctrl data convert --to manifest`), or drop "
            "the width and height the metadata declares",
        )


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded frame as uint8 RGB (H, W, 3), turned as its display matrix says.

    `size` is the displayed (height, width) to scale to, done in the RGB conversion (one swscale
    pass, bilinear) before the frame is turned.
    """
    rotation = display_rotation(frame)
    scale = {}
    if size is not None:
        height, width = size if rotation % 180 == 0 else size[::-1]
        scale = {"height": height, "width": width, "interpolation": "BILINEAR"}
    rgb = frame.to_ndarray(format="rgb24", **scale)
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def _decoding_failed(path: Path, error: av.FFmpegError, decoded_until: int) -> MediaError:
    after = f"after frame {decoded_until}" if decoded_until >= 0 else "at the first frame"
    reason = f"decoding failed {after} ({_ffmpeg_message(error)}): the file is truncated or corrupt"
    return MediaError(path, reason, _COPY_AGAIN)


def _past_end(path: Path, index: int, frames: int, decoded_until: int) -> MediaError:
    if decoded_until < frames - 1:
        reason = f"truncated: header says {frames} frames, only {decoded_until + 1} decode (frame {index} was requested)"
        return MediaError(path, reason, _COPY_AGAIN)
    return MediaError(path, _too_short(decoded_until + 1, index), _TOO_SHORT_FIX)


class _Keyframes:
    """Where keyframes are, to decide between decoding forward and seeking.

    Seeking pays off only when a keyframe lies well after the current frame and no later than the
    next requested one. An index that lists every frame (mp4) says where keyframes are; otherwise
    the keyframe interval seen while decoding is used, starting from a typical one.
    """

    def __init__(self, stream: av.video.stream.VideoStream, frames: int, timing: _Timing) -> None:
        self.stream = stream
        self.frames = frames
        fps = 1 / float(timing.ticks_per_frame * Fraction(stream.time_base))
        self.interval = max(1, round(_ASSUMED_GOP_SECONDS * fps))
        self.last_seen: int | None = None

    @cached_property
    def positions(self) -> np.ndarray | None:
        """Keyframe positions from the demuxer's index, read only when a gap makes them matter."""
        entries = getattr(self.stream, "index_entries", None)  # PyAV >= 15
        if entries is None or len(entries) != self.frames:
            return None
        # Decode-order positions; for closed GOPs a keyframe's position is its display index.
        flags = np.fromiter((entry.is_keyframe for entry in entries), dtype=bool, count=self.frames)
        return np.flatnonzero(flags)

    def saw(self, index: int, is_keyframe: bool, continuous: bool) -> None:
        if not is_keyframe:
            return
        if continuous and self.last_seen is not None and index > self.last_seen:
            self.interval = index - self.last_seen
        self.last_seen = index

    def worth_seeking(self, current: int, target: int) -> bool:
        if target - current <= _MIN_FRAMES_SAVED_BY_SEEK:
            return False
        positions = self.positions
        if positions is not None:
            last_key = np.searchsorted(positions, target, side="right") - 1
            return last_key >= 0 and positions[last_key] - current > _MIN_FRAMES_SAVED_BY_SEEK
        return target - current > self.interval


def _decode_by_seeking(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    timing: _Timing,
    wanted: list[int],
    frames: int,
    size: tuple[int, int] | None = None,
    info: MediaInfo | None = None,
) -> np.ndarray:
    output = _Output(path, len(wanted), size, info)
    keyframes = _Keyframes(stream, frames, timing)
    slot = 0
    decoded: Iterator[tuple[int, av.VideoFrame]] | None = None
    continuous = False  # whether `decoded` has run since its seek, without gaps
    current = -1
    try:
        while slot < len(wanted):
            if decoded is None or keyframes.worth_seeking(current, wanted[slot]):
                decoded = _decode_from_keyframe(container, stream, timing, wanted[slot])
                continuous = False
            for index, frame in decoded:
                keyframes.saw(index, frame.key_frame, continuous)
                continuous = True
                current = index
                if index < wanted[slot]:
                    continue
                output.put(slot, frame)
                slot += 1
                if slot == len(wanted) or keyframes.worth_seeking(current, wanted[slot]):
                    break
            else:
                raise _past_end(path, wanted[slot], frames, current)
    except av.FFmpegError as error:
        raise _decoding_failed(path, error, current) from None
    assert output.array is not None
    return output.array


def _decode_from_keyframe(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    timing: _Timing,
    target: int,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Seek to the keyframe at or before frame `target` and yield (index, frame) from it on.

    Raises _UnreliableTiming when timestamps turn out not to count frames: a frame without one,
    or two consecutive frames whose indices are not consecutive.
    """
    seek_ts = timing.seek_ts(target)
    for _ in range(_MAX_SEEK_RETRIES):
        try:
            container.seek(seek_ts, backward=True, any_frame=False, stream=stream)
        except av.FFmpegError as error:
            raise _UnreliableTiming from error
        landed: list[int] = []
        frames = _decode_packets(container, stream, landed)
        for frame in frames:
            index = _index(timing, frame)
            if frame.key_frame:
                break
            # Frames before the first keyframe (open GOP) reference frames before the seek point.
            if index >= target:
                raise _UnreliableTiming
        else:
            return iter(())
        if index <= target:
            return _consecutive(timing, index, frame, frames)
        # The demuxer indexes keyframes by decode time, which runs ahead of presentation time when
        # frames are reordered, so it picked a keyframe shown after `target`: ask for an earlier one.
        if not landed:
            raise _UnreliableTiming
        seek_ts = min(seek_ts, landed[0]) - 1
    raise _UnreliableTiming


def _decode_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, landed: list[int]
) -> Iterator[av.VideoFrame]:
    for packet in container.demux(stream):
        if not landed and packet.size:
            timestamp = packet.dts if packet.dts is not None else packet.pts
            if timestamp is not None:
                landed.append(timestamp)
        yield from packet.decode()


def _index(timing: _Timing, frame: av.VideoFrame) -> int:
    if frame.pts is None:
        raise _UnreliableTiming
    return timing.index_of(frame.pts)


def _consecutive(
    timing: _Timing, first_index: int, first: av.VideoFrame, rest: Iterator[av.VideoFrame]
) -> Iterator[tuple[int, av.VideoFrame]]:
    yield first_index, first
    expected = first_index + 1
    for frame in rest:
        index = _index(timing, frame)
        if index != expected:
            raise _UnreliableTiming
        yield index, frame
        expected += 1


def _decode_sequentially(
    path: Path, wanted: list[int], frames: int, size: tuple[int, int] | None, info: MediaInfo | None = None
) -> np.ndarray:
    output = _Output(path, len(wanted), size, info)
    slot = 0
    index = -1
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index == wanted[slot]:
                    output.put(slot, frame)
                    slot += 1
                    if slot == len(wanted):
                        assert output.array is not None
                        return output.array
        except av.FFmpegError as error:
            raise _decoding_failed(path, error, index) from None
    raise _past_end(path, wanted[slot], frames, index)

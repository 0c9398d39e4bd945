"""Video and image I/O on PyAV and Pillow: probe, decode exactly the requested frames, write.

Frame index `i` of a video means the i-th frame of a full sequential decode (display order), and
`read_frames` returns exactly those frames while decoding only what it must: it seeks to the
keyframe before each run of requested frames and decodes forward. Images are one-frame clips.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
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
    for a real frame rate.
    """

    kind: Literal["video", "image"]
    frames: int
    fps: float
    width: int
    height: int


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Kind, frame count, frame rate and size of a video or image, without decoding frames.

    The frame count comes from the container header when it has one (mp4, mov); otherwise (mkv,
    webm) packets are counted by demuxing, which reads the file but decodes nothing. Whether a file
    is an image is decided by opening it, with the suffix only choosing which library tries first.
    """
    path = _existing_file(path)
    image_name = path.suffix.lower() in IMAGE_SUFFIXES
    if image_name:
        try:
            return _probe_image(path)
        except _IMAGE_ERRORS:
            pass  # perhaps a video under an image name: let FFmpeg say what it is
    try:
        container = _open_container(path)
    except MediaError as error:
        if image_name:
            raise MediaError(path, "neither Pillow nor FFmpeg can read this image", _reencode(path)) from None
        try:
            return _probe_image(path)  # an image under a video name
        except _IMAGE_ERRORS:
            raise error from None
    with container:
        if _is_image_demuxer(container):
            try:
                return _probe_image(path)  # an image under a video name
            except _IMAGE_ERRORS:
                pass
        stream = _video_stream(container, path)
        frames = stream.frames or _count_packets(container, stream)
        if frames <= 0:
            raise MediaError(path, "the video stream has no frames (is the file truncated?)", _COPY_AGAIN)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise MediaError(path, "FFmpeg cannot tell the frame size", _reencode(path))
        rate = stream.average_rate or stream.guessed_rate
        return MediaInfo("video", frames, float(rate) if rate else 0.0, width, height)


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
    last = info.frames - 1
    with _open_container(path) as container:
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


def _probe_image(path: Path) -> MediaInfo:
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise UnidentifiedImageError("animated image: let FFmpeg read it as a video")
        width, height = image.size
        # Phones store rotated photos with an EXIF orientation; frames are returned upright.
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
        return MediaInfo("image", 1, 0.0, width, height)


def _read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if size is not None:
                image = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            # Alpha is dropped, palettes and greyscale are expanded. np.array, not np.asarray: the
            # latter is read-only, and torch.from_numpy warns about it.
            return np.array(image.convert("RGB"))
    except _IMAGE_ERRORS as error:
        raise MediaError(
            path, f"Pillow cannot decode the image ({error})", "re-save it, or remove the sample"
        ) from None


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
                return _decode_by_seeking(path, container, stream, timing, wanted, frames, size)
            except _UnreliableTiming:
                pass
    return _decode_sequentially(path, wanted, frames, size)


class _Output:
    """The decoded frames at the sorted, unique requested indices."""

    def __init__(self, path: Path, count: int, size: tuple[int, int] | None = None) -> None:
        self.path = path
        self.array: np.ndarray | None = None
        self.count = count
        self.scale = {} if size is None else {"height": size[0], "width": size[1], "interpolation": "BILINEAR"}

    def put(self, slot: int, frame: av.VideoFrame) -> None:
        rgb = frame.to_ndarray(format="rgb24", **self.scale)
        if self.array is None:
            self.array = np.empty((self.count, *rgb.shape), dtype=np.uint8)
        elif rgb.shape != self.array.shape[1:]:
            reason = f"the frame size changes mid-stream ({self.array.shape[1:3]} to {rgb.shape[:2]})"
            raise MediaError(self.path, reason, _reencode(self.path))
        self.array[slot] = rgb


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
) -> np.ndarray:
    output = _Output(path, len(wanted), size)
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


def _decode_sequentially(path: Path, wanted: list[int], frames: int, size: tuple[int, int] | None) -> np.ndarray:
    output = _Output(path, len(wanted), size)
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

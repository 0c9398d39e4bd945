"""`vidctrl data prepare`: a folder of raw videos in, a checked, training-ready dataset out.

For every raw video (in worker processes, one video per task): frames are decoded once, in order;
each planned clip (`clips.plan_clips`) gets its pose video (DWPose, batched), its per-frame
ControlNeXt meta_info, its keypoints, and its target video (the source copied or linked when it is
already the clip, re-encoded otherwise). Then captions (batched, in the main process), then the
chosen layout's lists.

What is written where (NAME is the video's path under the videos folder, "/" spelt "__"):

    OUT/videos/NAME.mp4           target clip
    OUT/poses/NAME.mp4            its skeleton: same size, frame count and frame rate
    OUT/meta_info/NAME.json       per frame: person boxes, hand boxes, hand scores (ControlNeXt)
    OUT/keypoints/NAME.npz        body, foot, face, hands, boxes per frame (normalised), to re-render
    OUT/metadata.json | video.txt + prompts.txt | meta_info.json | manifest.jsonl   the layout
    OUT/.vidctrl-prepare/         settings.json, done/NAME.json per finished clip, captions.jsonl

Every file is written beside its destination and renamed into place, and a clip's done marker is
written last, so a killed run leaves no half-written output and a rerun skips every finished clip
(and every caption already made). A rerun with other settings than the ones OUT was made with is
refused unless `--overwrite` is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import queue
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidctrl.data.records import DataError, Problem, Record
from vidctrl.data.video import MediaError, probe
from vidctrl.prepare import PrepareError
from vidctrl.prepare.captions import (
    DEFAULT_PROMPT,
    CaptionItem,
    CaptionSource,
    FileCaptions,
    FixedCaption,
    QwenVLCaptioner,
)
from vidctrl.prepare.clips import ClipPlan, ClipSettings, plan_clips
from vidctrl.prepare.config import PrepareConfig
from vidctrl.prepare.dwpose import DWPose, FramePose, model_files
from vidctrl.prepare.media import VideoWriter, iter_frames, place_source, source_rate
from vidctrl.run_lock import hold_folder

STATE_DIR = ".vidctrl-prepare"
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
)
POSE_CRF = 12  # low: thin coloured limbs survive 4:2:0 chroma better (as the sample data does)
NAME_SEPARATOR = "__"


# --------------------------------------------------------------------------------------------------
# Jobs and results (picklable: they travel to worker processes)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseSettings:
    detector: str
    pose: str
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 8
    draw_face: bool = True


@dataclass(frozen=True)
class VideoJob:
    """One raw video and everything a worker needs to turn it into clips."""

    source: str  # absolute path
    relative: str  # path under the videos folder, for messages and caption lookup
    name: str  # output name stem
    out: str
    clips: ClipSettings
    pose: PoseSettings
    media: str = "copy"
    crf: int = 18


@dataclass
class ClipResult:
    """A finished clip: what its done marker holds."""

    name: str
    source: str
    media: str
    control: str
    meta_info: str
    keypoints: str
    frames: int
    fps: float
    width: int
    height: int
    reused: bool = False

    def record(self, caption: str | None) -> Record:
        return Record(
            media=self.media,
            kind="video",
            control=self.control,
            caption=caption,
            meta_info=self.meta_info,
            frames=self.frames,
            fps=self.fps,
            width=self.width,
            height=self.height,
            control_frames=self.frames,
            control_fps=self.fps,
            control_width=self.width,
            control_height=self.height,
        )


@dataclass
class VideoResult:
    source: str
    clips: list[ClipResult] = field(default_factory=list)
    skipped: str | None = None  # why no clip came out of it (too short)
    error: str | None = None
    frames_decoded: int = 0


@dataclass
class PrepareReport:
    """What a run did: the dataset written and every video that is not in it, with the reason."""

    layout_path: Path | None
    records: list[Record]
    processed: int = 0  # clips made in this run
    reused: int = 0  # clips found finished
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------------------------------
# Finding videos, naming outputs
# --------------------------------------------------------------------------------------------------


def find_videos(
    root: str | os.PathLike[str], *, unusable: list[tuple[str, str]] | None = None
) -> list[tuple[Path, str]]:
    """Video files under `root` (recursively, hidden folders skipped), sorted, as (path, relative).

    An entry that leads nowhere (a symlink loop, a link to a missing file) is left out and, with
    `unusable`, listed there as (path, reason), so that one bad link does not stop the others."""
    from vidctrl.data.check import missing_reason

    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in VIDEO_SUFFIXES and not name.startswith("."):
                try:
                    resolved = path.resolve(strict=True)
                except (OSError, RuntimeError):  # RuntimeError: a symlink loop before Python 3.13
                    if unusable is not None:
                        unusable.append((str(path), f"{missing_reason(path)}; skipped"))
                    continue
                found.append((resolved, path.relative_to(root).as_posix()))
    return sorted(found, key=lambda item: item[1])


def output_name(relative: str) -> str:
    """The output stem of a video: its path under the videos folder without the suffix, "/" as "__"
    (flat, because DynamiCtrl matches captions by file name)."""
    return Path(relative).with_suffix("").as_posix().replace("/", NAME_SEPARATOR)


def _state(out: Path) -> Path:
    return out / STATE_DIR


def _done_path(out: Path, name: str) -> Path:
    return _state(out) / "done" / f"{name}.json"


def _write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def load_done(out: Path, name: str) -> ClipResult | None:
    """The finished clip `name`, if its marker and every file it names exist."""
    path = _done_path(out, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        result = ClipResult(**data)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    files = (result.media, result.control, result.meta_info, result.keypoints)
    if not all(os.path.exists(f) for f in files):
        return None
    result.reused = True
    return result


# --------------------------------------------------------------------------------------------------
# One video (runs in a worker)
# --------------------------------------------------------------------------------------------------

_ESTIMATORS: dict[PoseSettings, DWPose] = {}

# Where decoding progress goes, in frames: ("total", n) when a video starts (the frames it will
# decode), ("frames", n) as they decode. Set in this process, or in each worker to a queue's `put`.
_frame_progress: Callable[[tuple[str, int]], None] | None = None
_FRAMES_PER_REPORT = 8


def _report_frames(kind: str, count: int) -> None:
    if _frame_progress is not None and count:
        _frame_progress((kind, count))


def _send_frame_progress_to(channel: Any) -> None:
    """ProcessPoolExecutor initializer: this worker reports its frames to `channel` (a Queue)."""
    global _frame_progress
    _frame_progress = channel.put


def _estimator(settings: PoseSettings) -> DWPose:
    """One DWPose per process and settings: sessions load once, not once per video."""
    if settings not in _ESTIMATORS:
        _ESTIMATORS.clear()
        _ESTIMATORS[settings] = DWPose.from_files(
            settings.detector,
            settings.pose,
            device=settings.device,
            threads=settings.threads,
            batch_size=settings.batch_size,
        )
    return _ESTIMATORS[settings]


class _ClipWriter:
    """Receives a clip's frames in order; writes its pose video (and target, when re-encoding) and
    gathers its per-frame metadata. Nothing is visible at the destination until `finish`."""

    def __init__(self, job: VideoJob, plan: ClipPlan, size: tuple[int, int], reencode: bool) -> None:
        out = Path(job.out)
        self.job, self.plan, self.size = job, plan, size
        self.media = out / "videos" / f"{plan.name}.mp4"
        self.control = out / "poses" / f"{plan.name}.mp4"
        self.meta_path = out / "meta_info" / f"{plan.name}.json"
        self.keypoints_path = out / "keypoints" / f"{plan.name}.npz"
        self.pose_writer = VideoWriter(self.control, plan.fps, crf=POSE_CRF)
        self.target_writer = VideoWriter(self.media, plan.fps, crf=job.crf) if reencode else None
        self.pending: list[np.ndarray] = []
        self.poses: list[FramePose] = []
        self.added = 0

    def add(self, frame: np.ndarray, estimator: DWPose) -> None:
        height, width = self.size
        self.pending.append(frame[:height, :width])
        self.added += 1
        if len(self.pending) >= max(1, self.job.pose.batch_size):
            self.flush(estimator)

    def flush(self, estimator: DWPose) -> None:
        if not self.pending:
            return
        height, width = self.size
        for frame, pose in zip(self.pending, estimator(self.pending), strict=True):
            self.pose_writer.write(pose.render(height, width, face=self.job.pose.draw_face))
            if self.target_writer is not None:
                self.target_writer.write(frame)
            self.poses.append(pose)
        self.pending = []

    def finish(self, estimator: DWPose) -> ClipResult:
        self.flush(estimator)
        self.pose_writer.close()
        if self.target_writer is not None:
            self.target_writer.close()
        else:
            place_source(self.job.source, self.media, self.job.media)
        _write_atomic(self.meta_path, json.dumps([pose.meta_info() for pose in self.poses]))
        _write_atomic(self.keypoints_path, _keypoints_npz(self.poses, self.size))
        target, control = probe(self.media), probe(self.control)
        if (target.frames, target.width, target.height) != (
            control.frames,
            control.width,
            control.height,
        ) or (abs(target.fps - control.fps) > 1e-3 * max(target.fps, 1.0)):
            raise MediaError(
                self.job.source,
                f"the prepared clip {self.media.name} ({target.frames} frames, {target.width}x{target.height}, "
                f"{target.fps:g} fps) and its pose video ({control.frames} frames, {control.width}x"
                f"{control.height}, {control.fps:g} fps) disagree",
                "re-encode the source with a constant frame rate (ffmpeg -i IN -c:v libx264 -vsync cfr OUT.mp4)",
            )
        result = ClipResult(
            name=self.plan.name,
            source=self.job.relative,
            media=str(self.media),
            control=str(self.control),
            meta_info=str(self.meta_path),
            keypoints=str(self.keypoints_path),
            frames=target.frames,
            fps=target.fps,
            width=target.width,
            height=target.height,
        )
        _write_atomic(_done_path(Path(self.job.out), self.plan.name), json.dumps(dataclasses.asdict(result)))
        return result

    def abort(self) -> None:
        self.pose_writer.abort()
        if self.target_writer is not None:
            self.target_writer.abort()


def _keypoints_npz(poses: Sequence[FramePose], size: tuple[int, int]) -> bytes:
    """Per-frame keypoints padded to the most people in any frame (NaN where a frame has fewer)."""
    most = max((p.people for p in poses), default=0)
    boxes = max((len(p.boxes) for p in poses), default=0)

    def stack(part: str, shape: tuple[int, ...]) -> np.ndarray:
        out = np.full((len(poses), most, *shape), np.nan, dtype=np.float32)
        for t, pose in enumerate(poses):
            out[t, : pose.people] = getattr(pose, part)
        return out

    box_array = np.full((len(poses), boxes, 4), np.nan, dtype=np.float32)
    for t, pose in enumerate(poses):
        box_array[t, : len(pose.boxes)] = pose.boxes
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        body=stack("body", (18, 3)),
        foot=stack("foot", (6, 3)),
        face=stack("face", (68, 3)),
        hands=stack("hands", (2, 21, 3)),
        boxes=box_array,
        people=np.array([p.people for p in poses], dtype=np.int32),
        size=np.array(size, dtype=np.int32),
    )
    return buffer.getvalue()


def process_video(job: VideoJob) -> VideoResult:
    """Turn one raw video into its clips; finished clips are reused. Problems of the video (unreadable,
    truncated) come back as `VideoResult.error`; problems of the models raise `PrepareError`, and
    anything else is a bug and raises."""
    result = VideoResult(source=job.relative)
    try:
        info = probe(job.source)
        if info.kind != "video":
            result.skipped = "not a video"
            return result
        rate = source_rate(job.source)
        plans = plan_clips(job.name, info.frames, rate, job.clips)
        if not plans:
            result.skipped = f"{info.frames} frames, fewer than --clip_min_frames {job.clips.min_frames}"
            return result
        todo = []
        for plan in plans:
            done = load_done(Path(job.out), plan.name)
            if done is not None:
                result.clips.append(done)
            else:
                todo.append(plan)
        if todo:
            result.clips.extend(_make_clips(job, todo, info.frames, info.width, info.height, rate, result))
        result.clips.sort(key=lambda clip: clip.name)
    except PrepareError:
        raise  # the models or settings are wrong: every video would fail the same way
    except (MediaError, DataError, av.FFmpegError, OSError) as exc:
        result.error = str(exc)
    return result


def _make_clips(
    job: VideoJob,
    plans: list[ClipPlan],
    frames: int,
    width: int,
    height: int,
    rate: Fraction,
    result: VideoResult,
) -> list[ClipResult]:
    estimator = _estimator(job.pose)
    size = (height - height % 2, width - width % 2)  # yuv420p needs even sides
    copyable = Path(job.source).suffix.lower() == ".mp4" and size == (height, width)
    # Which clip each source frame goes to, and how often (upsampling repeats frames).
    wanted: dict[int, list[int]] = {}
    for number, plan in enumerate(plans):
        for index in plan.source_indices.tolist():
            wanted.setdefault(index, []).append(number)
    last = max(wanted)
    made: list[ClipResult] = []
    writers: dict[int, _ClipWriter] = {}
    _report_frames("total", last + 1)
    unreported = 0
    try:
        for index, frame in enumerate(iter_frames(job.source, last + 1)):
            result.frames_decoded += 1
            unreported += 1
            if unreported == _FRAMES_PER_REPORT:
                _report_frames("frames", unreported)
                unreported = 0
            for number in wanted.get(index, ()):
                if number not in writers:
                    plan = plans[number]
                    writers[number] = _ClipWriter(
                        job, plan, size, not (copyable and plan.is_whole(frames, rate))
                    )
                writer = writers[number]
                writer.add(frame, estimator)
                if writer.added == writer.plan.frames:
                    made.append(writer.finish(estimator))
                    del writers[number]
        if writers:
            plan = plans[min(writers)]
            decoded = result.frames_decoded
            raise MediaError(
                job.source,
                f"only {decoded} frames decode, the header says {frames} (clip {plan.name} needs frame "
                f"{int(plan.source_indices[-1])})",
                "the file may be truncated: copy it again, or re-encode it",
            )
    finally:
        _report_frames("frames", unreported)
        for writer in writers.values():
            writer.abort()
    return made


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _file_identity(path: str) -> str:
    """Size and a hash of the first and last MiB: tells model files apart without reading 300 MB."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return f"{size}:{digest.hexdigest()[:16]}"


def _fingerprint(config: PrepareConfig, pose: PoseSettings) -> dict[str, Any]:
    """The settings that decide what a clip's files hold; a resumed run must use the same."""
    return {
        "detector": _file_identity(pose.detector),
        "pose_model": _file_identity(pose.pose),
        "draw_face": pose.draw_face,
        "fps": config.fps,
        "clip_min_frames": config.clip_min_frames,
        "clip_max_frames": config.clip_max_frames,
        "media": config.media,
        "crf": config.crf,
    }


def _check_fingerprint(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    path = _state(out) / "settings.json"
    if path.exists() and not overwrite:
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            before = {}
        changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
        if changed:
            raise PrepareError(
                Problem(
                    message=f"{out} was prepared with other settings ({', '.join(changed)} differ)",
                    file=str(path),
                    code="settings_changed",
                    fix="pass --overwrite to redo every video with the new settings, or write into another --out",
                )
            )
    if overwrite and _state(out).exists():
        shutil.rmtree(_state(out) / "done", ignore_errors=True)
        (_state(out) / "captions.jsonl").unlink(missing_ok=True)
    _write_atomic(path, json.dumps(fingerprint, indent=2))


def _remove_partials(out: Path) -> None:
    """Half-written files a killed run left (`.NAME.partial*`, never visible under their real names)."""
    for folder in ("videos", "poses", "meta_info", "keypoints", f"{STATE_DIR}/done"):
        for path in (out / folder).glob(".*.partial*"):
            path.unlink(missing_ok=True)


def caption_source(config: PrepareConfig) -> CaptionSource | None:
    """The caption source the flags name (at most one); None when none is given."""
    given = [
        flag
        for flag, value in (
            ("--caption_model", config.caption_model),
            ("--caption_from", config.caption_from),
            ("--caption", config.caption),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise PrepareError(
            Problem(
                message=f"several caption sources given ({', '.join(given)})",
                code="several_sources",
                fix="pass one of --caption_model, --caption_from and --caption",
            )
        )
    if config.caption_model is not None:
        return QwenVLCaptioner(
            config.caption_model,
            prompt=config.caption_prompt or DEFAULT_PROMPT,
            frames=config.caption_frames,
            batch_size=config.caption_batch_size,
            max_new_tokens=config.caption_max_new_tokens,
            device=config.caption_device,
        )
    model_only = (
        "caption_prompt",
        "caption_frames",
        "caption_batch_size",
        "caption_max_new_tokens",
        "caption_device",
    )
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareConfig)}
    changed = [f"--{name}" for name in model_only if getattr(config, name) != defaults[name]]
    if changed:
        raise PrepareError(
            Problem(
                message=f"{', '.join(changed)} set{'s' if len(changed) == 1 else ''} up the caption model, "
                "and no --caption_model is given",
                code="flag_not_honoured",
                fix=f"add --caption_model DIR, or leave out {', '.join(changed)}",
            )
        )
    if config.caption_from is not None:
        return FileCaptions(config.caption_from)
    if config.caption is not None:
        return FixedCaption(config.caption)
    return None


def _read_caption_cache(path: Path, identity: str) -> dict[str, str]:
    cache: dict[str, str] = {}
    if not path.exists():
        return cache
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed while appending
        if isinstance(entry, dict) and entry.get("by") == identity and entry.get("caption"):
            cache[str(entry["name"])] = str(entry["caption"])
    return cache


def _append_captions(path: Path, identity: str, captions: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for name, caption in captions.items():
            handle.write(
                json.dumps({"name": name, "by": identity, "caption": caption}, ensure_ascii=False) + "\n"
            )
        handle.flush()
        os.fsync(handle.fileno())


def make_captions(
    clips: Sequence[ClipResult],
    source: CaptionSource,
    out: Path,
    *,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Captions of `clips` by name, and the clips left without one. Model captions are appended to
    OUT/.vidctrl-prepare/captions.jsonl batch by batch, so a rerun only captions what is missing."""
    items = [CaptionItem(name=c.name, source=c.source, video=c.media, frames=c.frames) for c in clips]
    if not source.needs_frames:
        return dict(zip([i.name for i in items], source.caption(items), strict=True)), []
    cache_path = _state(out) / "captions.jsonl"
    captions = _read_caption_cache(cache_path, source.identity)
    todo = [item for item in items if item.name not in captions]
    failed: list[tuple[str, str]] = []
    step = max(1, batch_size) * 4
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        made = dict(zip([i.name for i in chunk], source.caption(chunk), strict=True))
        for name, text in list(made.items()):
            if not text:
                failed.append((name, "the caption model wrote an empty caption"))
                del made[name]
        _append_captions(cache_path, source.identity, made)
        captions.update(made)
        if progress is not None:
            progress(len(chunk))
    return {item.name: captions[item.name] for item in items if item.name in captions}, failed


def _check_inputs(config: PrepareConfig) -> tuple[Path, Path]:
    if config.videos is None or config.out is None:
        raise PrepareError(
            Problem(
                message="--videos and --out are required",
                code="usage",
                fix="vidctrl data prepare --videos RAW_DIR --out DATA_DIR --pose_model_dir MODELS ...",
            )
        )
    videos, out = Path(config.videos).resolve(), Path(config.out).resolve()
    if not videos.is_dir():
        raise PrepareError(
            Problem(
                message="no such folder",
                file=str(videos),
                code="missing_file",
                fix="pass the folder of raw videos to --videos",
            )
        )
    if out == videos or videos in out.parents:
        raise PrepareError(
            Problem(
                message="--out lies inside --videos",
                file=str(out),
                code="usage",
                fix="write the dataset outside the folder of raw videos",
            )
        )
    for name, value in (
        ("--workers", config.workers),
        ("--pose_batch_size", config.pose_batch_size),
        ("--caption_frames", config.caption_frames),
        ("--caption_batch_size", config.caption_batch_size),
    ):
        if value < 1:
            raise PrepareError(Problem(message=f"{name} must be at least 1, got {value}", code="usage"))
    return videos, out


def prepare_dataset(config: PrepareConfig, *, progress: bool = True) -> PrepareReport:
    """Run `data prepare` (see the module docstring). Raises `PrepareError` before any work when an
    input is missing; a video that cannot be used is reported in `PrepareReport.failed`. One run owns
    `--out` at a time (`vidctrl.run_lock`): a second one is refused, naming the first."""
    started = time.monotonic()
    videos, out = _check_inputs(config)
    with hold_folder(out, is_main_process=True, what="vidctrl data prepare", flag_hint="--out",
                     stale_after_s=config.output_dir_lock_timeout, force=config.force_output_dir_lock,
                     broadcast=lambda value: value):
        return _prepare(config, videos, out, progress=progress, started=started)


def _prepare(config: PrepareConfig, videos: Path, out: Path, *, progress: bool, started: float) -> PrepareReport:
    from vidctrl.data.layouts import write_layout

    try:
        clip_settings = ClipSettings(config.fps, config.clip_min_frames, config.clip_max_frames)
    except ValueError as exc:
        raise PrepareError(Problem(message=str(exc), code="usage")) from None
    captions = caption_source(config)
    if captions is None and config.layout != "controlnext":
        raise PrepareError(
            Problem(
                message=f"the {config.layout} layout needs a caption for every video, and no caption source is given",
                code="no_captions",
                fix="pass --caption_model QWEN_VL_DIR, --caption_from FILE or --caption TEXT "
                "(ControlNeXt data needs none)",
            )
        )
    detector, pose_model = model_files(
        config.pose_model_dir, detector=config.det_model, pose=config.pose_model
    )
    unusable: list[tuple[str, str]] = []
    sources = find_videos(videos, unusable=unusable)
    if not sources:
        raise PrepareError(
            Problem(
                message="no videos found",
                file=str(videos),
                code="no_videos",
                fix=f"put videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in the folder",
            )
        )
    if captions is not None:
        probe_items = [
            CaptionItem(name=output_name(rel), source=rel, video="", frames=0) for _, rel in sources
        ]
        missing = captions.missing(probe_items)
        if missing:
            listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PrepareError(
                Problem(
                    message=f"no caption for {len(missing)} videos: {listed}",
                    file=str(config.caption_from),
                    code="caption_missing",
                    fix="add a NAME#####caption line for each",
                )
            )
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.workers)
    pose = PoseSettings(
        detector=str(detector),
        pose=str(pose_model),
        device=config.pose_device,
        threads=threads,
        batch_size=config.pose_batch_size,
        draw_face=config.draw_face,
    )
    out.mkdir(parents=True, exist_ok=True)
    _remove_partials(out)
    _check_fingerprint(out, _fingerprint(config, pose), config.overwrite)
    jobs = [
        VideoJob(
            source=str(path),
            relative=rel,
            name=output_name(rel),
            out=str(out),
            clips=clip_settings,
            pose=pose,
            media=config.media,
            crf=config.crf,
        )
        for path, rel in sources
    ]
    results = _run_jobs(jobs, config.workers, progress)

    report = PrepareReport(layout_path=None, records=[])
    report.failed.extend(unusable)
    clips: list[ClipResult] = []
    for result in results:
        if result.error is not None:
            report.failed.append((result.source, result.error))
        elif result.skipped is not None:
            report.skipped.append((result.source, result.skipped))
        for clip in result.clips:
            clips.append(clip)
            if clip.reused:
                report.reused += 1
            else:
                report.processed += 1
    caption_of: dict[str, str] = {}
    if captions is not None and clips:
        bar = _bar(progress, total=len(clips), unit="clip", desc="captions")
        try:
            caption_of, caption_failed = make_captions(
                clips, captions, out, batch_size=config.caption_batch_size, progress=bar.update
            )
        finally:
            bar.close()
        report.failed.extend(caption_failed)
        clips = [c for c in clips if c.name in caption_of]
    report.records = [clip.record(caption_of.get(clip.name, "")) for clip in clips]
    if report.records:
        report.layout_path = write_layout(report.records, out, config.layout)
    report.seconds = time.monotonic() - started
    return report


class _NoBar:
    total = n = 0

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def _run_jobs(jobs: list[VideoJob], workers: int, progress: bool) -> list[VideoResult]:
    """Every job's result, in job order; videos run in `workers` processes (in this one for 1).

    The progress bar counts decoded frames (a few long videos move it as steadily as many short
    ones); its total grows by each video's frames as the video starts, and the videos finished so
    far are shown beside it.
    """
    global _frame_progress
    bar = _bar(progress, total=0, unit="frame", desc="poses")
    results: list[VideoResult | None] = [None] * len(jobs)
    finished = 0

    def on_frames(message: tuple[str, int]) -> None:
        kind, count = message
        if kind == "total":
            bar.total += count
            bar.refresh()
        else:
            bar.update(count)

    def done(position: int, result: VideoResult) -> None:
        nonlocal finished
        results[position] = result
        finished += 1
        bar.set_postfix_str(f"{finished}/{len(jobs)} videos")

    try:
        if workers <= 1:
            _frame_progress = on_frames if progress else None
            for position, job in enumerate(jobs):
                done(position, process_video(job))
        else:
            # spawn: workers start clean (no inherited ONNX Runtime or torch threads).
            context = get_context("spawn")
            channel = context.Queue() if progress else None
            options: dict[str, Any] = (
                {"initializer": _send_frame_progress_to, "initargs": (channel,)} if channel is not None else {}
            )
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, **options) as pool:
                futures = {pool.submit(process_video, job): position for position, job in enumerate(jobs)}
                pending = set(futures)
                try:
                    while pending:
                        ready, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        _drain(channel, on_frames)
                        for future in ready:
                            done(futures[future], future.result())
                except BaseException:
                    # A model error or Ctrl-C: stop now rather than after every queued video.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            _drain(channel, on_frames)  # what the workers sent before they exited
    finally:
        _frame_progress = None
        if bar.total and bar.n != bar.total:  # a video that failed part-way decoded fewer frames
            bar.total = bar.n
            bar.refresh()
        bar.close()
    return [r for r in results if r is not None]


def _drain(channel: Any, handle: Callable[[tuple[str, int]], None]) -> None:
    while channel is not None:
        try:
            handle(channel.get_nowait())
        except queue.Empty:
            return


__all__ = [
    "STATE_DIR",
    "ClipResult",
    "PrepareReport",
    "VideoJob",
    "VideoResult",
    "find_videos",
    "make_captions",
    "output_name",
    "prepare_dataset",
    "process_video",
]

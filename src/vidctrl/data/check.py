"""`vidctrl data check`: read every sample the way training will, and say what is wrong with it.

Each sample is inspected in a worker process (headers probed, the end of each video decoded to
catch truncation, control/camera/meta files read); nothing decodes a whole video. A bad sample
becomes one `Problem` line naming its file; the check itself never crashes on bad data.
"""

from __future__ import annotations

import errno
import functools
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from vidctrl.data.clips import ClipRules
from vidctrl.data.records import DataError, Problem, Record
from vidctrl.data.video import FPS_TOLERANCE, MediaError, MediaInfo, frames_correspond, probe

ASPECT_TOLERANCE = 0.02  # relative; pose renders of the same video differ by rounding at most


@dataclass(frozen=True)
class InspectSettings:
    """What a check compares a sample against (picklable: it travels to worker processes)."""

    rules: ClipRules
    control_frame_policy: str = "error"
    deep: bool = True  # decode the end of each video to catch truncation
    # Validate ControlNeXt meta_info (hand boxes and scores, one entry per frame): only a preset that
    # weighs hands reads it, so only then is a bad one a bad sample.
    hand_boxes: bool = False
    # Take a record's stored frames/fps/size (a manifest) as the file's instead of opening it again.
    trust_probed: bool = False


@dataclass
class Inspection:
    """Probed facts about one sample and the problems found in it."""

    index: int
    target: MediaInfo | None = None
    control: MediaInfo | None = None
    problems: list[Problem] = field(default_factory=list)

    def probed_fields(self) -> dict[str, Any]:
        """Record fields filled from the probe (for manifests)."""
        out: dict[str, Any] = {}
        if self.target is not None:
            out.update(frames=self.target.frames, fps=self.target.fps, width=self.target.width, height=self.target.height)
        if self.control is not None:
            out.update(
                control_frames=self.control.frames,
                control_fps=self.control.fps,
                control_width=self.control.width,
                control_height=self.control.height,
            )
        return out


def missing_reason(path: str | os.PathLike[str]) -> str:
    """Why `os.path.exists(path)` is false, in words: a symlink loop and a link to nothing are named
    as such, so that the user looks at the link, not for a missing file."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symlink loop (it links back to itself)"
            return f"is a broken symlink (it points to {os.readlink(path)}, which does not exist)"
    return "does not exist"


def _problem(index: int, record: Record, message: str, code: str, fix: str, *, file: str | None = None,
             severity: str = "error") -> Problem:
    return Problem(
        message=message, file=file or record.media, sample=index, code=code, fix=fix, severity=severity  # type: ignore[arg-type]
    )


def _probe(index: int, record: Record, path: str, role: str, deep: bool, out: list[Problem]) -> MediaInfo | None:
    if not os.path.exists(path):
        out.append(
            _problem(index, record, f"{role} file {path} {missing_reason(path)}", "missing_file",
                     "fix the path in the metadata or remove the entry", file=path)
        )
        return None
    try:
        info = probe(path, verify=deep)  # one open for the header and the end of the file
    except MediaError as exc:
        code = "truncated" if "truncated" in str(exc) else ("empty" if "empty" in str(exc) or "zero" in str(exc) else "unreadable")
        out.append(_problem(index, record, f"{role} {exc.reason}", code, exc.fix, file=path))
        return None
    return info


def _stored(record: Record, prefix: str) -> MediaInfo | None:
    """The media facts a record already holds (`prefix` "" for the target, "control_" for the control)."""
    frames, fps = getattr(record, f"{prefix}frames"), getattr(record, f"{prefix}fps")
    width, height = getattr(record, f"{prefix}width"), getattr(record, f"{prefix}height")
    if frames is None or width is None or height is None:
        return None
    return MediaInfo(record.kind, frames, fps or 0.0, width, height)


def inspect_record(index: int, record: Record, settings: InspectSettings) -> Inspection:
    """Everything a check knows about one sample; never raises on bad data."""
    result = Inspection(index)
    problems = result.problems
    try:
        target = _stored(record, "") if settings.trust_probed else None
        if target is None:
            target = _probe(index, record, record.media, "target", settings.deep, problems)
        result.target = target
        if target is not None:
            _check_target(index, record, target, settings, problems)
        if record.control:
            control = _stored(record, "control_") if settings.trust_probed else None
            if control is None:
                control = _probe(index, record, record.control, "control", settings.deep, problems)
            result.control = control
            if target is not None and control is not None:
                _check_control(index, record, target, control, settings, problems)
        if record.camera:
            _check_camera(index, record, target, problems)
        if record.meta_info and settings.hand_boxes:
            _check_meta_info(index, record, target, problems)
    except Exception as exc:  # a check must report, not crash; the message still names the sample
        problems.append(_problem(index, record, f"could not be inspected: {type(exc).__name__}: {exc}",
                                 "unreadable", "inspect the file by hand; this is a vidctrl bug if the file is fine"))
    return result


def _check_target(index: int, record: Record, info: MediaInfo, settings: InspectSettings,
                  problems: list[Problem]) -> None:
    if info.kind != record.kind:
        problems.append(
            _problem(index, record, f"declared as {record.kind} but the file is {'an' if info.kind == 'image' else 'a'} {info.kind}",
                     "type_mismatch", f'set "type": "{info.kind}" for this entry')
        )
        return
    for name in ("width", "height", "frames"):
        declared = getattr(record, name)
        actual = getattr(info, name)
        if declared is not None and declared != actual:
            problems.append(
                _problem(index, record, f"metadata says {name} {declared} but the file has {actual}",
                         "metadata_mismatch", "regenerate the metadata (vidctrl data convert probes every file)")
            )
    if info.kind == "video":
        available = _available_frames(settings.rules, info.frames)
        needed = settings.rules.min_frames
        if available < needed:
            problems.append(
                _problem(index, record, f"has {info.frames} frames; {settings.rules.describe()} yields {available}, "
                         f"training needs at least {needed}", "too_few_frames",
                         "lower --video_sample_stride / --video_sample_n_frames, or remove the sample")
            )
        elif available < settings.rules.n_frames:
            problems.append(
                _problem(index, record, f"has {info.frames} frames; {settings.rules.describe()} yields only {available} "
                         f"of the {settings.rules.n_frames} requested, which shortens every batch it lands in",
                         "short_video", "lower --video_sample_n_frames or drop short videos", severity="warning")
            )


@functools.lru_cache(maxsize=4096)
def _available_frames(rules: ClipRules, frames: int) -> int:
    """`rules.available_frames`, once per frame count: a million-record manifest has a few hundred."""
    return int(rules.available_frames(frames))


def _check_control(index: int, record: Record, target: MediaInfo, control: MediaInfo, settings: InspectSettings,
                   problems: list[Problem]) -> None:
    path = record.control
    if control.kind != target.kind:
        problems.append(
            _problem(index, record, f"the target is {'an' if target.kind == 'image' else 'a'} {target.kind} "
                     f"but its control {path} is {'an' if control.kind == 'image' else 'a'} {control.kind}",
                     "control_kind", "pair videos with control videos and images with control images", file=path)
        )
        return
    if target.kind == "video":
        resample = settings.control_frame_policy == "resample"
        fix = ("re-render the control from the same source video, or pass --control_frame_policy resample "
               "to resample the control by time")
        target_duration = target.frames / target.fps if target.fps else 0.0
        control_duration = control.frames / control.fps if control.fps else 0.0
        if control.frames != target.frames:
            if resample and control_duration + 1.0 / max(control.fps, 1.0) >= target_duration:
                problems.append(_problem(index, record, f"control video {path} has {control.frames} frames, "
                                         f"the target has {target.frames}; it will be resampled by time",
                                         "control_frames", "", file=path, severity="warning"))
            else:
                problems.append(_problem(index, record, f"control video {path} has {control.frames} frames, "
                                         f"the target has {target.frames}", "control_frames", fix, file=path))
        frame_aligned = frames_correspond(target.frames, control.frames, target.fps, control.fps,
                                          variable_rate=lambda: target.variable_rate or control.variable_rate)
        if not frame_aligned and not math.isclose(control.fps, target.fps, rel_tol=FPS_TOLERANCE):
            severity = "warning" if resample else "error"
            problems.append(_problem(index, record, f"control video {path} runs at {control.fps:g} fps, "
                                     f"the target at {target.fps:g} fps", "control_fps",
                                     "" if resample else fix, file=path, severity=severity))
    if control.rotation != target.rotation:
        problems.append(_problem(index, record, f"the target is stored turned {target.rotation}° and its control {path} "
                                 f"{control.rotation}° (display rotation metadata); both are decoded as displayed, so "
                                 "a control rendered by a tool that ignored the target's rotation is sideways",
                                 "control_rotation", "check that the pose lines up with the person; if not, "
                                 "re-render the control from the displayed target", file=path, severity="warning"))
    if (control.width, control.height) != (target.width, target.height):
        target_aspect = target.width / target.height
        control_aspect = control.width / control.height
        if abs(control_aspect - target_aspect) / target_aspect > ASPECT_TOLERANCE:
            problems.append(_problem(index, record, f"control {path} is {control.width}x{control.height}, the target is "
                                     f"{target.width}x{target.height}: the aspect ratios differ, so the pose would not "
                                     "line up with the person", "control_aspect",
                                     "re-render the control at the target's size", file=path))
        else:
            problems.append(_problem(index, record, f"control {path} is {control.width}x{control.height}, the target is "
                                     f"{target.width}x{target.height}; it will be resized", "control_size", "",
                                     file=path, severity="warning"))


def _check_camera(index: int, record: Record, target: MediaInfo | None, problems: list[Problem]) -> None:
    from vidctrl.data.camera import CameraFileError, read_camera_txt

    path = record.camera
    assert path is not None
    if not os.path.exists(path):
        problems.append(_problem(index, record, f"camera file {path} {missing_reason(path)}", "missing_file",
                                 "fix control_file_path or remove the entry", file=path))
        return
    try:
        cameras = read_camera_txt(path)
    except CameraFileError as exc:
        problems.append(_problem(index, record, str(exc), "malformed_camera", "", file=path))
        return
    if target is not None and target.kind == "video" and len(cameras) != target.frames:
        problems.append(_problem(index, record, f"camera file {path} has {len(cameras)} poses, the video has "
                                 f"{target.frames} frames; the trajectory will be stretched over the video",
                                 "camera_frames", "", file=path, severity="warning"))


def _check_meta_info(index: int, record: Record, target: MediaInfo | None, problems: list[Problem]) -> None:
    """ControlNeXt hand boxes and scores: read by the same function the training dataset reads them with."""
    from vidctrl.data.layouts.controlnext import load_frame_meta

    path = record.meta_info
    assert path is not None
    fix = "regenerate it with `vidctrl data prepare` or remove meta_info from the entry"
    if not os.path.exists(path):
        problems.append(_problem(index, record, f"meta_info file {path} {missing_reason(path)}", "missing_file", fix,
                                 file=path))
        return
    try:
        entries = load_frame_meta(path)
    except DataError as exc:
        problem = exc.problem
        where = f" {problem.where}" if problem.where else ""
        problems.append(_problem(index, record, f"meta_info {path}{where}: {problem.message}", problem.code,
                                 problem.fix or fix, file=path))
        return
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(_problem(index, record, f"meta_info {path} cannot be read: {exc}", "unreadable", fix, file=path))
        return
    if target is not None and target.kind == "video" and len(entries) != target.frames:
        problems.append(_problem(index, record, f"meta_info {path} has {len(entries)} entries, the video has "
                                 f"{target.frames} frames", "meta_info_frames", fix, file=path))


def _inspect_chunk(args: tuple[Sequence[tuple[int, Record]], InspectSettings]) -> list[Inspection]:
    chunk, settings = args
    return [inspect_record(index, record, settings) for index, record in chunk]


def inspect_records(
    records: Sequence[Record], settings: InspectSettings, *, workers: int | None = None, chunk_size: int = 16,
    indices: Sequence[int] | None = None,
) -> Iterator[Inspection]:
    """Inspect records in parallel worker processes, yielding results in record order.

    `indices`: the sample numbers of `records` (when they are a subset of a dataset), for messages.
    """
    items = list(zip(indices, records, strict=True)) if indices is not None else list(enumerate(records))
    chunks = [(items[i : i + chunk_size], settings) for i in range(0, len(items), chunk_size)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _inspect_chunk(chunk)
        return
    # spawn, not fork: the parent may hold pyarrow/torch threads that fork would copy mid-lock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for inspections in pool.map(_inspect_chunk, chunks):
            yield from inspections


def record_problems(records: Sequence[Record], *, require_captions: bool | None = None) -> list[Problem]:
    """Problems visible without opening any file: captions and duplicate entries.

    Training leaves out (lenient) or stops on (strict) the same ones: a duplicate's later entries and
    a caption that is not text. A missing caption trains as an empty one (as text dropout does), so
    it is a warning, unless `require_captions` is True (an error) or False (not reported).
    """
    problems: list[Problem] = []
    first_seen: dict[tuple[str, str | None, str | None], int] = {}
    for index, record in enumerate(records):
        key = (record.media, record.control, record.camera)
        if key in first_seen:
            problems.append(_problem(index, record, f"duplicate of sample {first_seen[key]} (same target and control)",
                                     "duplicate", "remove one of the two entries (use --video_repeat to repeat videos)"))
        else:
            first_seen[key] = index
        caption = record.caption
        if caption is not None and not isinstance(caption, str):
            problems.append(_problem(index, record, f"caption is {type(caption).__name__} {caption!r}, not text",
                                     "caption_not_text", "write the caption as a JSON string"))
        elif require_captions is not False and (caption is None or not caption.strip()):
            problems.append(_problem(index, record, "caption is missing", "caption_missing",
                                     "add a caption (text) for this sample",
                                     severity="error" if require_captions else "warning"))
    return problems


@dataclass
class CheckReport:
    num_samples: int
    problems: list[Problem]
    inspections: list[Inspection]

    @property
    def bad_samples(self) -> list[int]:
        return sorted({p.sample for p in self.problems if p.severity == "error" and p.sample is not None})

    @property
    def metadata_errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error" and p.sample is None]

    @property
    def ok(self) -> bool:
        return not self.bad_samples and not self.metadata_errors

    def summary(self) -> dict[str, Any]:
        errors = Counter(p.code for p in self.problems if p.severity == "error")
        warnings = Counter(p.code for p in self.problems if p.severity == "warning")
        return {
            "samples": self.num_samples,
            "bad_samples": len(self.bad_samples),
            "good_samples": self.num_samples - len(self.bad_samples),
            "metadata_errors": len(self.metadata_errors),
            "errors_by_kind": dict(sorted(errors.items())),
            "warnings_by_kind": dict(sorted(warnings.items())),
        }

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "summary": self.summary(), "problems": [p.to_dict() for p in self.problems]}


def check_records(
    records: Sequence[Record],
    settings: InspectSettings,
    *,
    import_problems: Iterable[Problem] = (),
    require_captions: bool | None = None,
    workers: int | None = None,
) -> CheckReport:
    problems = list(import_problems)
    problems += record_problems(records, require_captions=require_captions)
    inspections = list(inspect_records(records, settings, workers=workers))
    for inspection in inspections:
        problems += inspection.problems
    problems.sort(key=lambda p: (p.sample if p.sample is not None else -1, p.severity != "error"))
    return CheckReport(num_samples=len(records), problems=problems, inspections=inspections)


__all__ = [
    "CheckReport",
    "InspectSettings",
    "Inspection",
    "check_records",
    "inspect_record",
    "inspect_records",
    "record_problems",
]

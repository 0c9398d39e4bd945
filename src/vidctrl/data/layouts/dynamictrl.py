"""DynamiCtrl's folder dataset: `videos/`, `poses/`, a video list and a prompt list.

What the original does (gulucaptain/DynamiCtrl `utils/dataset.py`, `VideoDataset` and
`VideoDatasetWithResizing`, used by `scripts/dynamictrl_sft_finetune.py`):

- `--video_column` (a file under `--data_root`) lists one video per line, each joined with
  `data_root.joinpath(line.strip())`: relative to the data root, or absolute. Blank lines are skipped.
- `--caption_column` lists `NAME#####caption` lines; the caption is `line.split("#####")[1]` and the
  i-th caption goes with the i-th video: the names are never read, so a reordered, shorter or
  longer prompt file silently pairs videos with other videos' captions (unequal counts raise).
- The pose video of a video is `path.as_posix().replace("videos", "poses")`: every "videos" in
  the whole path is replaced, so `/data/myvideos/videos/a.mp4` looks for `/data/myposes/poses/a.mp4`.
- The original flags default to `--video_column video --caption_column text`; the seed command
  passes `video.txt` and `prompts.txt`, which are vidctrl's defaults.

vidctrl matches captions by file name and reports every video without a caption, every caption
without a video and every duplicate name. The pose path replaces only the nearest folder named
exactly `videos`. Per-frame metadata (ControlNeXt `meta_info`) has no place in the original
layout; vidctrl keeps it as an extension, `meta_info/NAME.json` beside `videos/`, read back when
present. Layouts hold videos only; each video needs a pose video.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from vidctrl.data.layouts._common import (
    Resolver,
    materialize,
    read_text,
    unrepresentable,
    write_text_atomic,
)
from vidctrl.data.records import ImportResult, Problem, Record

LAYOUT = "dynamictrl"
SEPARATOR = "#####"
VIDEOS = "videos"
POSES = "poses"
META_INFO = "meta_info"
DEFAULT_VIDEO_COLUMN = "video.txt"
DEFAULT_CAPTION_COLUMN = "prompts.txt"

logger = logging.getLogger("vidctrl.data.layouts")


def sibling_path(video: str, folder: str, data_root: str | os.PathLike[str]) -> tuple[str, bool]:
    """The path of `video`'s companion in `folder` (poses, meta_info) and whether it was derived.

    The nearest directory named `videos` above the video is swapped for `folder`
    (`ROOT/videos/a/x.mp4` -> `ROOT/poses/a/x.mp4`). A video outside any `videos` folder gets
    `DATA_ROOT/folder/NAME`, and False.
    """
    parts = Path(video).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == VIDEOS:
            return str(Path(*parts[:i], folder, *parts[i + 1 :])), True
    return os.path.join(os.path.abspath(data_root), folder, os.path.basename(video)), False


def meta_info_path(video: str, data_root: str | os.PathLike[str]) -> str:
    """Where vidctrl keeps a video's per-frame metadata: `meta_info/NAME.json` beside `videos/`."""
    path, _ = sibling_path(video, META_INFO, data_root)
    return path + ".json"


def read_dynamictrl(
    data_root: str | os.PathLike[str],
    video_column: str = DEFAULT_VIDEO_COLUMN,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
) -> ImportResult:
    """Read a DynamiCtrl folder. Never raises for bad data: every fault is a `Problem`."""
    root = Path(os.path.abspath(data_root))
    problems: list[Problem] = []
    if not root.is_dir():
        problems.append(
            Problem(
                message="the data root is not a folder",
                file=str(root),
                code="missing_metadata",
                fix="pass --data_root, the folder that holds videos/, poses/, video.txt and prompts.txt",
            )
        )
        return ImportResult(records=[], problems=problems, layout=LAYOUT)
    video_list = root / video_column
    prompt_list = root / caption_column
    videos = _read_video_list(video_list, root, problems)
    prompts = _read_prompts(prompt_list, problems) if videos is not None else None
    if videos is None:
        return ImportResult(records=[], problems=problems, layout=LAYOUT)

    records: list[Record] = []
    first_of_name: dict[str, int] = {}
    for index, (line, video) in enumerate(videos):
        name = os.path.basename(video)
        if name in first_of_name:
            earlier = records[first_of_name[name]].media
            same = earlier == video
            problems.append(
                Problem(
                    message=f"{name} is listed twice"
                    + ("" if same else f" (also as {earlier})")
                    + ("" if same else "; captions are matched by file name and cannot tell them apart"),
                    file=str(video_list),
                    sample=index,
                    where=f"line {line}",
                    code="duplicate_name",
                    severity="warning" if same else "error",
                    fix="list each video once" if same else "give the two videos different file names",
                )
            )
        else:
            first_of_name[name] = index
        control, derived = sibling_path(video, POSES, root)
        if not derived:
            problems.append(
                Problem(
                    message=f"{video} is not inside a folder named '{VIDEOS}'; its pose video is taken from {control}",
                    file=str(video_list),
                    sample=index,
                    where=f"line {line}",
                    code="pose_path",
                    severity="warning",
                    fix=f"keep videos in DATA_ROOT/{VIDEOS}/ and their poses in DATA_ROOT/{POSES}/ under the same names",
                )
            )
        caption: str | None = None
        if prompts is not None:
            entry = prompts.by_name.get(name)
            if entry is None:
                problems.append(
                    Problem(
                        message=f"no caption for {name}",
                        file=str(prompt_list),
                        sample=index,
                        code="missing_prompt",
                        fix=f"add the line `{name}{SEPARATOR}CAPTION` to {caption_column}",
                    )
                )
            else:
                caption = entry[1]
        meta = meta_info_path(video, root)
        records.append(
            Record(
                media=video,
                kind="video",
                control=control,
                caption=caption,
                meta_info=meta if os.path.isfile(meta) else None,
                source=f"{video_list} line {line}",
            )
        )
    if prompts is not None:
        problems += prompts.check_against(
            [os.path.basename(v) for _, v in videos], prompt_list, caption_column
        )
    return ImportResult(records=records, problems=problems, layout=LAYOUT)


def _read_video_list(path: Path, root: Path, problems: list[Problem]) -> list[tuple[int, str]] | None:
    text, problem = read_text(
        path,
        what="video list",
        fix=("pass --video_column, the file under --data_root that lists one video path per line"),
    )
    if text is None:
        problems += [problem] if problem else []
        return None
    resolve = Resolver(root)
    videos = []
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.endswith(("/", "\\")):
            problems.append(
                Problem(
                    message=f"{line!r} is a folder, not a video",
                    file=str(path),
                    where=f"line {number}",
                    code="bad_value",
                    fix="list video files, one per line",
                )
            )
            continue
        videos.append((number, resolve(line)))
    return videos


def _lines(text: str) -> list[str]:
    """Lines split as Python's text files split them (\n, \r, \r\n), like the original's readlines();
    `str.splitlines` would also split at characters such as U+2028 inside a caption."""
    return io.StringIO(text, newline=None).read().split("\n")


class _Prompts:
    def __init__(self) -> None:
        self.by_name: dict[str, tuple[int, str]] = {}  # name -> (line, caption)
        self.names_in_order: list[str] = []  # one per caption line, as the original pairs them
        self.problems: list[Problem] = []

    def check_against(self, video_names: list[str], path: Path, column: str) -> list[Problem]:
        problems = list(self.problems)
        listed = set(video_names)
        for name, (line, _) in self.by_name.items():
            if name not in listed:
                problems.append(
                    Problem(
                        message=f"caption for {name}, which the video list does not name",
                        file=str(path),
                        where=f"line {line}",
                        code="orphan_prompt",
                        severity="warning",
                        fix="remove the line, or add the video to the video list",
                    )
                )
        paired = sum(a != b for a, b in zip(video_names, self.names_in_order, strict=False))
        if paired or len(video_names) != len(self.names_in_order):
            problems.append(
                Problem(
                    message=f"{column} does not pair line by line with the video list ({paired} of "
                    f"{min(len(video_names), len(self.names_in_order))} caption lines name another video; "
                    f"{len(self.names_in_order)} captions for {len(video_names)} videos). vidctrl matches captions "
                    "by file name; the original DynamiCtrl pairs them by line and would train on wrong captions",
                    file=str(path),
                    code="prompt_order",
                    severity="warning",
                    fix="nothing to do for vidctrl; sort the caption lines like the video list before using the "
                    "original trainer",
                )
            )
        return problems


def _read_prompts(path: Path, problems: list[Problem]) -> _Prompts | None:
    text, problem = read_text(
        path,
        what="caption list",
        fix=(f"pass --caption_column, the file under --data_root with `NAME{SEPARATOR}caption` lines"),
    )
    if text is None:
        problems += [problem] if problem else []
        return None
    prompts = _Prompts()
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not line:
            continue
        if SEPARATOR not in line:
            prompts.problems.append(
                Problem(
                    message=f"no '{SEPARATOR}' between the video name and the caption",
                    file=str(path),
                    where=f"line {number}",
                    code="malformed_prompt",
                    fix=f"write the line as NAME{SEPARATOR}caption",
                )
            )
            continue
        name, caption = line.split(SEPARATOR, 1)
        name = os.path.basename(name.strip())
        prompts.names_in_order.append(name)
        if name in prompts.by_name:
            first_line, first_caption = prompts.by_name[name]
            same = first_caption == caption
            prompts.problems.append(
                Problem(
                    message=f"a second caption for {name} (first on line {first_line})"
                    + ("" if same else "; the first one is used"),
                    file=str(path),
                    where=f"line {number}",
                    code="duplicate_name",
                    severity="warning" if same else "error",
                    fix="keep one caption line per video",
                )
            )
            continue
        prompts.by_name[name] = (number, caption)
    return prompts


# --- writing ---------------------------------------------------------------------------------------


def write_dynamictrl(
    records: Iterable[Record],
    data_root: str | os.PathLike[str],
    *,
    copy: bool = False,
    skip_unrepresentable: bool = False,
    video_column: str = DEFAULT_VIDEO_COLUMN,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
) -> Path:
    """Write a DynamiCtrl folder: `videos/NAME`, `poses/NAME` (symlinks, or copies with `copy`),
    `meta_info/NAME.json` when a record has per-frame metadata, the video list and the captions.

    Two sources with the same file name get distinct names: the first keeps NAME, the next ones
    `STEM_2.EXT`, `STEM_3.EXT`, ... (compared case-insensitively, for case-insensitive disks); a
    video already at `DATA_ROOT/videos/NAME` keeps its name and is not touched. Returns the path
    of the video list.
    """
    root = Path(os.path.abspath(data_root))
    kept: list[tuple[int, Record]] = []
    for index, record in enumerate(records):
        reason = _unrepresentable_reason(record)
        if reason is None:
            kept.append((index, record))
        else:
            unrepresentable(record, index, "DynamiCtrl", reason[0], reason[1], skip=skip_unrepresentable)
    names = _assign_names(kept, root)
    dropped_extra = sorted({key for _, record in kept for key in record.extra})
    if dropped_extra:
        logger.warning(
            "the DynamiCtrl layout has no place for the extra keys %s; they are not written", dropped_extra
        )
    video_lines, prompt_lines = [], []
    for (index, record), name in zip(kept, names, strict=True):
        materialize(record.media, root / VIDEOS / name, copy=copy, root=root, index=index)
        materialize(str(record.control), root / POSES / name, copy=copy, root=root, index=index)
        if record.meta_info:
            materialize(
                record.meta_info, root / META_INFO / f"{name}.json", copy=copy, root=root, index=index
            )
        video_lines.append(f"{VIDEOS}/{name}\n")
        prompt_lines.append(f"{name}{SEPARATOR}{record.caption or ''}\n")
    write_text_atomic(root / caption_column, "".join(prompt_lines))
    write_text_atomic(root / video_column, "".join(video_lines))
    return root / video_column


def _unrepresentable_reason(record: Record) -> tuple[str, str] | None:
    if record.kind != "video":
        return f"it is an {record.kind}; DynamiCtrl trains on videos only", "leave images out of this layout"
    if record.camera:
        return (
            "it is controlled by a camera trajectory; DynamiCtrl's control is a pose video",
            "use the VideoX-Fun layout or a manifest for camera data",
        )
    if not record.control:
        return "it has no pose video; DynamiCtrl needs poses/NAME for every video", "add the pose video"
    name = os.path.basename(record.media)
    if SEPARATOR in name or name != name.strip() or "\n" in name or "\r" in name:
        return (
            f"its file name {name!r} cannot be written in the lists (it holds '{SEPARATOR}', a line break "
            "or surrounding spaces)",
            "rename the file",
        )
    if record.caption is not None and not isinstance(record.caption, str):
        return f"its caption is {record.caption!r}, not text", "write the caption as text"
    if record.caption and ("\n" in record.caption or "\r" in record.caption):
        return "its caption has a line break; the caption list holds one caption per line", (
            "replace the line breaks in the caption with spaces"
        )
    return None


def _assign_names(kept: list[tuple[int, Record]], root: Path) -> list[str]:
    videos = root / VIDEOS
    names: list[str | None] = [None] * len(kept)
    taken: set[str] = set()
    # A video already in place keeps its name: renaming it would need moving the user's file.
    for i, (_, record) in enumerate(kept):
        name = os.path.basename(record.media)
        if os.path.abspath(record.media) == str(videos / name) and name.casefold() not in taken:
            names[i] = name
            taken.add(name.casefold())
    for i, (_, record) in enumerate(kept):
        if names[i] is not None:
            continue
        name = os.path.basename(record.media)
        stem, suffix = os.path.splitext(name)
        number = 2
        while name.casefold() in taken:
            name = f"{stem}_{number}{suffix}"
            number += 1
        names[i] = name
        taken.add(name.casefold())
    return [name for name in names if name is not None]


__all__ = [
    "DEFAULT_CAPTION_COLUMN",
    "DEFAULT_VIDEO_COLUMN",
    "LAYOUT",
    "SEPARATOR",
    "meta_info_path",
    "read_dynamictrl",
    "sibling_path",
    "write_dynamictrl",
]

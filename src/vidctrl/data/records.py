"""One record type for every dataset layout, and problems found while reading one.

Every layout importer (VideoX-Fun JSON/CSV, DynamiCtrl folders, ControlNeXt meta_info, the vidctrl
JSONL manifest) produces `Record`s; every writer consumes them. Paths in a record are absolute.
Probed metadata (frames, fps, size) is optional: a seed layout carries little of it, the vidctrl
manifest carries all of it, so training never re-opens every file to plan buckets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vidctrl.errors import UserError

MediaKind = Literal["video", "image"]
Severity = Literal["error", "warning"]

# Fields that describe the sample itself (what a layout stores) versus probed facts about files.
PROBED_FIELDS = (
    "frames",
    "fps",
    "width",
    "height",
    "control_frames",
    "control_fps",
    "control_width",
    "control_height",
)


@dataclass
class Record:
    """One training sample: a target (video or image), its control, its caption."""

    media: str
    kind: MediaKind = "video"
    control: str | None = None  # control video or image (pose, depth, ...)
    camera: str | None = None  # camera trajectory .txt (Control-Camera)
    caption: str | None = ""
    meta_info: str | None = None  # ControlNeXt per-frame boxes / hand boxes / hand scores (.json)
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    control_frames: int | None = None
    control_fps: float | None = None
    control_width: int | None = None
    control_height: int | None = None
    # Layout-specific keys we do not interpret, kept so that conversion round-trips losslessly.
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the record came from ("metadata.json entry 17"), for error messages. Not data.
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}
        if not out["extra"]:
            del out["extra"]
        return out

    @property
    def probed(self) -> bool:
        """True when the target's size and length are known without opening the file."""
        return self.width is not None and self.height is not None and self.frames is not None


@dataclass(frozen=True)
class Problem:
    """Something wrong with a sample or a metadata file, said so that a user can fix it."""

    message: str
    file: str | None = None  # the file at fault (media, control, metadata)
    sample: int | None = None  # index of the record, when the problem belongs to one
    where: str = ""  # "metadata.json line 3 column 7", "entry 17", ...
    fix: str = ""
    code: str = "error"  # machine-readable kind: missing_file, truncated, control_frames, ...
    severity: Severity = "error"

    def __str__(self) -> str:
        head = f"{self.severity}: "
        if self.sample is not None:
            head += f"sample {self.sample}"
            if self.file:
                head += f" ({self.file})"
            head += ": "
        elif self.file:
            head += f"{self.file}: "
        if self.where:
            head += f"{self.where}: "
        text = head + self.message
        if self.fix:
            text += f". {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DataError(UserError, ValueError):
    """A data problem that stops the run; its text names the file, the sample and the fix."""

    def __init__(self, problem: Problem | str) -> None:
        self.problem = problem if isinstance(problem, Problem) else Problem(message=problem)
        super().__init__(str(self.problem))


@dataclass
class ImportResult:
    """What an importer read: the records, and every problem it met on the way."""

    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    layout: str = ""

    def raise_for_errors(self) -> None:
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            more = f" (and {len(errors) - 1} more problems; run `vidctrl data check`)" if len(errors) > 1 else ""
            raise DataError(Problem(**{**errors[0].to_dict(), "message": errors[0].message + more}))

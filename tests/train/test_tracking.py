"""Validation media reach the trackers: wandb gets the mp4 and the contact sheet as written."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from vidctrl.train.tracking import Tracker


class RecordingTracker:
    """Stands in for accelerate's WandBTracker: a name and a `log`."""

    name = "wandb"

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, Any], int]] = []

    def log(self, values: dict[str, Any], step: int) -> None:
        self.logged.append((values, step))


def test_wandb_receives_the_validation_mp4_and_contact_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = ModuleType("wandb")
    wandb.Video = lambda path, fps=None, format=None: ("video", path, fps, format)  # type: ignore[attr-defined]
    wandb.Image = lambda path: ("image", path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    recorder = RecordingTracker()
    tracker = Tracker.__new__(Tracker)
    tracker.accelerator = SimpleNamespace(trackers=[recorder])  # type: ignore[assignment]

    video = torch.zeros((5, 3, 8, 8), dtype=torch.uint8)
    tracker.log_validation(7, "sample-0", video=video, fps=16.0, mp4=tmp_path / "a.mp4", sheet=tmp_path / "a.png")
    assert recorder.logged == [({
        "validation/sample-0/video": ("video", str(tmp_path / "a.mp4"), 16.0, "mp4"),
        "validation/sample-0/contact_sheet": ("image", str(tmp_path / "a.png")),
    }, 7)]

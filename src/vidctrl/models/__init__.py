"""Model families' backbones and the strict checkpoint loading they share (``vidctrl.models.loading``)."""

from vidctrl.models.loading import (
    CheckpointReader,
    KeyMap,
    LoadReport,
    ShapeReader,
    StrictLoadError,
    empty_weights,
    load_checkpoint,
    open_checkpoint,
)

__all__ = [
    "CheckpointReader",
    "KeyMap",
    "LoadReport",
    "ShapeReader",
    "StrictLoadError",
    "empty_weights",
    "load_checkpoint",
    "open_checkpoint",
]

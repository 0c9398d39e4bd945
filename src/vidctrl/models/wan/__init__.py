"""Wan2.1-Fun Control models: the transformer with its Fun modules, key maps, loading, tiny models."""

from vidctrl.models.wan.components import (
    ALL_PARTS,
    COMPONENTS,
    ORIGINAL_FILES,
    WanComponents,
    WanModelFilesError,
    detect_layout,
    load_wan_component,
    load_wan_components,
    load_wan_tokenizer,
)
from vidctrl.models.wan.tiny import PRESETS, tiny_configs, write_tiny_wan
from vidctrl.models.wan.transformer import WanCameraAdapter, WanFunControlTransformer3DModel

__all__ = [
    "ALL_PARTS",
    "COMPONENTS",
    "ORIGINAL_FILES",
    "PRESETS",
    "WanCameraAdapter",
    "WanComponents",
    "WanFunControlTransformer3DModel",
    "WanModelFilesError",
    "detect_layout",
    "load_wan_component",
    "load_wan_components",
    "load_wan_tokenizer",
    "tiny_configs",
    "write_tiny_wan",
]

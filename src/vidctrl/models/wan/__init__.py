"""Wan2.1-Fun Control models: the transformer with its Fun modules, key maps, loading, tiny models."""

from vidctrl.models.wan.components import (
    ALL_PARTS,
    ORIGINAL_FILES,
    WanComponents,
    WanModelFilesError,
    detect_layout,
    load_wan_components,
    load_wan_image_encoder,
    load_wan_text_encoder,
    load_wan_tokenizer,
    load_wan_transformer,
    load_wan_vae,
)
from vidctrl.models.wan.tiny import PRESETS, tiny_configs, write_tiny_wan
from vidctrl.models.wan.transformer import WanCameraAdapter, WanFunControlTransformer3DModel

__all__ = [
    "ALL_PARTS",
    "ORIGINAL_FILES",
    "PRESETS",
    "WanCameraAdapter",
    "WanComponents",
    "WanFunControlTransformer3DModel",
    "WanModelFilesError",
    "detect_layout",
    "load_wan_components",
    "load_wan_image_encoder",
    "load_wan_text_encoder",
    "load_wan_tokenizer",
    "load_wan_transformer",
    "load_wan_vae",
    "tiny_configs",
    "write_tiny_wan",
]

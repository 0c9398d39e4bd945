"""The tiny T5-family text encoder that the tiny Wan (UMT5) and CogVideoX (T5) models share."""

from __future__ import annotations

from typing import Any

from vidctrl.models.t5 import T5_ENCODER_SETTINGS

TINY_TEXT_DIM = 32


def tiny_t5_config(**overrides: Any) -> dict[str, Any]:
    """Config of a 2-layer, width-32 T5 encoder (transformers' T5Config / UMT5Config keys)."""
    return {
        "d_model": TINY_TEXT_DIM,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 32,
        **T5_ENCODER_SETTINGS,
        **overrides,
    }

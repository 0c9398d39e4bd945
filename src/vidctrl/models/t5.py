"""The settings of a T5 v1.1-family text encoder (Wan's UMT5, CogVideoX's T5-XXL) that a transformers
``T5Config`` / ``UMT5Config`` needs and the weights' shapes do not say: used where Wan's original UMT5
config is read from its shapes, and by the tiny encoder that stands in for both."""

from __future__ import annotations

from typing import Any

T5_ENCODER_SETTINGS: dict[str, Any] = {
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

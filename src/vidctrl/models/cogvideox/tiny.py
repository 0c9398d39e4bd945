"""Tiny random CogVideoX models written in the layout of the real releases (a diffusers folder).

``write_tiny_cogvideox`` writes ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` and ``model_index.json`` with the real file names, key names and config keys, so that
`load_cogvideox_components` reads them through the code a real checkpoint goes through. Sizes train
on two CPU cores in seconds at 64x64x9: transformer width 32 (2 heads of 16), 2 blocks; VAE widths 4
(GroupNorm in 2 groups), one layer per block, still 8x spatial / 4x temporal with 16 latent
channels; T5 width 32, 2 layers; the 98-piece T5 tokenizer of the Wan tiny models (built in code).

Variants follow the released configs (shared/reference/checkpoints):

- ``5b`` (CogVideoX-Fun-V1.1-5b-*): 3D rotary embeddings, VAE scaling factor 0.7, scheduler SNR shift 1.0.
- ``2b`` (CogVideoX-Fun-V1.1-2b-*): sinusoidal positions, VAE scaling factor 1.15258426, SNR shift 3.0
  (THUDM/CogVideoX-2b scheduler_config.json).
- ``1.5`` (CogVideoX1.5-5B-I2V): ``patch_size_t`` 2, no patch bias, an ``ofs`` embedding, sample size
  300x300x81, rotary on a ``slice`` grid.

Text embeddings are 226 tokens (the CogVideoX tokenizer length) of width 32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from torch import nn
from transformers import T5Config, T5EncoderModel

from vidctrl.models.tiny_t5 import TINY_TEXT_DIM, tiny_t5_config
from vidctrl.models.wan.tiny import tiny_tokenizer

PRESET_IN_CHANNELS: dict[str, int] = {"cogvideox-fun-inp": 33, "cogvideox-fun-control": 32}
VARIANTS: tuple[str, ...] = ("5b", "2b", "1.5")
TINY_WIDTH = 32  # heads x head_dim

# scheduler/scheduler_config.json of the CogVideoX releases (the 2B values from THUDM/CogVideoX-2b).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "CogVideoXDDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}


def tiny_configs(variant: str = "5b", *, in_channels: int = 33) -> dict[str, dict[str, Any]]:
    """Configs of the tiny transformer, VAE, T5 encoder and scheduler of a CogVideoX ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown CogVideoX variant {variant!r}; choose from {list(VARIANTS)}")
    v15 = variant == "1.5"
    transformer: dict[str, Any] = {
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": 16,
        "dropout": 0.0,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "max_text_seq_length": 226,
        "norm_elementwise_affine": True,
        "norm_eps": 1e-5,
        "num_attention_heads": TINY_WIDTH // 16,
        "num_layers": 2,
        "out_channels": 16,
        "patch_size": 2,
        "patch_size_t": 2 if v15 else None,
        "patch_bias": not v15,
        "sample_frames": 81 if v15 else 49,
        "sample_height": 300 if v15 else 60,
        "sample_width": 300 if v15 else 90,
        "spatial_interpolation_scale": 1.875,
        "temporal_compression_ratio": 4,
        "temporal_interpolation_scale": 1.0,
        "text_embed_dim": TINY_TEXT_DIM,
        "time_embed_dim": 32,
        "timestep_activation_fn": "silu",
        "use_learned_positional_embeddings": False,
        "use_rotary_positional_embeddings": variant != "2b",
    }
    if v15:
        transformer["ofs_embed_dim"] = transformer["time_embed_dim"]  # the ofs embedding is added to it
    vae = {
        "block_out_channels": [4, 4, 4, 4],
        "down_block_types": ["CogVideoXDownBlock3D"] * 4,
        "up_block_types": ["CogVideoXUpBlock3D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 2,
        "latent_channels": 16,
        "temporal_compression_ratio": 4,
        "sample_height": 480,
        "sample_width": 720,
        "scaling_factor": 1.15258426 if variant == "2b" else 0.7,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }
    text_encoder = tiny_t5_config()
    scheduler = {**SCHEDULER_CONFIG, "snr_shift_scale": 3.0 if variant == "2b" else 1.0}
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def write_tiny_cogvideox(
    out_dir: str | Path,
    preset: str | None = None,
    *,
    variant: str = "5b",
    in_channels: int | None = None,
    seed: int = 0,
    transformer_class: type[nn.Module] = CogVideoXTransformer3DModel,
    transformer_overrides: Mapping[str, Any] | None = None,
    vae_overrides: Mapping[str, Any] | None = None,
    scheduler_overrides: Mapping[str, Any] | None = None,
    extra_transformer_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tiny random CogVideoX model to ``out_dir`` (a diffusers pipeline folder).

    ``preset`` sets the input channels of the CogVideoX-Fun presets (InP 33, Control 32); other
    families pass ``in_channels`` and, for their own transformer subclass, ``transformer_class``.
    ``extra_transformer_config`` adds keys to ``transformer/config.json`` that the class does not take
    (the InP release's ``add_noise_in_inpaint_model``). The global RNG state is left as it was.
    """
    if in_channels is None:
        if preset not in PRESET_IN_CHANNELS:
            raise ValueError(f"unknown CogVideoX-Fun preset {preset!r}; choose from {list(PRESET_IN_CHANNELS)} "
                             "or pass in_channels")
        in_channels = PRESET_IN_CHANNELS[preset]
    if extra_transformer_config is None and preset == "cogvideox-fun-inp":
        extra_transformer_config = {"add_noise_in_inpaint_model": True}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    configs = tiny_configs(variant, in_channels=in_channels)
    configs["transformer"].update(transformer_overrides or {})
    configs["vae"].update(vae_overrides or {})
    configs["scheduler"].update(scheduler_overrides or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = transformer_class.from_config(configs["transformer"])  # type: ignore[attr-defined]
        vae = AutoencoderKLCogVideoX.from_config(configs["vae"])
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **configs["text_encoder"]))

    transformer.save_pretrained(out / "transformer", safe_serialization=True)  # type: ignore[operator]
    if extra_transformer_config:
        config_file = out / "transformer" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **extra_transformer_config},
                                          indent=2) + "\n")
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2) + "\n")
    model_index = {
        "_class_name": "CogVideoXPipeline",
        "_vidctrl_preset": preset,
        "_vidctrl_variant": variant,
        "scheduler": ["diffusers", configs["scheduler"]["_class_name"]],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    return out


def write_tiny_dynamictrl(out_dir: str | Path, *, layout: str = "diffusers", seed: int = 0,
                          with_padaln: bool = True) -> Path:
    """A tiny random DynamiCtrl model (``with_padaln=False``: a CogVideoX1.5-I2V base) in the release's
    folder layout, ``transformer/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``, built by
    `vidctrl.models.cogvideox.tiny.write_tiny_cogvideox` (variant 1.5, 32 input channels).

    DynamiCtrl's release is a diffusers-style folder whose transformer config names the original class
    (``DynamiCtrlTransformerModel``); ``layout="original"`` writes those class names, ``"diffusers"``
    vidctrl's. The weights and keys are the same.
    """
    from vidctrl.models.cogvideox.padaln import DynamiCtrlTransformer3DModel

    if layout not in ("diffusers", "original"):
        raise ValueError(f"layout must be 'diffusers' or 'original', not {layout!r}")
    transformer_class = DynamiCtrlTransformer3DModel if with_padaln else CogVideoXTransformer3DModel
    out = write_tiny_cogvideox(out_dir, variant="1.5", in_channels=32, seed=seed, transformer_class=transformer_class)
    if not with_padaln:
        pipeline, transformer_entry = "CogVideoXImageToVideoPipeline", ["diffusers", "CogVideoXTransformer3DModel"]
    elif layout == "original":
        pipeline, transformer_entry = "DynamiCtrlAnimationPipeline", ["dynamictrl", "DynamiCtrlTransformerModel"]
        config_file = out / "transformer" / "config.json"
        config = {**json.loads(config_file.read_text()), "_class_name": "DynamiCtrlTransformerModel"}
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    else:
        pipeline = "DynamiCtrlAnimationPipeline"
        transformer_entry = ["vidctrl.models.cogvideox.padaln", "DynamiCtrlTransformer3DModel"]
    index_file = out / "model_index.json"
    model_index = {**json.loads(index_file.read_text()), "_class_name": pipeline, "_vidctrl_preset": "dynamictrl",
                   "transformer": transformer_entry}
    index_file.write_text(json.dumps(model_index, indent=2) + "\n")
    return out

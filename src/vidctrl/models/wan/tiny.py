"""Tiny random Wan2.1-Fun Control models, written in the same layout as the real releases.

``write_tiny_wan`` writes all five components with the file names, key names and configs of a
real release (original layout) or of a diffusers folder, so ``load_wan_components`` reads them
through exactly the code a user's real checkpoint goes through. Sizes are chosen to train on two
CPU cores in seconds at 64x64x9: transformer width 32 (2 heads of 16), 2 blocks; VAE base width 4
(it runs with 1 or 2, but then its RMS norms see one or two channels) with one residual block per
stage, still 8x spatial / 4x temporal with 16 latent channels; UMT5 width 32, 2 layers; CLIP width
64 (16 heads: the original builder fixes 16), 2 layers, 56x56 images; a 98-piece tokenizer built in
code (no download).

Diffusers' Wan cross-attention takes the last 512 context tokens as text, so text embeddings must
still be padded to 512 tokens; the CLIP features are 17 tokens (4x4 patches + class) wide 64.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from vidctrl.models.loading import ExpectedTensors
from vidctrl.models.tiny_t5 import TINY_TEXT_DIM, tiny_t5_config
from vidctrl.models.wan.components import ORIGINAL_FILES, TRANSFORMER_WEIGHTS_STEM, Layout
from vidctrl.models.wan.keymap import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    clip_key_map,
    transformer_config_to_original,
    transformer_key_map,
    umt5_key_map,
    vae_key_map,
)
from vidctrl.models.wan.transformer import WanFunControlTransformer3DModel

Preset = Literal["wan2.1-fun-control-v1.0", "wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera"]
PRESETS: tuple[str, ...] = ("wan2.1-fun-control-v1.0", "wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera")

TINY_CLIP_DIM = 64


def tiny_tokenizer() -> T5Tokenizer:
    """A UMT5-style (T5 unigram, ``</s>`` appended, pad 0 / eos 1 / unk 2) tokenizer over 98 pieces."""
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in string.ascii_letters]
    vocab += [(c, -4.0) for c in string.ascii_lowercase + string.digits + ".,!?'-"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_configs(preset: str, vocab_size: int) -> dict[str, dict[str, Any]]:
    """Configs of the tiny transformer, VAE, UMT5 encoder and CLIP vision tower for ``preset``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Wan preset {preset!r}; choose from {list(PRESETS)}")
    camera = preset == "wan2.1-fun-control-camera"
    transformer = {
        "patch_size": [1, 2, 2],
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 32 if camera else 48,
        "out_channels": 16,
        "text_dim": TINY_TEXT_DIM,
        "freq_dim": 256,
        "ffn_dim": 64,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": TINY_CLIP_DIM,
        "added_kv_proj_dim": 32,
        "rope_max_seq_len": 1024,
        "add_ref_conv": preset == "wan2.1-fun-control-v1.1",
        "in_dim_ref_conv": 16,
        "add_control_adapter": camera,
        "in_dim_control_adapter": 24,
        "downscale_factor_control_adapter": 8,
    }
    vae = {
        "base_dim": 4,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
    }
    text_encoder = tiny_t5_config(vocab_size=vocab_size)
    image_encoder = {
        "hidden_size": TINY_CLIP_DIM,
        "intermediate_size": 128,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 56,
        "patch_size": 14,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "image_encoder": image_encoder,
    }


def _unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """State dict with one entry per tied group (what a checkpoint file stores)."""
    expected = ExpectedTensors.of(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k in expected.shapes}


def _write_sharded(state_dict: Mapping[str, Tensor], folder: Path, stem: str, shards: int) -> None:
    """Write ``<stem>.safetensors``, or ``shards`` files plus ``<stem>.safetensors.index.json``."""
    if shards <= 1:
        save_file(dict(state_dict), str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
        return
    keys = list(state_dict)
    per = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: state_dict[k] for k in keys[i * per : (i + 1) * per]}
        save_file(chunk, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _save_pth(state_dict: Mapping[str, Tensor], path: Path) -> None:
    """``torch.save`` of contiguous, unshared tensors, as the released ``.pth`` files hold."""
    torch.save({k: v.contiguous().clone() for k, v in state_dict.items()}, path)


def _clip_text_tower_stub(generator: torch.Generator) -> dict[str, Tensor]:
    """A few XLM-RoBERTa-tower tensors so a tiny CLIP file has the real file's ignored keys too."""
    return {
        "log_scale": torch.tensor(4.6052),
        "textual.token_embedding.weight": torch.randn(16, 8, generator=generator),
        "textual.norm.weight": torch.ones(8),
        "textual.norm.bias": torch.zeros(8),
    }


def write_tiny_wan(
    out_dir: str | Path,
    preset: str,
    *,
    layout: Layout = "diffusers",
    seed: int = 0,
    transformer_shards: int = 1,
    transformer_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tiny random Wan2.1-Fun Control model of ``preset`` to ``out_dir`` in ``layout``.

    ``transformer_shards > 1`` shards the transformer with an index file, as the 14B releases are.
    ``transformer_config`` overrides fields of the transformer's config (benchmarks give it a
    released model's width and depth while the encoders stay tiny).
    The global RNG state is left as it was.
    """
    if layout not in ("diffusers", "original"):
        raise ValueError(f"layout must be 'diffusers' or 'original', not {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    configs = tiny_configs(preset, vocab_size=len(tokenizer))
    configs["transformer"].update(transformer_config or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanFunControlTransformer3DModel(**configs["transformer"])
        vae = AutoencoderKLWan(**configs["vae"])
        text_encoder = UMT5EncoderModel(UMT5Config(**configs["text_encoder"]))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["image_encoder"]))
        stub = _clip_text_tower_stub(torch.Generator().manual_seed(seed))

    if layout == "diffusers":
        transformer.save_pretrained(out / "transformer", safe_serialization=True)
        if transformer_shards > 1:
            for f in (out / "transformer").glob(f"{TRANSFORMER_WEIGHTS_STEM}*.safetensors*"):
                f.unlink()
            _write_sharded(
                _unique_state_dict(transformer),
                out / "transformer",
                TRANSFORMER_WEIGHTS_STEM,
                transformer_shards,
            )
        vae.save_pretrained(out / "vae", safe_serialization=True)
        text_encoder.save_pretrained(out / "text_encoder")
        image_encoder.save_pretrained(out / "image_encoder")
        tokenizer.save_pretrained(out / "tokenizer")
        model_index = {
            "_class_name": "WanFunControlPipeline",
            "_vidctrl_preset": preset,
            "transformer": ["vidctrl.models.wan", "WanFunControlTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        }
        (out / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
        return out

    # Original layout: the file names and key names of a Wan2.1-Fun release.
    config = transformer_config_to_original(transformer.config)
    (out / ORIGINAL_FILES["transformer"]).write_text(json.dumps(config, indent=2) + "\n")
    original = transformer_key_map().to_source(_unique_state_dict(transformer))
    _write_sharded(original, out, TRANSFORMER_WEIGHTS_STEM, transformer_shards)
    vae_map = vae_key_map(configs["vae"]["num_res_blocks"])
    _save_pth(vae_map.to_source(_unique_state_dict(vae)), out / ORIGINAL_FILES["vae"])
    _save_pth(
        umt5_key_map().to_source(_unique_state_dict(text_encoder)), out / ORIGINAL_FILES["text_encoder"]
    )
    clip = clip_key_map().to_source(_unique_state_dict(image_encoder))
    _save_pth({**clip, **stub}, out / ORIGINAL_FILES["image_encoder"])
    tokenizer.save_pretrained(out / ORIGINAL_FILES["tokenizer"])
    return out

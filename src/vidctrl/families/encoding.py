"""The encoding and loading seam every family uses: pixels from the loader's layout, the VAE
posterior's deterministic half in `--vae_mini_batch` mini-batches, and the model flags that reach
components (`--enable_slicing`, `--enable_tiling`, `--transformer_path`).

A family calls these through `ModelFamily` (`_pixels`, `vae_moments`, `apply_model_options`) and says
only what differs: which VAE (AutoencoderKLWan, AutoencoderKLCogVideoX, and for the next families
AutoencoderKLMagvit or AutoencoderKLTemporalDecoder: any VAE whose ``encode`` returns a
``latent_dist`` with ``mean`` and ``std``), how its latents are normalised, and how its trainable
model's weights are keyed (`ModelFamily.load_trainable_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidctrl.config.fields import ConfigError
from vidctrl.models.loading import CheckpointReader, find_weight_files, open_checkpoint

#: the weights file stem diffusers writes for a transformer / UNet (`save_pretrained`)
WEIGHTS_STEM = "diffusion_pytorch_model"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def video_pixels(frames: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 (the loader's layout) -> (B, 3, F, H, W) in [-1, 1], in `dtype` on `device`."""
    video = frames.to(device, non_blocking=True).permute(0, 4, 1, 2, 3)
    return video.to(dtype) / 127.5 - 1.0


@torch.no_grad()
def posterior_moments(vae: nn.Module, pixels: torch.Tensor, *, mini_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of `pixels` (batch first: videos or images), in the VAE's dtype,
    computed `mini_batch` samples at a time (`--vae_mini_batch`: fewer activations alive at once).

    Only this deterministic half is batched: the posterior samples are drawn per sample afterwards
    (`vidctrl.families.samples.posterior_sample`), so the mini-batch size changes no draw.
    """
    if mini_batch < 1:
        raise ValueError(f"--vae_mini_batch {mini_batch}: encode at least one sample at a time")
    means, stds = [], []
    for part in pixels.split(mini_batch):
        dist = vae.encode(part.to(vae.dtype)).latent_dist  # type: ignore[operator]
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def clip_hidden_states(encoder: nn.Module, images: torch.Tensor, *, layer: int = -2) -> torch.Tensor:
    """A CLIP vision tower's hidden states at `layer` (Wan: the penultimate, (B, 257, 1280) for ViT-H/14)
    of (B, 3, H, W) images in [-1, 1]: resized bicubically to the tower's square input size and
    normalised with CLIP's mean and std, in the encoder's dtype."""
    x = (images.float() * 0.5 + 0.5).clamp(0, 1)
    side = encoder.config.image_size  # type: ignore[union-attr]  # 224 for the real ViT-H/14
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(encoder.dtype)  # type: ignore[arg-type]
    return encoder(pixel_values=x, output_hidden_states=True).hidden_states[layer]


@torch.no_grad()
def masked_text_embeddings(tokenizer: Any, text_encoder: nn.Module, captions: list[str], *, max_length: int,
                           device: torch.device | str) -> list[torch.Tensor]:
    """Each prompt's text-encoder embeddings (L_i, D) in the encoder's dtype, encoded with the attention
    mask and cut after its last token, padding zeroed (as Wan's UMT5; `pad_text_rows` puts it back)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    embeds = text_encoder(ids, attention_mask=mask).last_hidden_state
    out = []
    for row, row_mask in zip(embeds, mask, strict=True):
        length = int(row_mask.nonzero().max()) + 1 if row_mask.any() else 0
        out.append(row[:length] * row_mask[:length, None].to(row.dtype))
    return out


def pad_text_rows(rows: Sequence[torch.Tensor], length: int, device: torch.device | str) -> torch.Tensor:
    """(B, length, D) float32 on `device` from `masked_text_embeddings`' rows: zeros after each prompt."""
    out = torch.zeros((len(rows), length, rows[0].shape[-1]), device=device)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row.to(device).float()
    return out


def configure_vae(vae: nn.Module, *, slicing: bool, tiling: bool, preset: str) -> None:
    """`--enable_slicing` / `--enable_tiling` on a diffusers VAE; a VAE that has no such mode refuses
    the flag, naming the preset."""
    for flag, wanted, method in (("--enable_slicing", slicing, "enable_slicing"),
                                 ("--enable_tiling", tiling, "enable_tiling")):
        if not wanted:
            continue
        enable = getattr(vae, method, None)
        if enable is None:
            raise ConfigError(f"{flag}: the VAE of preset {preset} ({type(vae).__name__}) has no {method[7:]} mode; "
                              "remove the flag")
        enable()


def open_transformer_path(path: str | Path, component: str = "transformer") -> CheckpointReader:
    """`--transformer_path`: a weights file (.safetensors, .bin, .pth, a shard index), a folder holding
    ``diffusion_pytorch_model*`` files, or a model/checkpoint folder with a `component` subfolder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--transformer_path {path}: no such file or folder")
    if path.is_file():
        return open_checkpoint(path)
    folder = path / component if (path / component).is_dir() else path
    files = find_weight_files(folder, WEIGHTS_STEM)
    if not files:
        raise ConfigError(f"--transformer_path {path}: no {WEIGHTS_STEM}.safetensors (or shards, .bin, .pth) in "
                          f"{folder}; pass the weights file or the folder that holds it")
    return open_checkpoint(files[0] if len(files) == 1 else files)


def model_options(config: Any) -> Any:
    """The `model` section of a run's config, or None for a family built without one (tools, tests)."""
    return getattr(config, "model", None)

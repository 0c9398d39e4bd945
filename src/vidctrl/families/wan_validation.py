"""Wan2.1-Fun Control validation: the samples of the validation flags, the conditions a generation
feeds the model (as VideoX-Fun's `WanFunControlPipeline` and as training shows them), Euler sampling
of the flow on the shifted schedule, and decoding. `WanFunControl` delegates its validation here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidctrl.families.base import ModelFamily
from vidctrl.families.samples import EncodedBatch, ValidationSample

# `family` below is a `vidctrl.families.wan_fun.WanFunControl` (not imported: it imports this module).


def check_start_images(config: Any, mode: str) -> None:
    """Refuse ``--validation_start_images`` where train mode `mode` has no frame-0 slot for them, or where
    the reference image would fill the same slot."""
    from vidctrl.config.fields import ConfigError

    options = config.family
    if options.validation_start_images and mode == "control":
        raise ConfigError("--validation_start_images: train mode control has no frame-0 slot to put them in")
    if options.validation_start_images and config.validation.validation_images and not \
            options.add_full_ref_image_in_self_attention:
        raise ConfigError(
            f"--validation_images and --validation_start_images: preset {config.preset} has no full-reference "
            "tokens (--add_full_ref_image_in_self_attention), so its reference is the first frame and both would "
            "fill the frame-0 slot; give one of them"
        )


def validation_runner(family: ModelFamily, config: Any, *, output_dir: Path, camera: bool) -> Any:
    """A `ValidationRunner` on the control samples of the validation flags (camera trajectories with
    `camera`), or None when validation is not configured."""
    from vidctrl.train.validation import ValidationRunner, control_samples, validation_size

    if not (config.validation.validation_steps or config.validation.validation_epochs):
        return None
    height, width, frames = validation_size(config)
    samples = control_samples(config, height, width, frames, start_images=family.options.validation_start_images,
                              camera=camera)
    return ValidationRunner(family, config, samples, output_dir=output_dir, height=height, width=width, frames=frames)


@torch.no_grad()
def generation_conditions(family: ModelFamily, sample: ValidationSample, *, height: int, width: int,
                          frames: int, camera: bool) -> dict[str, Any]:
    """The model inputs besides the text of one generation: with full-reference tokens (V1.1), the
    reference image feeds them and CLIP and a start image the frame-0 slot (training never fills both
    from one frame); without them, the reference or start image fills the frame-0 slot. CLIP sees the
    reference, else the start image, else nothing (zero features)."""
    device, dtype = family.device, family.dtype
    conditions: dict[str, Any] = {}
    parts = []
    latent_frames = (frames - 1) // 4 + 1

    def pixels(image: torch.Tensor | None) -> torch.Tensor | None:
        return None if image is None else image[None].to(device).to(dtype) / 127.5 - 1.0

    if family.train_mode in ("control_ref", "control"):
        control = family._pixels(sample.control.permute(0, 2, 3, 1)[None])  # (F, 3, H, W) -> loader layout
        parts.append(family.vae_encode(control, generator=None))
    reference, start = pixels(sample.reference), pixels(sample.start)
    full_ref = family.options.add_full_ref_image_in_self_attention
    if family.train_mode != "control":
        # Without an image the slot stays zero, as training's reference dropout teaches.
        slot = torch.zeros((1, 16, latent_frames, height // 8, width // 8), device=device)
        slot_image = start if full_ref or start is not None else reference
        if slot_image is not None and latent_frames > 1:
            slot[:, :, :1] = family.vae_encode(slot_image.unsqueeze(2), generator=None)
        parts.append(slot)
        if full_ref:
            conditions["full_ref"] = (torch.zeros((1, 16, height // 8, width // 8), device=device)
                                      if reference is None else
                                      family.vae_encode(reference.unsqueeze(2), generator=None)[:, :, 0])
    conditions["y"] = torch.cat(parts, dim=1)
    clip_source = reference if reference is not None else start
    if clip_source is None:
        clip = family.encode_clip(torch.zeros((1, 3, height, width), device=device))
        conditions["clip"] = torch.zeros_like(clip)
    else:
        conditions["clip"] = family.encode_clip(clip_source)
    if camera:
        from vidctrl.adapters.camera import clip_camera_condition

        # As the pipeline: rays at the validation size, nothing cropped.
        rays = clip_camera_condition(sample.camera, (height, width, 0, 0, height, width), device=device)
        conditions["camera"] = rays[None].to(dtype)
    return conditions


@torch.no_grad()
def sample_flow(family: ModelFamily, model: nn.Module, conditions: dict[str, Any], text: torch.Tensor,
                shape: tuple[int, ...], *, steps: int, guidance_scale: float,
                generator: torch.Generator) -> torch.Tensor:
    """Euler steps of the flow from noise of `shape` to latents, on the schedule shifted by
    ``flow_shift``; `text` holds the prompt's row then the negative prompt's (for guidance > 1)."""
    shift = family.options.flow_shift
    latents = torch.randn(shape, generator=generator).to(family.device)
    t = torch.linspace(1.0, 0.0, steps + 1)
    sigmas = shift * t / (1 + (shift - 1) * t)
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        timestep = torch.full((1,), sigma * 1000.0, device=family.device)
        encoded = EncodedBatch(latents=latents, conditions={**conditions, "text": text[:1]})
        velocity = family.predict(model, encoded, latents.to(family.dtype), timestep).float()
        if guidance_scale > 1.0:
            encoded.conditions["text"] = text[1:]
            uncond = family.predict(model, encoded, latents.to(family.dtype), timestep).float()
            velocity = uncond + guidance_scale * (velocity - uncond)
        latents = latents + (sigma_next - sigma) * velocity
    return latents


@torch.no_grad()
def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(1, 16, T, h, w) normalised latents -> (F, 3, H, W) uint8."""
    mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)  # type: ignore[union-attr]
    std = torch.tensor(vae.config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)  # type: ignore[union-attr]
    video = vae.decode((latents * std + mean).to(vae.dtype)).sample.float()  # type: ignore[operator]
    video = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 0, 2, 3).cpu()

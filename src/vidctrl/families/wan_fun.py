"""Wan2.1-Fun Control (V1.0, V1.1, Control-Camera): control and reference latents concatenated on
channels, CLIP features of the reference, optional full-reference tokens in self-attention, and a
Plücker camera embedding through an adapter. Facts: docs/facts/wan2.1-fun-control.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vidctrl.config.fields import option
from vidctrl.families import wan_validation
from vidctrl.families.base import ModelFamily
from vidctrl.families.encoding import clip_hidden_states, masked_text_embeddings, pad_text_rows
from vidctrl.families.registry import register
from vidctrl.families.samples import (
    EncodedBatch,
    ValidationSample,
    fixed_draw_generators,
    posterior_sample,
    stack_samples,
)
from vidctrl.models.loading import KeyMap
from vidctrl.objectives.flow import FlowMatching, check_flow_flags

# VideoX-Fun names the camera mode control_camera_ref; its seed doc says control_ref_camera.
CAMERA_MODES = ("control_camera_ref", "control_ref_camera")
# What the VideoX-Fun trainer does without being told: a decaying gradient-clip limit.
VIDEOX_CLIPPING: dict[str, Any] = {"initial_grad_norm_ratio": 5.0, "abnormal_norm_clip_start": 1000}


@dataclass
class WanFunOptions:
    """Flags only Wan2.1-Fun Control honours."""

    control_ref_image: Literal["first_frame", "random"] = option(
        "first_frame", help="reference frame: the clip's first frame (V1.0, Camera) or a random clip frame (V1.1)"
    )
    add_full_ref_image_in_self_attention: bool = option(
        False, help="V1.1: prepend the reference image's tokens to self-attention"
    )
    flow_shift: float = option(
        5.0, help="shift of the flow-matching schedule (the seed YAML's scheduler shift)", gt=0
    )
    tokenizer_max_length: int = option(512, help="text tokens (UMT5)", min=1)
    control_dropout: float = option(
        0.1, help="probability of zeroing a sample's control latents", min=0, max=1
    )
    reference_dropout: float = option(
        0.1, help="probability of zeroing a sample's reference latent", min=0, max=1
    )
    clip_dropout: float = option(
        0.1, help="probability of zeroing a sample's CLIP image features", min=0, max=1
    )
    text_dropout: float = option(
        0.1, help="probability of training a sample on the empty prompt", min=0, max=1
    )
    full_ref_dropout: float = option(
        0.1, help="probability of zeroing a sample's full-reference tokens", min=0, max=1
    )
    negative_prompt: str = option("", help="negative prompt for classifier-free guidance in validation")
    validation_start_images: list[str] | None = option(
        None, help="validation: first-frame images, one per prompt, for the frame-0 slot (VideoX-Fun's start_image); "
        "--validation_images then feed V1.1's full-reference tokens and CLIP"
    )


@register
class WanFunControl(ModelFamily):
    """Wan2.1-Fun Control: noisy (16) + control (16) + reference-in-frame-0 (16) latents = 48 channels."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "wan2.1-fun-control-v1.0": {**VIDEOX_CLIPPING, "train_mode": "control_ref", "control_ref_image": "first_frame"},
        "wan2.1-fun-control-v1.1": {
            **VIDEOX_CLIPPING,
            "train_mode": "control_ref",
            "control_ref_image": "random",
            "add_full_ref_image_in_self_attention": True,
        },
        "wan2.1-fun-control-camera": {**VIDEOX_CLIPPING, "train_mode": "control_camera_ref", "control_ref_image": "first_frame"},
    }
    options_class: ClassVar[type] = WanFunOptions
    train_modes: ClassVar[tuple[str, ...]] = ("control_ref", "control", *CAMERA_MODES)
    frame_multiple: ClassVar[int] = 4
    trainable_component: ClassVar[str] = "transformer"
    frozen_components: ClassVar[tuple[str, ...]] = ("vae", "text_encoder", "image_encoder")
    cache_options: ClassVar[tuple[str, ...]] = ("control_ref_image", "tokenizer_max_length")
    lora_target_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")

    # --- configuration -----------------------------------------------------------------------
    @classmethod
    def read_seed_yaml(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`config/wan2.1/wan_civitai.yaml`: the scheduler shift and the text length."""
        values: dict[str, Any] = {}
        scheduler = data.get("scheduler_kwargs") or {}
        if "shift" in scheduler:
            values["flow_shift"] = float(scheduler["shift"])
        text = data.get("text_encoder_kwargs") or {}
        if "text_length" in text:
            values["tokenizer_max_length"] = int(text["text_length"])
        return values

    @classmethod
    def validate_config(cls, config: Any) -> None:
        from vidctrl.config.fields import ConfigError

        options: WanFunOptions = config.family
        mode = config.model.train_mode or cls.presets[config.preset]["train_mode"]
        if mode not in cls.train_modes:
            raise ConfigError(f"--train_mode {mode}: Wan2.1-Fun Control trains in {', '.join(cls.train_modes)}")
        if options.add_full_ref_image_in_self_attention and config.preset != "wan2.1-fun-control-v1.1":
            raise ConfigError(
                "--add_full_ref_image_in_self_attention needs the ref_conv layer that only Wan2.1-Fun V1.1 Control has; "
                f"preset {config.preset} cannot honour it"
            )
        if mode in CAMERA_MODES and config.preset != "wan2.1-fun-control-camera":
            raise ConfigError(f"--train_mode {mode} needs the camera adapter of preset wan2.1-fun-control-camera")
        wan_validation.check_start_images(config, mode)
        check_flow_flags(config.objective, "Wan2.1-Fun")

    def name_for_matching(self, name: str) -> str:
        # diffusers keeps the output modulation at the top level (`scale_shift_table`); VideoX-Fun calls
        # it `head.modulation`, so `--trainable_modules "."` (any name with a dot) selects it there.
        return "head.modulation" if name == "scale_shift_table" else name

    @classmethod
    def write_tiny(cls, out_dir: Path, preset: str, *, layout: str = "diffusers", seed: int = 0) -> Path:
        from vidctrl.models.wan.tiny import write_tiny_wan

        return write_tiny_wan(out_dir, preset, layout=layout, seed=seed)  # type: ignore[arg-type]

    # --- components --------------------------------------------------------------------------
    def load(self, path: Path, *, dtype: torch.dtype, device: torch.device, encoders: bool = True) -> None:
        from vidctrl.models.wan.components import load_wan_components

        parts = ["transformer", "vae", "text_encoder", "tokenizer", "image_encoder"] if encoders else ["transformer"]
        self.use_components(load_wan_components(path, parts=parts, dtype=dtype, device=device), dtype=dtype,
                            device=device)
        transformer = self.components.transformer
        if self.train_mode in CAMERA_MODES and transformer.control_adapter is None:
            raise ValueError(f"{path}: train mode {self.train_mode} needs a transformer with a control_adapter")
        from vidctrl.models.widen import widen_input_channels

        # A base with fewer input channels (text-to-video: 16) is widened with zero-filled channels.
        widen_input_channels(transformer, "patch_embedding", {"control_ref": 48, "control": 32}.get(self.train_mode, 32))
        self.apply_model_options()

    def trainable_key_maps(self) -> list[KeyMap]:
        """`--transformer_path` files: vidctrl's saves (diffusers names) or VideoX-Fun's (original names)."""
        from vidctrl.models.wan.keymap import transformer_key_map

        return [*super().trainable_key_maps(), transformer_key_map()]

    def encoder_files(self, path: Path) -> list[Path]:
        """The release's VAE, UMT5, CLIP and tokenizer files, and the transformer's config (original
        layout: the weights sit side by side in one folder)."""
        from vidctrl.models.wan.components import detect_layout, original_encoder_files

        return super().encoder_files(path) if detect_layout(Path(path)) == "diffusers" else original_encoder_files(path)

    def build_objective(self, config: Any, *, rank: int, world_size: int) -> Any:
        return FlowMatching.from_objective_config(config, shift=self.options.flow_shift, rank=rank,
                                                  world_size=world_size)

    # --- encoding ----------------------------------------------------------------------------
    def normalise(self, mean: torch.Tensor) -> torch.Tensor:
        """Posterior means to normalised latents: per-channel (mean - latents_mean) / latents_std."""
        c = self.constants
        shift = c["latents_mean"].to(mean.device).view(1, -1, 1, 1, 1)
        scale = c["latents_std"].to(mean.device).view(1, -1, 1, 1, 1)
        return (mean.float() - shift) / scale

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Normalised latents (B, 16, T, h, w); sampled with `generator` (training) or the mean (None).

        As the original: the mean is normalised by the VAE's per-channel mean/std, and the noise of
        the posterior is added with its own scale (not divided by std).
        """
        mean, std = self.vae_moments(video)
        latents = self.normalise(mean)
        if generator is None:
            return latents
        return posterior_sample(latents, std, generator)

    def text_embeddings(self, captions: list[str]) -> list[torch.Tensor]:
        """UMT5 embeddings of each prompt, (L_i, 4096) in the encoder's dtype, cut after its last token
        (Wan zeroes the padding; `pad_text_rows` puts it back)."""
        return masked_text_embeddings(self.components.tokenizer, self.components.text_encoder, captions,
                                      max_length=self.options.tokenizer_max_length, device=self.device)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """UMT5 embeddings (B, L, 4096): each prompt's tokens, zero beyond its length (as Wan pads)."""
        return pad_text_rows(self.text_embeddings(captions), self.options.tokenizer_max_length, self.device)

    @torch.no_grad()
    def clip_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP ViT-H penultimate features (B, 257, 1280) of (B, 3, H, W) images in [-1, 1], in the
        encoder's dtype."""
        return clip_hidden_states(self.components.image_encoder, images, layer=-2)

    @torch.no_grad()
    def encode_clip(self, images: torch.Tensor) -> torch.Tensor:
        """`clip_features` in float32."""
        return self.clip_features(images).float()

    def reference_index(self, frames: int, generator: torch.Generator) -> int:
        """The clip frame the reference image is taken from: frame 0, or (V1.1 `random`) frame 0 with
        probability 0.4 and each other frame an equal share of 0.6."""
        if self.options.control_ref_image != "random" or frames == 1:
            return 0
        weights = torch.full((frames,), 0.6 / (frames - 1))
        weights[0] = 0.4
        return int(torch.multinomial(weights, 1, generator=generator))

    def encode_constants(self) -> dict[str, torch.Tensor]:
        vae = self.components.vae
        return {
            "latents_mean": torch.tensor(vae.config.latents_mean, dtype=torch.float32),
            "latents_std": torch.tensor(vae.config.latents_std, dtype=torch.float32),
            "empty_text": self.text_embeddings([""])[0].cpu(),
        }

    @torch.no_grad()
    def encode_deterministic(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample: the target's posterior mean and std, the control's and the reference frame's
        latent means, the reference frame's index and CLIP features, the caption's UMT5 embedding
        (and, camera modes, the camera rows and the resize and crop of the frames)."""
        pixels = self._pixels(batch["pixels"])  # (B, 3, F, H, W)
        batch_size, _, num_frames, _, _ = pixels.shape
        ref_index = [self.reference_index(num_frames, g) for g in fixed_draw_generators(batch)]
        mean, std = self.vae_moments(pixels)
        samples: list[dict[str, torch.Tensor]] = [
            {"latent_mean": mean[i], "latent_std": std[i], "reference_index": torch.tensor(ref_index[i])}
            for i in range(batch_size)
        ]
        if self.train_mode in ("control_ref", "control"):
            if "control" not in batch:
                raise ValueError(f"train mode {self.train_mode} needs control videos; batch {batch['media']} has none")
            control, _ = self.vae_moments(self._pixels(batch["control"]))
            for sample, latent in zip(samples, control, strict=True):
                sample["control_mean"] = latent
        rows = torch.arange(batch_size, device=pixels.device)
        reference = pixels[rows, :, torch.tensor(ref_index, device=pixels.device)]  # (B, 3, H, W)
        if self.train_mode != "control":
            ref_mean, _ = self.vae_moments(reference.unsqueeze(2))  # (B, 16, 1, h, w)
            for sample, latent in zip(samples, ref_mean, strict=True):
                sample["reference_mean"] = latent
        for sample, features, text in zip(samples, self.clip_features(reference),
                                          self.text_embeddings(list(batch["caption"])), strict=True):
            sample["clip"], sample["text"] = features, text
        if self.train_mode in CAMERA_MODES:
            for sample, camera in zip(samples, self.camera_inputs(batch), strict=True):
                sample.update(camera)
        return samples

    def camera_inputs(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample: the camera rows at the clip's frames and the resize and crop of its frames (the
        rays follow both, not the crop alone); what `camera_condition` turns into the adapter input."""
        if "camera" not in batch:
            raise ValueError(f"train mode {self.train_mode} needs camera .txt controls; batch {batch['media']} has none")
        return [{"camera": rows.double(), "camera_geometry": window}
                for rows, window in zip(batch["camera"], batch["camera_geometry"], strict=True)]

    def encode_from(self, samples: list[dict[str, torch.Tensor]], *, generator: torch.Generator,
                    media: Sequence[str] = ()) -> EncodedBatch:
        opts = self.options
        batch_size = len(samples)
        latents = posterior_sample(self.normalise(stack_samples(samples, "latent_mean", self.device)),
                                   stack_samples(samples, "latent_std", self.device), generator)
        ref_index = torch.stack([s["reference_index"] for s in samples])
        conditions: dict[str, Any] = {}
        parts: list[torch.Tensor] = []
        if self.train_mode in ("control_ref", "control"):
            control = self.normalise(stack_samples(samples, "control_mean", self.device))
            keep = (~self._draw(opts.control_dropout, batch_size, generator)).to(control)
            parts.append(control * keep.view(-1, 1, 1, 1, 1))
        if self.train_mode != "control":
            ref_latent = self.normalise(stack_samples(samples, "reference_mean", self.device))  # (B, 16, 1, h, w)
            ref_slot = torch.zeros_like(latents)
            # A reference from a later frame is no first-frame condition: it enters as full-reference tokens only.
            dropped = self._draw(opts.reference_dropout, batch_size, generator) | (ref_index != 0)
            ref_slot[:, :, :1] = ref_latent * (~dropped).to(ref_latent).view(-1, 1, 1, 1, 1)
            parts.append(ref_slot)
            if opts.add_full_ref_image_in_self_attention:
                full_dropped = self._draw(opts.full_ref_dropout, batch_size, generator) | (ref_index == 0)
                conditions["full_ref"] = ref_latent[:, :, 0] * (~full_dropped).to(ref_latent).view(-1, 1, 1, 1)
        conditions["y"] = torch.cat(parts, dim=1)
        clip = stack_samples(samples, "clip", self.device).float()
        clip_keep = (~self._draw(opts.clip_dropout, batch_size, generator)).to(clip)
        conditions["clip"] = clip * clip_keep.view(-1, 1, 1)
        text_drop = self._draw(opts.text_dropout, batch_size, generator)
        empty = self.constants["empty_text"]
        conditions["text"] = pad_text_rows([empty if drop else s["text"] for drop, s in
                                            zip(text_drop.tolist(), samples, strict=True)],
                                           self.options.tokenizer_max_length, self.device)
        if self.train_mode in CAMERA_MODES:
            conditions["camera"] = self.camera_condition(samples)
        _, _, t, h, w = latents.shape
        tokens = batch_size * t * (h // 2) * (w // 2)
        return EncodedBatch(latents=latents, conditions=conditions, media=list(media), tokens=tokens)

    def camera_condition(self, samples: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Plücker embeddings packed 4 frames to the latent frame (`stacked_camera_condition`)."""
        from vidctrl.adapters.camera import stacked_camera_condition

        return stacked_camera_condition(samples, device=self.device).to(self.dtype)

    def predict(self, model: nn.Module, encoded: EncodedBatch, noisy: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        c = encoded.conditions
        hidden = torch.cat([noisy, c["y"].to(noisy.dtype)], dim=1)
        out = model(
            hidden_states=hidden,
            timestep=timesteps,
            encoder_hidden_states=c["text"],
            encoder_hidden_states_image=c["clip"],
            full_ref_latents=c.get("full_ref"),
            camera_embedding=c.get("camera"),
            return_dict=False,
        )
        return out[0]

    # --- validation (`vidctrl.families.wan_validation`) ------------------------------------------
    def validation_runner(self, config: Any, *, output_dir: Path) -> Any:
        return wan_validation.validation_runner(self, config, output_dir=output_dir, camera=self.train_mode in CAMERA_MODES)

    @torch.no_grad()
    def generate(self, model: nn.Module, sample: ValidationSample, *, height: int, width: int, frames: int,
                 steps: int, guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
        """Euler sampling of the flow on the shifted schedule, conditioned as VideoX-Fun's inference
        (`WanFunControlPipeline`) and as training shows the model (`generation_conditions`)."""
        conditions = wan_validation.generation_conditions(self, sample, height=height, width=width, frames=frames,
                                                          camera=self.train_mode in CAMERA_MODES)
        text = self.encode_text([sample.prompt, self.options.negative_prompt])
        shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        latents = wan_validation.sample_flow(self, model, conditions, text, shape, steps=steps,
                                             guidance_scale=guidance_scale, generator=generator)
        return wan_validation.decode(self.components.vae, latents)

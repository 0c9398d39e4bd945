"""CogVideoX-Fun (InP and Control): condition latents concatenated on the channels of a CogVideoX
transformer, trained with DDPM (v-prediction, zero terminal SNR). Facts: docs/facts/cogvideox-fun.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vidctrl.config.fields import option
from vidctrl.families.cogvideox import CogVideoXFamily
from vidctrl.families.registry import register
from vidctrl.families.samples import (
    EncodedBatch,
    ValidationSample,
    fixed_draw_generators,
    posterior_sample,
    stack_samples,
)

# CogVideoX-Fun scripts/train.py and train_control.py defaults (VideoX-Fun's are the same).
COGVIDEOX_FUN_CLIPPING: dict[str, Any] = {"initial_grad_norm_ratio": 5.0, "abnormal_norm_clip_start": 1000}
# Its collate_fn's own draws (VideoX-Fun scripts/cogvideox_fun/train_control.py @ 804a425, CogVideoX-Fun
# scripts/train_control.py @ 6c39567): no downscale with p 0.75, token-length sizes drawn uniformly.
COGVIDEOX_FUN_DRAWS: dict[str, Any] = {"downsample_first_prob": 0.75, "size_weighting": "uniform"}
NEGATIVE_PROMPT = (
    "The video is not of a high quality, it has a low resolution. Watermark present in each frame. "
    "The background is solid. Strange body and strange trajectory. Distortion. "
)
TRAIN_MODES = ("inpaint", "control", "normal")


@dataclass
class CogVideoXFunOptions:
    """Flags only CogVideoX-Fun honours."""

    tokenizer_max_length: int = option(226, help="text tokens (T5)", min=1)
    text_dropout: float = option(
        0.1, help="probability of training a sample on the empty prompt (VideoX-Fun's text_drop_ratio)",
        min=0, max=1,
    )
    inpaint_mask_distribution: Literal["videox_fun", "cogvideox_fun"] = option(
        "videox_fun", help="random inpaint masks: VideoX-Fun's ten kinds or the original CogVideoX-Fun's five"
    )
    add_noise_in_inpaint_model: bool | None = option(
        None, help="noise the kept pixels before encoding them (InP V1.1); default: the transformer config's value"
    )
    noise_schedule: Literal["config", "ddpm"] = option(
        "config",
        help="training alphas: as the scheduler config's class builds them (snr_shift_scale applied, as sampling "
        "does), or as DDPMScheduler (CogVideoX-Fun's trainer: the shift ignored)",
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = option(
        None, help="what the model predicts; default: the scheduler config's prediction_type"
    )
    validation_sampler: Literal["ddim", "dpm"] = option(
        "ddim", help="validation sampling: CogVideoX DDIM, or CogVideoX DPM-Solver (recommended for 5B)"
    )
    validation_paths: list[str] | None = option(
        None, help="VideoX-Fun spelling: start images (inpaint) or control videos (control), one per prompt"
    )
    negative_prompt: str = option(NEGATIVE_PROMPT, help="negative prompt for classifier-free guidance in validation")


@register
class CogVideoXFun(CogVideoXFamily):
    """CogVideoX-Fun InP (33 input channels) and Control (32) on a CogVideoX transformer."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cogvideox-fun-inp": {**COGVIDEOX_FUN_CLIPPING, **COGVIDEOX_FUN_DRAWS, "train_mode": "inpaint"},
        "cogvideox-fun-control": {**COGVIDEOX_FUN_CLIPPING, **COGVIDEOX_FUN_DRAWS, "train_mode": "control"},
    }
    options_class: ClassVar[type] = CogVideoXFunOptions
    train_modes: ClassVar[tuple[str, ...]] = TRAIN_MODES
    cache_options: ClassVar[tuple[str, ...]] = ("tokenizer_max_length", "inpaint_mask_distribution",
                                                "add_noise_in_inpaint_model")
    lora_target_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, preset: str, options: CogVideoXFunOptions, *, train_mode: str, config: Any = None) -> None:
        super().__init__(preset, options or CogVideoXFunOptions(), train_mode=train_mode, config=config)
        self.add_noise_in_inpaint_model = False

    # --- configuration -----------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: Any) -> None:
        from vidctrl.config.fields import ConfigError

        mode = config.model.train_mode or cls.presets[config.preset]["train_mode"]
        if mode not in TRAIN_MODES:
            raise ConfigError(f"--train_mode {mode}: CogVideoX-Fun trains in {', '.join(TRAIN_MODES)}")
        if config.preset == "cogvideox-fun-control" and mode == "inpaint":
            raise ConfigError("--train_mode inpaint needs an InP checkpoint (33 input channels): use preset "
                              "cogvideox-fun-inp")
        if config.preset == "cogvideox-fun-inp" and mode == "control":
            raise ConfigError("--train_mode control needs a Control checkpoint (32 input channels) or a plain "
                              "CogVideoX base: use preset cogvideox-fun-control")
        objective = config.objective
        if objective.loss_type not in (None, "ddpm"):
            raise ConfigError(f"--loss_type {objective.loss_type}: CogVideoX-Fun trains with DDPM only")
        if objective.weighting_scheme != "none":
            raise ConfigError(
                f"--weighting_scheme {objective.weighting_scheme}: CogVideoX-Fun draws DDPM timesteps uniformly "
                "(rank-stratified with --uniform_sampling); the weighting schemes belong to flow matching"
            )
        if objective.motion_sub_loss:
            raise ConfigError("--motion_sub_loss: vidctrl's DDPM objective has no frame-difference loss yet; "
                              "remove the flag (it changes the loss, so it is not ignored silently)")
        from vidctrl.families.cogvideox_fun_validation import validation_inputs

        try:
            validation_inputs(config, mode)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def write_tiny(cls, out_dir: Path, preset: str, *, layout: str = "diffusers", seed: int = 0) -> Path:
        from vidctrl.models.cogvideox.tiny import write_tiny_cogvideox

        if layout != "diffusers":
            raise ValueError(f"CogVideoX-Fun releases ship in the diffusers layout only, not {layout!r}")
        return write_tiny_cogvideox(out_dir, preset, seed=seed)

    # --- components --------------------------------------------------------------------------
    def prepare_transformer(self, path: Path) -> None:
        """Widen a text-to-video base for the train mode, then the model flags (`--transformer_path` holds
        weights of the widened transformer)."""
        from vidctrl.models.cogvideox.components import read_json, widen_patch_embedding

        transformer = self.components.transformer
        vae = self.components.vae
        latent = vae.config.latent_channels if vae is not None else read_json(Path(path) / "vae" / "config.json")[
            "latent_channels"]
        needed = {"inpaint": 2 * latent + 1, "control": 2 * latent, "normal": latent}[self.train_mode]
        base = transformer.config.in_channels
        if base not in (needed, latent):
            raise ValueError(
                f"{path}: the transformer takes {base} input channels; train mode {self.train_mode} feeds {needed}. "
                f"Only a text-to-video base ({latent} channels) is widened; choose the preset of this checkpoint"
            )
        # A text-to-video base is widened with zero-filled channels (it computes what it did until trained).
        widen_patch_embedding(transformer, needed)
        raw = self.components.transformer_config
        flag = self.options.add_noise_in_inpaint_model
        self.add_noise_in_inpaint_model = bool(raw.get("add_noise_in_inpaint_model", False) if flag is None else flag)
        if "add_noise_in_inpaint_model" in raw or flag is not None:
            # Not a diffusers argument; kept in the saved config for VideoX-Fun, which reads it from there.
            transformer.register_to_config(add_noise_in_inpaint_model=self.add_noise_in_inpaint_model)
        self.apply_model_options()

    # --- objective ---------------------------------------------------------------------------
    def prediction_type(self) -> str:
        return self.options.prediction_type or self.components.scheduler_config.get("prediction_type", "epsilon")

    def training_alphas_cumprod(self) -> torch.Tensor:
        """The schedule the objective noises with (see the module docstring on ``snr_shift_scale``)."""
        from vidctrl.objectives.ddpm import alphas_cumprod_from_config

        scheduler_class = "DDPMScheduler" if self.options.noise_schedule == "ddpm" else None
        return alphas_cumprod_from_config(self.components.scheduler_config, scheduler_class)

    def build_objective(self, config: Any, *, rank: int, world_size: int) -> Any:
        from vidctrl.objectives.ddpm import DDPM
        from vidctrl.objectives.timesteps import build_index_sampler

        sampler = build_index_sampler(num_indices=config.train_sampling_steps, uniform_sampling=config.uniform_sampling,
                                      rank=rank, world_size=world_size)
        return DDPM(self.training_alphas_cumprod(), prediction_type=self.prediction_type(),  # type: ignore[arg-type]
                    sampler=sampler)

    def sampling_scheduler(self) -> Any:
        """A CogVideoX DDIM or DPM scheduler on exactly the training ``alphas_cumprod``."""
        from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

        config = {**self.components.scheduler_config, "prediction_type": self.prediction_type()}
        scheduler_cls = CogVideoXDPMScheduler if self.options.validation_sampler == "dpm" else CogVideoXDDIMScheduler
        scheduler = scheduler_cls.from_config(config)
        scheduler.alphas_cumprod = self.training_alphas_cumprod().to(scheduler.alphas_cumprod.dtype)
        return scheduler

    # --- encoding ----------------------------------------------------------------------------
    def text_length(self) -> int:
        return self.options.tokenizer_max_length

    def usable_frames(self, frames: int) -> int:
        """CogVideoX 1.5 needs latent frames in multiples of ``patch_size_t``: drop the extra ones at the end."""
        p_t = self.components.transformer.config.patch_size_t
        if p_t is None or frames == 1:
            return frames
        extra = ((frames - 1) // 4 + 1) % p_t
        return max(frames - extra * 4, 1)

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled posterior samples (B, 16, T, h, w) float32 of `vae_moments`' output."""
        return posterior_sample(mean, std, generator) * self.scaling_factor

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents (B, 16, T, h, w) float32: sampled with `generator` (training), else the mean."""
        mean, std = self.vae_moments(video)
        if generator is None:
            return mean.float() * self.scaling_factor
        return self.sample_latents(mean, std, generator)

    def inpaint_inputs(self, pixels: torch.Tensor, latent_size: tuple[int, int, int],
                       generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """`masked_video_inputs`: a mask per sample from its generator, and the masked video's posterior."""
        from vidctrl.models.cogvideox.inpaint import masked_video_inputs

        return masked_video_inputs(pixels, latent_size, generators, distribution=self.options.inpaint_mask_distribution,
                                   add_noise=self.add_noise_in_inpaint_model, moments=self.vae_moments)

    def inpaint_from(self, inputs: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """(B, 17, T, h, w): the keep mask and a posterior sample of the masked video (`inpaint_condition_from`)."""
        from vidctrl.models.cogvideox.inpaint import inpaint_condition_from

        return inpaint_condition_from(inputs, generator, sample_latents=self.sample_latents,
                                      scaling_factor=self.scaling_factor, device=self.device)

    def inpaint_condition(self, pixels: torch.Tensor, latent_size: tuple[int, int, int],
                          generator: torch.Generator) -> torch.Tensor:
        """`inpaint_inputs` then `inpaint_from`, all draws from `generator` (masks and kept-pixel noise
        first, then the text-to-video zeroing and the posterior sample)."""
        inputs = self.inpaint_inputs(pixels, latent_size, [generator] * pixels.shape[0])
        return self.inpaint_from(inputs, generator)

    def encode_constants(self) -> dict[str, torch.Tensor]:
        return {**super().encode_constants(), "empty_text": self.text_embeddings([""])[0].cpu()}

    @torch.no_grad()
    def encode_deterministic(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample: the target's posterior mean and std; inpaint: a mask (the sample's fixed draw)
        and the masked video's posterior; control: the control's posterior; the caption's T5 embedding."""
        pixels = self._pixels(batch["pixels"])  # (B, 3, F, H, W)
        frames = self.usable_frames(pixels.shape[2])
        pixels = pixels[:, :, :frames]
        batch_size = pixels.shape[0]
        mean, std = self.vae_moments(pixels)
        samples: list[dict[str, torch.Tensor]] = [{"latent_mean": mean[i], "latent_std": std[i]}
                                                  for i in range(batch_size)]
        if self.train_mode == "inpaint":
            inputs = self.inpaint_inputs(pixels, tuple(mean.shape[2:]), fixed_draw_generators(batch))  # type: ignore[arg-type]
            for i, sample in enumerate(samples):
                sample.update({key: value[i] for key, value in inputs.items()})
        elif self.train_mode == "control":
            if "control" not in batch:
                raise ValueError(f"train mode control needs control videos; batch {batch['media']} has none")
            control_mean, control_std = self.vae_moments(self._pixels(batch["control"])[:, :, :frames])
            for i, sample in enumerate(samples):
                sample.update(control_mean=control_mean[i], control_std=control_std[i])
        for sample, text in zip(samples, self.text_embeddings(list(batch["caption"])), strict=True):
            sample["text"] = text
        return samples

    def encode_from(self, samples: list[dict[str, torch.Tensor]], *, generator: torch.Generator,
                    media: Sequence[str] = ()) -> EncodedBatch:
        batch_size = len(samples)

        def stacked(key: str) -> torch.Tensor:
            return stack_samples(samples, key, self.device)

        latents = self.sample_latents(stacked("latent_mean"), stacked("latent_std"), generator)  # (B, 16, T, h, w)
        conditions: dict[str, Any] = {}
        if self.train_mode == "inpaint":
            keys = ("inpaint_keep", "masked_mean", "masked_std", "fully_masked")
            conditions["inpaint"] = self.inpaint_from({k: stacked(k) for k in keys}, generator).permute(0, 2, 1, 3, 4)
        elif self.train_mode == "control":
            control = self.sample_latents(stacked("control_mean"), stacked("control_std"), generator)
            conditions["control"] = control.permute(0, 2, 1, 3, 4)
        dropped = self._draw(self.options.text_dropout, batch_size, generator)
        empty = self.constants["empty_text"]
        conditions["text"] = torch.stack([(empty if drop else sample["text"]).to(self.device) for drop, sample
                                          in zip(dropped.tolist(), samples, strict=True)]).float()
        tokens = self.token_count(batch_size, *latents.shape[2:])
        return EncodedBatch(latents=latents.permute(0, 2, 1, 3, 4), conditions=conditions, media=list(media),
                            tokens=tokens)

    def predict(self, model: nn.Module, encoded: EncodedBatch, noisy: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        return self._forward(model, noisy, timesteps, encoded.conditions)

    def _forward(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                 conditions: dict[str, Any]) -> torch.Tensor:
        """The transformer on (B, T, 16, h, w) noisy latents with the mode's channels concatenated."""
        from vidctrl.models.cogvideox.components import rotary_embedding

        config = self.components.transformer.config
        parts = [noisy] + [conditions[k].to(noisy.dtype) for k in ("inpaint", "control") if k in conditions]
        hidden = torch.cat(parts, dim=2)
        batch, frames, _, height, width = noisy.shape
        rotary = rotary_embedding(config, latent_frames=frames, latent_height=height, latent_width=width,
                                  device=noisy.device)
        extra = {}
        if config.ofs_embed_dim is not None:  # CogVideoX 1.5 I2V's offset embedding, 2.0 as its pipeline
            extra["ofs"] = noisy.new_full((batch,), 2.0)
        return model(hidden_states=hidden, encoder_hidden_states=conditions["text"].to(noisy.dtype),
                     timestep=timesteps, image_rotary_emb=rotary, return_dict=False, **extra)[0]

    # --- validation (`vidctrl.families.cogvideox_fun_validation`) --------------------------------
    def validation_runner(self, config: Any, *, output_dir: Path) -> Any:
        from vidctrl.families.cogvideox_fun_validation import validation_samples
        from vidctrl.train.validation import ValidationRunner

        if not (config.validation.validation_steps or config.validation.validation_epochs):
            return None
        samples, height, width, frames = validation_samples(config, self.train_mode)
        return ValidationRunner(self, config, samples, output_dir=output_dir, height=height, width=width, frames=frames)

    @torch.no_grad()
    def generate(self, model: nn.Module, sample: ValidationSample, *, height: int, width: int, frames: int,
                 steps: int, guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
        """DDIM or DPM-Solver sampling on the training schedule, with classifier-free guidance."""
        frames = self.usable_frames(frames)
        latent_size = ((frames - 1) // 4 + 1, height // 8, width // 8)
        latent = self.components.vae.config.latent_channels
        conditions: dict[str, Any] = {}
        if self.train_mode == "inpaint":
            from vidctrl.models.cogvideox.inpaint import sampling_condition

            vae = self.components.vae
            conditions["inpaint"] = sampling_condition(
                sample.reference, latent_size, frames, generator, latent_channels=latent,
                scaling_factor=vae.config.scaling_factor, add_noise=self.add_noise_in_inpaint_model,
                encode=lambda video: self.vae_encode(video, generator=None), device=self.device, dtype=self.dtype)
        elif self.train_mode == "control":
            control = self._pixels(sample.control[:frames].permute(0, 2, 3, 1)[None])  # (F, 3, H, W) -> loader layout
            conditions["control"] = self.vae_encode(control, generator=None).permute(0, 2, 1, 3, 4)
        guided = guidance_scale > 1.0
        prompts = [self.options.negative_prompt, sample.prompt] if guided else [sample.prompt]
        conditions["text"] = self.encode_text(prompts)
        if guided:
            conditions = {k: v if k == "text" else torch.cat([v, v]) for k, v in conditions.items()}
        shape = (1, latent_size[0], latent, latent_size[1], latent_size[2])

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([latents, latents]) if guided else latents
            return self._forward(model, model_input.to(self.dtype), t.expand(model_input.shape[0]), conditions)

        latents = self.sample_guided(self.sampling_scheduler(), shape, predict, guidance_scale=guidance_scale,
                                     steps=steps, generator=generator)
        return self.decode(latents)[:frames]

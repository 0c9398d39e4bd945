"""DynamiCtrl: CogVideoX1.5-5B-I2V with the reference latent concatenated (32 channels) and the pose
video through Pose-adaptive LayerNorm in every block (`vidctrl.models.cogvideox.padaln`).

What the original does and where vidctrl differs (clips, the noisy reference, captions, the x0 loss,
PadaLN initialisation, validation padding): docs/facts/dynamictrl.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vidctrl.config.fields import option
from vidctrl.families.cogvideox import CogVideoXFamily
from vidctrl.families.dynamictrl_validation import (
    DEFAULT_SEPARATOR,
    SIZE_BUCKETS,
    check_validation_flags,
    frame_count_problem,
    latent_frames,
    validation_samples,
)
from vidctrl.families.encoding import model_options
from vidctrl.families.registry import register
from vidctrl.families.samples import (
    EncodedBatch,
    ValidationSample,
    fixed_draw_generators,
    posterior_sample,
    stack_samples,
)
from vidctrl.models.cogvideox.tiny import write_tiny_dynamictrl

log = logging.getLogger(__name__)

PRESET = "dynamictrl"
TRAIN_MODE = "control_ref"
OFS = 2.0  # DynamiCtrl's (and CogVideoX1.5-I2V's) constant "ofs" embedding input
IMAGE_NOISE_LOG_MEAN, IMAGE_NOISE_LOG_STD = -3.0, 0.5


@dataclass
class DynamiCtrlOptions:
    """Flags only DynamiCtrl honours."""

    enable_control_pose: bool = option(
        True, help="DynamiCtrl: condition on the pose video (required: its PadaLN blocks need the pose)"
    )
    pose_control_function: str = option(
        "padaln", help="how the pose enters the model: padaln (the only one with released weights)"
    )
    id_token: str | None = option(None, help="token put (with a space) in front of every training caption")
    noised_image_dropout: float = option(
        0.05, help="probability of zeroing a sample's reference latent (image condition dropout)",
        min=0, max=1,
    )
    padaln_zero_init: bool = option(
        False, help="when PadaLN layers are added to a CogVideoX1.5-I2V base, zero them so that training starts "
        "from the base model's exact predictions (DynamiCtrl uses PyTorch's default initialisation)"
    )
    use_dynamic_cfg: bool = option(False, help="validation: cosine-scheduled guidance scale (CogVideoX's dynamic CFG)")
    negative_prompt: str = option("", help="negative prompt for classifier-free guidance in validation")


@register
class DynamiCtrl(CogVideoXFamily):
    """CogVideoX1.5-I2V + PadaLN: noisy (16) + reference (16) latents in, pose through PadaLN."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        PRESET: {
            "train_mode": TRAIN_MODE,
            "frame_sampling": "dynamictrl",
            "height_buckets": SIZE_BUCKETS,
            "width_buckets": SIZE_BUCKETS,
            # The original's default (49) gives 13 latent frames, which CogVideoX 1.5 cannot patch.
            "video_sample_n_frames": 53,
            "adam_beta2": 0.95,
            "adam_weight_decay": 1e-4,
            "adam_epsilon": 1e-8,
            "lr_warmup_steps": 500,
            "validation_prompt_separator": DEFAULT_SEPARATOR,
        }
    }
    options_class: ClassVar[type] = DynamiCtrlOptions
    train_modes: ClassVar[tuple[str, ...]] = (TRAIN_MODE,)
    cache_options: ClassVar[tuple[str, ...]] = ("id_token",)
    lora_target_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")

    def __init__(self, preset: str, options: DynamiCtrlOptions, *, train_mode: str, config: Any = None) -> None:
        super().__init__(preset, options or DynamiCtrlOptions(), train_mode=train_mode, config=config)
        self.padaln_added = False
        self._added: list[int] = []
        self._rotary: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # --- configuration -----------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: Any) -> None:
        from vidctrl.config.fields import ConfigError

        opts: DynamiCtrlOptions = config.family
        mode = config.model.train_mode or TRAIN_MODE
        if mode not in cls.train_modes:
            raise ConfigError(f"--train_mode {mode}: DynamiCtrl trains in {TRAIN_MODE} (reference image + pose video)")
        if not opts.enable_control_pose:
            raise ConfigError(
                "--enable_control_pose false: DynamiCtrl's blocks all carry PadaLN layers that need the pose video "
                "(the original crashes without it); train CogVideoX image-to-video with a CogVideoX preset instead"
            )
        if opts.pose_control_function != "padaln":
            raise ConfigError(
                f"--pose_control_function {opts.pose_control_function}: vidctrl trains DynamiCtrl's padaln, the only "
                "pose function with released weights (the original's cross_attention layers are never built and its "
                "default expert_layer_norm has no implementation)"
            )
        if not 0.0 <= opts.noised_image_dropout <= 1.0:
            raise ConfigError(f"--noised_image_dropout {opts.noised_image_dropout} is not a probability")
        objective = config.objective
        if objective.loss_type not in (None, "ddpm"):
            raise ConfigError(f"--loss_type {objective.loss_type}: DynamiCtrl trains DDPM (v-prediction, x0 loss)")
        if objective.weighting_scheme != "none" or objective.motion_sub_loss:
            raise ConfigError(
                "--weighting_scheme / --motion_sub_loss belong to flow-matching presets; DynamiCtrl weights its x0 "
                "loss by 1 / (1 - alphabar_t)"
            )
        data = config.data
        if data.frame_sampling not in (None, "dynamictrl"):
            raise ConfigError(
                f"--frame_sampling {data.frame_sampling}: DynamiCtrl trains on a contiguous window of its frame "
                "buckets (--frame_sampling dynamictrl)"
            )
        for frames in data.frame_buckets or [data.video_sample_n_frames]:
            problem = frame_count_problem(frames)
            if problem:
                flag = "--frame_buckets" if data.frame_buckets else "--max_num_frames"
                raise ConfigError(f"{flag}: {problem}")
        check_validation_flags(config)

    @classmethod
    def write_tiny(cls, out_dir: Path, preset: str, *, layout: str = "diffusers", seed: int = 0) -> Path:
        return write_tiny_dynamictrl(out_dir, layout=layout, seed=seed)

    # --- components --------------------------------------------------------------------------
    def transformer_class(self) -> type[nn.Module]:
        from vidctrl.models.cogvideox.padaln import DynamiCtrlTransformer3DModel

        return DynamiCtrlTransformer3DModel

    def initialize_missing(self) -> Any:
        """PadaLN layers for a checkpoint without them (a CogVideoX1.5-I2V base); `padaln_added` then
        says whether the last weights loaded (base, or ``--transformer_path``) lacked them."""
        from vidctrl.models.cogvideox.padaln import padaln_initializer

        self._added = []
        return padaln_initializer(zero_init=self.options.padaln_zero_init, on_added=self._added.append)

    def prepare_transformer(self, path: Path) -> None:
        """``--transformer_path`` (weights of a DynamiCtrl or CogVideoX1.5-I2V transformer) first, by the
        same rule as the base folder's; then the PadaLN and version checks and the widening."""
        from vidctrl.config.fields import ConfigError
        from vidctrl.models.cogvideox.components import widen_patch_embedding
        from vidctrl.models.cogvideox.padaln import check_padaln_source

        self.apply_model_options()
        transformer = self.components.transformer
        model_config = model_options(self.config)
        transformer_path = getattr(model_config, "transformer_path", None)
        source = path if transformer_path is None else Path(transformer_path)
        zero_init, added = self.options.padaln_zero_init, self._added
        self.padaln_added = bool(added)
        if self.padaln_added:
            log.info("%s: added %d PadaLN layers to the CogVideoX base (%s initialisation)", source, added[0],
                     "zero" if zero_init else "PyTorch default")
        check_padaln_source(source, added=self.padaln_added, zero_init=zero_init,
                            use_lora=model_config is not None and bool(model_config.use_lora))
        if transformer.config.patch_size_t is None:
            raise ConfigError(f"{path}: DynamiCtrl needs a CogVideoX 1.5 transformer (patch_size_t 2); this one is 1.0")
        # A text-to-video base (16 input channels) takes the reference latent through zero-filled channels.
        widen_patch_embedding(transformer, 2 * transformer.config.out_channels)

    def build_objective(self, config: Any, *, rank: int, world_size: int) -> Any:
        from vidctrl.objectives.ddpm import DDPM
        from vidctrl.objectives.timesteps import build_index_sampler

        schedule = self.components.scheduler_config
        sampler = build_index_sampler(num_indices=int(schedule.get("num_train_timesteps", 1000)),
                                      uniform_sampling=config.uniform_sampling, rank=rank, world_size=world_size)
        return DDPM.from_scheduler_config(schedule, scheduler_class="CogVideoXDPMScheduler", loss_style="x0",
                                          sampler=sampler)

    # --- encoding ----------------------------------------------------------------------------
    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled posterior samples ``(B, T, 16, h, w)`` of `vae_moments`' output."""
        return (posterior_sample(mean, std, generator) * self.scaling_factor).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled posterior samples ``(B, T, 16, h, w)`` of ``(B, 3, F, H, W)`` pixels in [-1, 1]."""
        return self.sample_latents(*self.vae_moments(video), generator)

    def caption(self, text: str) -> str:
        token = self.options.id_token
        return f"{token.strip()} {text}" if token else text

    def _check_latent_frames(self, frames: int, what: str) -> None:
        p_t = self.components.transformer.config.patch_size_t or 1
        if frames % p_t:
            raise ValueError(
                f"{what} gives {frames} latent frames, not a multiple of patch_size_t {p_t}; choose frame buckets with "
                "an even latent count (e.g. 37, 45, 53)"
            )

    @torch.no_grad()
    def encode_deterministic(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample: the posterior mean and std of the noisy reference image (its noise is the sample's
        fixed draw), of the video and of the pose video, and the caption's T5 embedding."""
        if "control" not in batch:
            raise ValueError(f"DynamiCtrl trains on pose videos; batch {batch['media']} has none")
        video = self._pixels(batch["pixels"])  # (B, 3, F, H, W)
        # The reference is the clip's first frame with a little noise of random scale, as the original.
        noisy_images = []
        for image, generator in zip(video[:, :, :1], fixed_draw_generators(batch), strict=True):
            sigma = torch.exp(torch.normal(IMAGE_NOISE_LOG_MEAN, IMAGE_NOISE_LOG_STD, (1,), generator=generator))
            noise = torch.randn(image.shape, generator=generator, device=generator.device).to(image)
            noisy_images.append(image + noise * sigma.to(image))
        image_mean, image_std = self.vae_moments(torch.stack(noisy_images))  # (B, 16, 1, h, w)
        mean, std = self.vae_moments(video)
        self._check_latent_frames(mean.shape[2], f"a {video.shape[2]}-frame clip ({batch['media'][0]})")
        control_mean, control_std = self.vae_moments(self._pixels(batch["control"]))
        text = self.text_embeddings([self.caption(c) for c in batch["caption"]])
        return [
            {"image_mean": image_mean[i], "image_std": image_std[i], "latent_mean": mean[i], "latent_std": std[i],
             "control_mean": control_mean[i], "control_std": control_std[i], "text": text[i]}
            for i in range(video.shape[0])
        ]

    def encode_from(self, samples: list[dict[str, torch.Tensor]], *, generator: torch.Generator,
                    media: Sequence[str] = ()) -> EncodedBatch:
        def stacked(key: str) -> torch.Tensor:
            return stack_samples(samples, key, self.device)

        batch_size = len(samples)
        image_latents = self.sample_latents(stacked("image_mean"), stacked("image_std"), generator)  # (B, 1, 16, h, w)
        latents = self.sample_latents(stacked("latent_mean"), stacked("latent_std"), generator)  # (B, T, 16, h, w)
        control = self.sample_latents(stacked("control_mean"), stacked("control_std"), generator)
        frames = latents.shape[1]
        image_latents = torch.cat([image_latents, image_latents.new_zeros(batch_size, frames - 1,
                                                                          *image_latents.shape[2:])], dim=1)
        keep = torch.rand(batch_size, generator=generator) >= self.options.noised_image_dropout
        image_latents = image_latents * keep.to(image_latents).view(-1, 1, 1, 1, 1)
        text = stacked("text").float()

        tokens = self.token_count(batch_size, frames, *latents.shape[-2:])
        conditions = {"image_latents": image_latents, "control": control, "text": text}
        return EncodedBatch(latents=latents, conditions=conditions, media=list(media), tokens=tokens)

    def rotary(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        from vidctrl.models.cogvideox.components import rotary_embedding

        key = (frames, height, width, str(self.device))
        if key not in self._rotary:
            table = rotary_embedding(self.components.transformer.config, latent_frames=frames, latent_height=height,
                                     latent_width=width, device=self.device)
            if table is None:
                raise ValueError("DynamiCtrl's transformer uses rotary position embeddings; this config has none")
            self._rotary[key] = table
        return self._rotary[key]

    def predict(self, model: nn.Module, encoded: EncodedBatch, noisy: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        c = encoded.conditions
        _, frames, _, height, width = noisy.shape
        hidden = torch.cat([noisy, c["image_latents"].to(noisy.dtype)], dim=2)
        out = model(
            hidden_states=hidden,
            encoder_hidden_states=c["text"].to(noisy.dtype),
            timestep=timesteps,
            control_hidden_states=c["control"].to(noisy.dtype),
            ofs=hidden.new_full((1,), OFS),
            image_rotary_emb=self.rotary(frames, height, width),
            return_dict=False,
        )
        return out[0]

    # --- validation (`vidctrl.families.dynamictrl_validation`) ------------------------------------
    def validation_runner(self, config: Any, *, output_dir: Path) -> Any:
        from vidctrl.train.validation import ValidationRunner

        v = config.validation
        if not (v.validation_steps or v.validation_epochs):
            return None
        samples, height, width, frames = validation_samples(config)
        return ValidationRunner(self, config, samples, output_dir=output_dir, height=height, width=width, frames=frames)

    @torch.no_grad()
    def generate(self, model: nn.Module, sample: ValidationSample, *, height: int, width: int, frames: int,
                 steps: int, guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
        """CogVideoXDPMScheduler sampling as the DynamiCtrl pipeline, with text guidance."""
        from diffusers import CogVideoXDPMScheduler

        if sample.reference is None or sample.control is None:
            raise ValueError(f"validation sample {sample.name} needs a reference image and a driving video")
        transformer = self.components.transformer
        p_t = transformer.config.patch_size_t or 1
        count = latent_frames(frames)
        extra = (-count) % p_t  # padding frames at the front, dropped before decoding (the pipeline's rule)

        reference = sample.reference[None, :, None].to(self.device, self.dtype) / 127.5 - 1.0  # (1, 3, 1, H, W)
        image_latent = self.vae_encode(reference, generator)
        image_latents = torch.cat([image_latent, image_latent.new_zeros(1, count - 1, *image_latent.shape[2:])], dim=1)
        control = self.vae_encode(self._pixels(sample.control.permute(0, 2, 3, 1)[None]), generator)
        if control.shape[1] != count:
            raise ValueError(f"the driving video of {sample.name} gives {control.shape[1]} latent frames, not {count}")
        if extra:
            image_latents = torch.cat([image_latents[:, :extra], image_latents], dim=1)
            control = torch.cat([control[:, :extra], control], dim=1)
        text = self.encode_text([self.options.negative_prompt, sample.prompt])
        guided = guidance_scale > 1.0

        scheduler = CogVideoXDPMScheduler.from_config(self.components.scheduler_config)
        shape = (1, count + extra, image_latents.shape[2], image_latents.shape[3], image_latents.shape[4])
        rotary = self.rotary(shape[1], shape[3], shape[4])

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            hidden = torch.cat([latents, image_latents], dim=2).to(self.dtype)
            batch = 2 if guided else 1
            return model(
                hidden_states=hidden.expand(batch, -1, -1, -1, -1),
                encoder_hidden_states=(text if guided else text[1:]).to(self.dtype),
                timestep=t.expand(batch),
                control_hidden_states=control.to(self.dtype).expand(batch, -1, -1, -1, -1),
                ofs=hidden.new_full((1,), OFS),
                image_rotary_emb=rotary,
                return_dict=False,
            )[0]

        latents = self.sample_guided(scheduler, shape, predict, guidance_scale=guidance_scale, steps=steps,
                                     generator=generator, dynamic_cfg=self.options.use_dynamic_cfg,
                                     noise_device=generator.device)
        return self.decode(latents[:, extra:])

"""What every CogVideoX-based family shares (CogVideoX-Fun, DynamiCtrl): loading the diffusers folder
with the family's transformer class, freezing the encoders, the T5 text encoder without an attention
mask, the VAE's ``scaling_factor`` and decoding. Each family says what differs: its transformer
class and the layers it adds (`transformer_class`, `initialize_missing`), how the loaded transformer
is prepared for its train mode (`prepare_transformer`), and the text length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vidctrl.families.base import ModelFamily
from vidctrl.models.loading import CheckpointReader


class CogVideoXFamily(ModelFamily):
    """A family on a CogVideoX transformer (hidden states ``(B, F, C, H, W)``), its 3D VAE and T5."""

    frame_multiple: ClassVar[int] = 4
    trainable_component: ClassVar[str] = "transformer"

    # --- components --------------------------------------------------------------------------
    def transformer_class(self) -> type[nn.Module]:
        """The class the transformer is built as (a subclass with the family's extra layers)."""
        from diffusers import CogVideoXTransformer3DModel

        return CogVideoXTransformer3DModel

    def initialize_missing(self) -> Any:
        """Supplies the tensors of layers the family's class adds to a base checkpoint, or None (every
        key must be in the file); called once per weights file loaded (base, then --transformer_path)."""
        return None

    def load(self, path: Path, *, dtype: torch.dtype, device: torch.device, encoders: bool = True) -> None:
        from vidctrl.models.cogvideox.components import ALL_PARTS, load_cogvideox_components

        components = load_cogvideox_components(
            path, parts=ALL_PARTS if encoders else ("transformer", "scheduler"), dtype=dtype, device=device,
            transformer_class=self.transformer_class(), initialize_missing=self.initialize_missing(),
        )
        self.use_components(components, dtype=dtype, device=device)
        self.prepare_transformer(Path(path))

    def prepare_transformer(self, path: Path) -> None:
        """Fit the loaded transformer to the train mode (widen its input, check its version) and apply
        the model flags (`apply_model_options`) where the family's rule puts them."""
        self.apply_model_options()

    def load_trainable_weights(self, reader: CheckpointReader, *, source: str) -> None:
        """``--transformer_path``: weights of the same transformer, strictly (layers the family adds come
        from `initialize_missing` when the file lacks them)."""
        from vidctrl.models.cogvideox.components import load_transformer_weights

        load_transformer_weights(self.denoiser, reader, dtype=self.dtype, device=self.device,
                                 initialize_missing=self.initialize_missing(),
                                 what=f"{source} -> {type(self.denoiser).__name__}")

    # --- encoding ----------------------------------------------------------------------------
    def text_length(self) -> int:
        """T5 tokens per prompt (226 in every CogVideoX pipeline)."""
        return int(self.components.transformer.config.max_text_seq_length)

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        """T5 embeddings (B, `text_length`, 4096) in the encoder's dtype: padded to the maximum length, no
        attention mask (as CogVideoX), so the padding positions carry values too."""
        c = self.components
        tokens = c.tokenizer(captions, padding="max_length", max_length=self.text_length(), truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        return c.text_encoder(tokens.input_ids.to(self.device))[0]

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """`text_embeddings` in float32."""
        return self.text_embeddings(captions).float()

    def token_count(self, batch_size: int, frames: int, height: int, width: int) -> int:
        """Transformer tokens of `batch_size` latent videos of (frames, height, width), for tokens/s."""
        config = self.components.transformer.config
        p, p_t = config.patch_size, config.patch_size_t or 1
        return batch_size * (frames // p_t) * (height // p) * (width // p)

    @property
    def scaling_factor(self) -> float:
        return float(self.constants["scaling_factor"])

    def encode_constants(self) -> dict[str, torch.Tensor]:
        return {"scaling_factor": torch.tensor(float(self.components.vae.config.scaling_factor), dtype=torch.float64)}

    # --- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def sample_guided(self, scheduler: Any, shape: tuple[int, ...],
                      predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, guidance_scale: float,
                      steps: int, generator: torch.Generator, dynamic_cfg: bool = False,
                      noise_device: torch.device | str | None = None) -> torch.Tensor:
        """Latents of `shape` denoised from noise (drawn from `generator` on `noise_device`, scaled by the
        scheduler's ``init_noise_sigma``) over `steps` of `scheduler` (CogVideoX DDIM, or DPM-Solver with
        its previous x0) with classifier-free guidance: `predict(latents, t)` returns the model's output
        for the rows [unconditional, conditional] when `guidance_scale` > 1, for the conditional row alone
        otherwise. `dynamic_cfg`: CogVideoX's cosine-scheduled guidance scale."""
        from diffusers import CogVideoXDPMScheduler

        scheduler.set_timesteps(steps, device=self.device)
        latents = torch.randn(shape, generator=generator, device=noise_device).to(self.device)
        latents = latents * scheduler.init_noise_sigma
        dpm = isinstance(scheduler, CogVideoXDPMScheduler)
        timesteps, previous_x0 = scheduler.timesteps, None
        for i, t in enumerate(timesteps):
            prediction = predict(latents, t).float()
            if guidance_scale > 1.0:
                scale = guidance_scale
                if dynamic_cfg:
                    scale = 1 + guidance_scale * (1 - math.cos(math.pi * ((steps - t.item()) / steps) ** 5.0)) / 2
                uncond, cond = prediction.chunk(2)
                prediction = uncond + scale * (cond - uncond)
            if dpm:
                latents, previous_x0 = scheduler.step(prediction, previous_x0, t, timesteps[i - 1] if i > 0 else None,
                                                      latents, generator=generator, return_dict=False)
            else:
                latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, T, 16, h, w) scaled latents -> (F, 3, H, W) uint8.

        The CogVideoX VAE decodes an even number of latent frames to ``4 T`` frames (its temporal
        upsampling doubles every frame of an even chunk), an odd number to ``4 T - 3``; callers cut
        to the frames they asked for.
        """
        vae = self.components.vae
        video = vae.decode((latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).to(vae.dtype)).sample.float()
        video = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 0, 2, 3).cpu()

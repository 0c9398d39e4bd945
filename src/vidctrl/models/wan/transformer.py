"""The Wan2.1-Fun Control transformer: diffusers' WanTransformer3DModel plus the two Fun modules.

diffusers has the Wan backbone but not the two modules Wan2.1-Fun adds; they keep their original
VideoX-Fun names so that released checkpoints map onto them by name:

- ``ref_conv`` (V1.1 Control): ``Conv2d(16, dim, kernel=patch, stride=patch)`` turns the latent of
  the full reference image into one frame of tokens that is *prepended* to the video tokens. The
  reference frame takes rotary frame position 0 and the video frames move to 1..F (VideoX-Fun
  grows its ``grid_sizes`` by one frame); its tokens are dropped again before unpatchify.
- ``control_adapter`` (Control-Camera): the Plücker camera embedding (6 channels, 4 frames packed
  per latent frame -> 24 channels at pixel resolution) goes through ``PixelUnshuffle(8)``, a
  patch-sized strided conv and one residual block, and is *added* to the patch embeddings.

Everything else (blocks, rotary tables, condition embedder, output head) is diffusers' own code,
so a V1.0 model saved by this class loads in plain diffusers. A V1.1 or Camera model loads there
too, but diffusers reports ``ref_conv.*`` / ``control_adapter.*`` as unused weights and drops
them: such a model runs in plain diffusers without its reference tokens or camera control.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.utils import apply_lora_scale
from torch import Tensor, nn

from vidctrl.models.init_args import base_init_kwargs


class CameraAdapterResidualBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))`` with 3x3 convolutions (VideoX-Fun ``ResidualBlock``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class WanCameraAdapter(nn.Module):
    """Camera embedding -> patch-embedding-shaped features (VideoX-Fun ``SimpleAdapter``).

    Input ``(B, C, F, H, W)`` at pixel resolution (C = 24: 6 Plücker channels x 4 packed frames,
    F latent frames); output ``(B, dim, F, H / (8 * p), W / (8 * p))``, the patch grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        downscale_factor: int = 8,
        num_residual_blocks: int = 1,
    ) -> None:
        super().__init__()
        self.pixel_unshuffle = nn.PixelUnshuffle(downscale_factor)
        self.conv = nn.Conv2d(in_channels * downscale_factor**2, out_channels, kernel_size, stride, padding=0)
        self.residual_blocks = nn.Sequential(
            *[CameraAdapterResidualBlock(out_channels) for _ in range(num_residual_blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, frames, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        x = self.residual_blocks(self.conv(self.pixel_unshuffle(x)))
        return x.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)


class WanFunControlTransformer3DModel(WanTransformer3DModel):
    """``WanTransformer3DModel`` with Wan2.1-Fun's ``ref_conv`` and ``control_adapter``.

    The extra config fields use VideoX-Fun's names (``add_ref_conv``, ``in_dim_ref_conv``,
    ``add_control_adapter``, ``in_dim_control_adapter``, ``downscale_factor_control_adapter``), so
    ``save_pretrained``/``from_pretrained`` round-trip and the flags read the same in both projects.
    ``in_channels`` is 48 for Control (noisy + control + reference latents) and 32 for Camera.
    """

    _skip_layerwise_casting_patterns: ClassVar[list[str]] = [
        *WanTransformer3DModel._skip_layerwise_casting_patterns,
        "ref_conv",
        "control_adapter",
    ]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        add_ref_conv: bool = False,
        in_dim_ref_conv: int = 16,
        add_control_adapter: bool = False,
        in_dim_control_adapter: int = 24,
        downscale_factor_control_adapter: int = 8,
    ) -> None:
        super().__init__(**base_init_kwargs(WanTransformer3DModel, locals()))
        inner_dim = num_attention_heads * attention_head_dim
        spatial_patch = tuple(patch_size[1:])
        self.ref_conv: nn.Conv2d | None = (
            nn.Conv2d(in_dim_ref_conv, inner_dim, kernel_size=spatial_patch, stride=spatial_patch)
            if add_ref_conv
            else None
        )
        self.control_adapter: WanCameraAdapter | None = (
            WanCameraAdapter(
                in_dim_control_adapter,
                inner_dim,
                kernel_size=spatial_patch,  # type: ignore[arg-type]
                stride=spatial_patch,  # type: ignore[arg-type]
                downscale_factor=downscale_factor_control_adapter,
            )
            if add_control_adapter
            else None
        )

    def _reference_tokens(self, full_ref_latents: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.ref_conv is None:
            raise ValueError(
                "full_ref_latents were given but this transformer has no ref_conv "
                "(only Wan2.1-Fun V1.1 Control has one; V1.0 and Control-Camera do not)"
            )
        if full_ref_latents.ndim == 5:
            if full_ref_latents.shape[2] != 1:
                raise ValueError(
                    f"full_ref_latents must hold one latent frame, got shape {list(full_ref_latents.shape)}"
                )
            full_ref_latents = full_ref_latents[:, :, 0]
        tokens = self.ref_conv(full_ref_latents)
        if tuple(tokens.shape[-2:]) != grid:
            raise ValueError(
                f"full_ref_latents {list(full_ref_latents.shape)} give a {list(tokens.shape[-2:])} token grid; the video "
                f"latents give {list(grid)}: the reference must be encoded at the video's resolution"
            )
        return tokens.flatten(2).transpose(1, 2)

    def _camera_features(self, camera_embedding: Tensor, grid: tuple[int, int, int]) -> Tensor:
        if self.control_adapter is None:
            raise ValueError(
                "camera_embedding was given but this transformer has no control_adapter "
                "(only Wan2.1-Fun Control-Camera has one)"
            )
        features = self.control_adapter(camera_embedding)
        if tuple(features.shape[2:]) != grid:
            raise ValueError(
                f"camera_embedding {list(camera_embedding.shape)} gives a {list(features.shape[2:])} (frames, h, w) grid; "
                f"the video latents give {list(grid)}: pack 4 frames per latent frame at pixel resolution"
            )
        return features

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None = None,
        full_ref_latents: Tensor | None = None,
        camera_embedding: Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor] | Transformer2DModelOutput:
        """Predict the flow for ``hidden_states`` ``(B, in_channels, F, H, W)`` (latents + conditions).

        Args beyond diffusers':
            full_ref_latents: ``(B, 16, H, W)`` or ``(B, 16, 1, H, W)``, the VAE latent of the full
                reference image (V1.1 ``--add_full_ref_image_in_self_attention``); needs ``ref_conv``.
            camera_embedding: ``(B, 24, F, 8H, 8W)``, the packed Plücker embedding (Control-Camera);
                needs ``control_adapter``.
        """
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_patch_num_frames = num_frames // p_t
        post_patch_height = height // p_h
        post_patch_width = width // p_w

        hidden_states = self.patch_embedding(hidden_states)
        if camera_embedding is not None:
            grid = (post_patch_num_frames, post_patch_height, post_patch_width)
            hidden_states = hidden_states + self._camera_features(camera_embedding, grid).to(
                hidden_states.dtype
            )
        hidden_states = hidden_states.flatten(2).transpose(1, 2)

        num_ref_tokens = 0
        rope_frames = post_patch_num_frames
        if full_ref_latents is not None:
            reference = self._reference_tokens(full_ref_latents, (post_patch_height, post_patch_width))
            num_ref_tokens = reference.shape[1]
            rope_frames += 1  # the reference is frame 0 for the rotary embedding
            hidden_states = torch.cat([reference.to(hidden_states.dtype), hidden_states], dim=1)
        hidden_states = hidden_states.contiguous()

        # WanRotaryPosEmbed only reads the shape of its input: a zero-stride view avoids allocating one.
        rope_shape = (batch_size, 1, rope_frames * p_t, height, width)
        rotary_emb = self.rope(hidden_states.new_empty(()).expand(rope_shape))

        if timestep.ndim == 2:
            # Per-token timesteps: the reference tokens take the last timestep, as in VideoX-Fun.
            if num_ref_tokens:
                timestep = torch.cat([timestep[:, -1:].expand(-1, num_ref_tokens), timestep], dim=1)
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        else:
            ts_seq_len = None

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len
        )
        if ts_seq_len is not None:
            timestep_proj = timestep_proj.unflatten(2, (6, -1))
        else:
            timestep_proj = timestep_proj.unflatten(1, (6, -1))

        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        if torch.is_grad_enabled() and self.gradient_checkpointing:
            for block in self.blocks:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb
                )
        else:
            for block in self.blocks:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        if temb.ndim == 3:
            shift, scale = (self.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(
                2, dim=2
            )
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift = shift.to(hidden_states.device)
        scale = scale.to(hidden_states.device)

        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states[:, num_ref_tokens:]

        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1
        )
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

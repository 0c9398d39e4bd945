"""DynamiCtrl's transformer: CogVideoX 1.5 with Pose-adaptive LayerNorm (PadaLN) in every block.

Facts (gulucaptain/DynamiCtrl, ``dynamictrl/models/model_dynamictrl.py``, ``PoseAdaptiveLN`` and
``DynamiCtrlBlock``; ``scripts/dynamictrl_sft_finetune.py``):

- The pose video goes through the same VAE as the target and then through the model's *shared*
  patch embedding. That embedding takes ``in_channels`` = 32 (noisy + reference latents), so the
  16-channel pose latents are concatenated with themselves on the channel axis first; the text
  tokens the patch embedding also returns are dropped.
- Every block has ``control_norm1`` = ``PoseAdaptiveLN(time_embed_dim, dim)``: ``SiLU`` then
  ``Linear(time_embed_dim, 3 * dim)`` chunked into ``shift, scale, gate`` (in that order), and a
  ``LayerNorm(dim, eps=norm_eps, elementwise_affine=True)``. In block k, with ``c`` the pose tokens::

      c      = LN(c) * (1 + scale) + shift
      h_norm = norm1(h) + c            # only the video tokens; the text half of norm1 is untouched
      ...    attention, as CogVideoX ...
      c      = c + gate * c            # the pose tokens block k + 1 receives

  The gate scales the pose stream itself, never the hidden state, and the pose tokens never pass
  through attention or the feed-forward: PadaLN is a per-block modulation chain on the patch-
  embedded pose, added to the normalised hidden state before self-attention.
- The original builds these layers with PyTorch's default initialisation (it never zero-inits
  them) and loads a CogVideoX1.5-I2V checkpoint non-strictly into the model, so the 168 PadaLN
  tensors start random. `padaln_initializer` supplies them the same way by default and offers
  ``zero_init`` (see its docstring for what that changes).
- ``ofs`` is the constant 2.0 in training and inference, and the rotary table is CogVideoX 1.5's
  "slice" grid (`vidctrl.models.cogvideox.components.rotary_embedding`).

Everything else (patch embedding, blocks, output head) is diffusers' ``CogVideoXTransformer3DModel``,
whose parameter names the released DynamiCtrl checkpoint already uses: the checkpoint is a
CogVideoX1.5-5B-I2V key set plus ``transformer_blocks.{i}.control_norm1.{linear,norm}.{weight,bias}``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock, CogVideoXTransformer3DModel
from diffusers.utils import apply_lora_scale
from torch import Tensor, nn

from vidctrl.models.init_args import base_init_kwargs

PADALN_MODULE = "control_norm1"
PADALN_KEY = re.compile(rf"transformer_blocks\.(\d+)\.{PADALN_MODULE}\.(.+)")


class PoseAdaptiveLayerNorm(nn.Module):
    """PadaLN: ``LN(c) * (1 + scale) + shift`` with ``shift, scale, gate = Linear(SiLU(temb))``.

    ``forward`` returns the modulated pose tokens ``(B, N, dim)`` and the gate ``(B, 1, dim)``.
    """

    def __init__(self, conditioning_dim: int, embedding_dim: int, elementwise_affine: bool = True,
                 eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 3 * embedding_dim, bias=bias)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, control: Tensor, temb: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale, gate = self.linear(self.silu(temb)).chunk(3, dim=1)
        modulated = self.norm(control) * (1 + scale)[:, None, :] + shift[:, None, :]
        return modulated, gate[:, None, :]

    @torch.no_grad()
    def zero_(self) -> PoseAdaptiveLayerNorm:
        """Zero every parameter: the layer then outputs exactly zero (see `add_pose_control`)."""
        for parameter in self.parameters():
            parameter.zero_()
        return self


def padaln_block_forward(
    block: CogVideoXBlock,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor,
    temb: Tensor,
    control: Tensor,
    image_rotary_emb: tuple[Tensor, Tensor] | None = None,
    attention_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One diffusers ``CogVideoXBlock`` with DynamiCtrl's PadaLN (the block's ``control_norm1``).

    Returns the new hidden states, text states and the pose tokens for the next block.
    """
    text_seq_length = encoder_hidden_states.size(1)
    attention_kwargs = attention_kwargs or {}

    norm_hidden_states, norm_encoder_hidden_states, gate_msa, enc_gate_msa = block.norm1(
        hidden_states, encoder_hidden_states, temb
    )
    control, control_gate = block.control_norm1(control, temb)
    norm_hidden_states = norm_hidden_states + control

    attn_hidden_states, attn_encoder_hidden_states = block.attn1(
        hidden_states=norm_hidden_states,
        encoder_hidden_states=norm_encoder_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **attention_kwargs,
    )
    hidden_states = hidden_states + gate_msa * attn_hidden_states
    encoder_hidden_states = encoder_hidden_states + enc_gate_msa * attn_encoder_hidden_states
    control = control + control_gate * control

    norm_hidden_states, norm_encoder_hidden_states, gate_ff, enc_gate_ff = block.norm2(
        hidden_states, encoder_hidden_states, temb
    )
    ff_output = block.ff(torch.cat([norm_encoder_hidden_states, norm_hidden_states], dim=1))
    hidden_states = hidden_states + gate_ff * ff_output[:, text_seq_length:]
    encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff_output[:, :text_seq_length]
    return hidden_states, encoder_hidden_states, control


class DynamiCtrlTransformer3DModel(CogVideoXTransformer3DModel):
    """``CogVideoXTransformer3DModel`` with DynamiCtrl's pose control: a PadaLN layer in every block.

    The config is CogVideoX's, unchanged (the original's config.json has no extra key either), so a
    CogVideoX1.5-I2V config builds the DynamiCtrl architecture; `padaln_initializer` fills the
    PadaLN tensors such a checkpoint lacks. Saved models reload with ``from_pretrained``; plain
    diffusers' ``CogVideoXTransformer3DModel`` loads them too but drops ``control_norm1`` (and with
    it the pose control).
    """

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
    ) -> None:
        super().__init__(**base_init_kwargs(CogVideoXTransformer3DModel, locals()))
        config = self.config
        dim = config.num_attention_heads * config.attention_head_dim
        for block in self.transformer_blocks:
            block.add_module(
                PADALN_MODULE,
                PoseAdaptiveLayerNorm(config.time_embed_dim, dim, config.norm_elementwise_affine, config.norm_eps),
            )

    def embed_pose(self, control: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """Pose latents ``(B, F, 16, H, W)`` -> pose tokens ``(B, N, dim)`` through the shared patch
        embedding: the latents fill its ``in_channels`` by repetition (DynamiCtrl concatenates the
        16 pose channels with themselves for the 32-channel CogVideoX1.5-I2V embedding)."""
        in_channels = self.config.in_channels
        channels = control.shape[2]
        if in_channels % channels:
            raise ValueError(
                f"pose latents have {channels} channels; the patch embedding takes {in_channels}, not a multiple"
            )
        control = torch.cat([control] * (in_channels // channels), dim=2)
        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, control))
        return tokens[:, encoder_hidden_states.shape[1] :]

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        timestep: int | float | Tensor,
        control_hidden_states: Tensor | None = None,
        timestep_cond: Tensor | None = None,
        ofs: int | float | Tensor | None = None,
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> tuple[Tensor] | Transformer2DModelOutput:
        """Predict for ``hidden_states`` ``(B, F, in_channels, H, W)`` (noisy + reference latents).

        Args beyond diffusers': ``control_hidden_states`` ``(B, F, 16, H, W)``, the VAE latents of
        the pose video (required). ``ofs`` is required when the config has ``ofs_embed_dim`` (2.0).
        """
        if control_hidden_states is None:
            raise ValueError("DynamiCtrl's PadaLN blocks need the pose latents (control_hidden_states)")
        batch_size, num_frames, _, height, width = hidden_states.shape

        t_emb = self.time_proj(timestep).to(dtype=hidden_states.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.ofs_embedding is not None:
            if ofs is None:
                raise ValueError("this transformer has an ofs embedding (CogVideoX1.5-I2V); pass ofs (2.0)")
            ofs_emb = self.ofs_proj(ofs).to(dtype=hidden_states.dtype)
            emb = emb + self.ofs_embedding(ofs_emb)

        control = self.embed_pose(control_hidden_states.to(hidden_states.dtype), encoder_hidden_states)
        text_seq_length = encoder_hidden_states.shape[1]
        hidden_states = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        encoder_hidden_states = hidden_states[:, :text_seq_length]
        hidden_states = hidden_states[:, text_seq_length:]

        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        for block in self.transformer_blocks:
            step = functools.partial(padaln_block_forward, block)
            args = (hidden_states, encoder_hidden_states, emb, control, image_rotary_emb, attention_kwargs)
            if checkpointing:
                hidden_states, encoder_hidden_states, control = self._gradient_checkpointing_func(step, *args)
            else:
                hidden_states, encoder_hidden_states, control = step(*args)

        hidden_states = self.norm_final(hidden_states)
        hidden_states = self.norm_out(hidden_states, temb=emb)
        hidden_states = self.proj_out(hidden_states)

        p, p_t = self.config.patch_size, self.config.patch_size_t
        if p_t is None:
            output = hidden_states.reshape(batch_size, num_frames, height // p, width // p, -1, p, p)
            output = output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        else:
            output = hidden_states.reshape(
                batch_size, (num_frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p
            )
            output = output.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)




# --------------------------------------------------------------------------------------------
# A CogVideoX1.5-I2V checkpoint gains PadaLN layers; a DynamiCtrl checkpoint restores them
# --------------------------------------------------------------------------------------------


def padaln_keys(keys: Iterable[str]) -> list[str]:
    """The PadaLN tensor names among ``keys``."""
    return [k for k in keys if PADALN_KEY.fullmatch(k)]


def padaln_initializer(
    *, zero_init: bool = False, on_added: Callable[[int], None] | None = None
) -> Callable[[nn.Module, Sequence[str]], dict[str, Tensor]]:
    """The ``initialize_missing`` callback of `load_cogvideox_components` for DynamiCtrl.

    When a checkpoint lacks *every* PadaLN tensor (a CogVideoX1.5-I2V base), it returns freshly
    initialised ones for every block and calls ``on_added(number of layers)``. When the checkpoint
    has some of them, or lacks anything else, it returns nothing, so the strict load names every
    missing key instead of papering over a damaged DynamiCtrl checkpoint.

    ``zero_init=False`` is DynamiCtrl's choice, PyTorch's defaults: Linear weights and biases
    uniform in +-1/sqrt(time_embed_dim), LayerNorm weight 1 and bias 0. From the first step every
    block then adds ``LN(c) * (1 + scale) + shift``, a unit-scale random function of the pose, to
    its normalised hidden state, so the base model's predictions change at once.

    ``zero_init=True`` zeroes the Linear and the LayerNorm weight and bias of every layer: each
    block adds exactly zero and the model predicts what the CogVideoX1.5-I2V base predicts until
    training moves them. Gradients still flow: block 0's pose tokens are the (non-zero) patch-
    embedded pose, so its LayerNorm weight, its shift and scale learn from step 1; deeper blocks
    receive ``c + gate * c = 0`` until the blocks before them move, so their shift learns first and
    their dependence on the pose grows block by block.
    """

    def initialize(model: nn.Module, missing: Sequence[str]) -> dict[str, Tensor]:
        expected = padaln_keys(model.state_dict(keep_vars=True))
        if not expected or sorted(missing) != sorted(expected):
            return {}
        fresh: dict[str, Tensor] = {}
        for index, block in enumerate(model.transformer_blocks):  # type: ignore[attr-defined]
            template = block.control_norm1
            layer = PoseAdaptiveLayerNorm(template.linear.in_features, template.norm.normalized_shape[0],
                                          template.norm.elementwise_affine, template.norm.eps,
                                          bias=template.linear.bias is not None)
            if zero_init:
                layer.zero_()
            for name, tensor in layer.state_dict().items():
                fresh[f"transformer_blocks.{index}.{PADALN_MODULE}.{name}"] = tensor
        if on_added is not None:
            on_added(len(model.transformer_blocks))  # type: ignore[attr-defined]
        return fresh

    return initialize


def check_padaln_source(source: object, *, added: bool, zero_init: bool, use_lora: bool) -> None:
    """Refuse what cannot train from the weights last loaded from `source`, whose PadaLN layers were
    `added` by `padaln_initializer` or already there: LoRA on newly added layers (they would stay at
    their initial values), and ``--padaln_zero_init`` on a checkpoint whose layers are trained."""
    from vidctrl.config.fields import ConfigError

    if added and use_lora:
        raise ConfigError(
            f"{source} has no PadaLN layers: LoRA would leave the newly added ones at their initial values. "
            "Train fully first, or start LoRA from a DynamiCtrl checkpoint"
        )
    if not added and zero_init:
        raise ConfigError(
            f"{source} already has trained PadaLN layers (a DynamiCtrl checkpoint); --padaln_zero_init applies "
            "only when they are added to a CogVideoX1.5-I2V base. Drop the flag."
        )

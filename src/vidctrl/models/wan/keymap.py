"""Original Wan / VideoX-Fun checkpoint layouts -> the diffusers / transformers classes vidctrl uses.

Each map is a short list of rules, not a table of keys, so one map serves 1.3B and 14B (and the
tiny test models) alike; tests run every map on every key of the released files' key lists.

The original files carry no config for the VAE, the UMT5 encoder and the CLIP image encoder (the
original code hard-codes it), so those configs are read off the checkpoint's shapes here; a wrong
inference cannot pass unnoticed because the strict load that follows compares every shape.

Components and their targets:

- transformer (VideoX-Fun ``WanTransformer3DModel`` file keys) -> ``WanFunControlTransformer3DModel``
  (diffusers ``WanTransformer3DModel`` names; ``ref_conv.*``/``control_adapter.*`` keep theirs).
- VAE (``Wan2.1_VAE.pth``) -> diffusers ``AutoencoderKLWan``.
- text encoder (``models_t5_umt5-xxl-enc-bf16.pth``) -> transformers ``UMT5EncoderModel``.
- image encoder (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``) -> transformers
  ``CLIPVisionModelWithProjection``. Wan uses only the vision tower (the output of its
  penultimate block); the XLM-RoBERTa text tower and ``log_scale`` are known keys that are not
  loaded. The transformers class is used rather than a copy of the original module because the
  diffusers layout of Wan I2V stores its image encoder as exactly this class, so both layouts
  load into one class, with the library's attention kernels; the price is splitting the fused
  ``to_qkv`` and reshaping three tensors, all expressed as rules below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from vidctrl.models.loading import KeyMap, Rule, Shape, SplitRule, TemplateRule, Transform, identity_key_map
from vidctrl.models.t5 import T5_ENCODER_SETTINGS

# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------

_QKV = "q|k|v"

TRANSFORMER_RULES: tuple[Rule, ...] = (
    TemplateRule("patch_embedding.{param}", "patch_embedding.{param}"),
    TemplateRule("text_embedding.0.{param}", "condition_embedder.text_embedder.linear_1.{param}"),
    TemplateRule("text_embedding.2.{param}", "condition_embedder.text_embedder.linear_2.{param}"),
    TemplateRule("time_embedding.0.{param}", "condition_embedder.time_embedder.linear_1.{param}"),
    TemplateRule("time_embedding.2.{param}", "condition_embedder.time_embedder.linear_2.{param}"),
    TemplateRule("time_projection.1.{param}", "condition_embedder.time_proj.{param}"),
    TemplateRule("img_emb.proj.0.{param}", "condition_embedder.image_embedder.norm1.{param}"),
    TemplateRule("img_emb.proj.1.{param}", "condition_embedder.image_embedder.ff.net.0.proj.{param}"),
    TemplateRule("img_emb.proj.3.{param}", "condition_embedder.image_embedder.ff.net.2.{param}"),
    TemplateRule("img_emb.proj.4.{param}", "condition_embedder.image_embedder.norm2.{param}"),
    TemplateRule("head.modulation", "scale_shift_table"),
    TemplateRule("head.head.{param}", "proj_out.{param}"),
    TemplateRule("blocks.{n}.modulation", "blocks.{n}.scale_shift_table"),
    TemplateRule("blocks.{n}.self_attn.{qkv}.{param}", "blocks.{n}.attn1.to_{qkv}.{param}", qkv=_QKV),
    TemplateRule("blocks.{n}.self_attn.o.{param}", "blocks.{n}.attn1.to_out.0.{param}"),
    TemplateRule("blocks.{n}.self_attn.norm_{qk}.weight", "blocks.{n}.attn1.norm_{qk}.weight", qk="q|k"),
    TemplateRule("blocks.{n}.cross_attn.{qkv}.{param}", "blocks.{n}.attn2.to_{qkv}.{param}", qkv=_QKV),
    TemplateRule("blocks.{n}.cross_attn.o.{param}", "blocks.{n}.attn2.to_out.0.{param}"),
    TemplateRule("blocks.{n}.cross_attn.norm_{qk}.weight", "blocks.{n}.attn2.norm_{qk}.weight", qk="q|k"),
    TemplateRule(
        "blocks.{n}.cross_attn.{kv}_img.{param}", "blocks.{n}.attn2.add_{kv}_proj.{param}", kv="k|v"
    ),
    TemplateRule("blocks.{n}.cross_attn.norm_k_img.weight", "blocks.{n}.attn2.norm_added_k.weight"),
    # The original orders its block norms norm1 (self-attn), norm3 (cross-attn, affine), norm2 (ffn);
    # diffusers names them norm1, norm2, norm3. Only the cross-attention norm has weights.
    TemplateRule("blocks.{n}.norm3.{param}", "blocks.{n}.norm2.{param}"),
    TemplateRule("blocks.{n}.ffn.0.{param}", "blocks.{n}.ffn.net.0.proj.{param}"),
    TemplateRule("blocks.{n}.ffn.2.{param}", "blocks.{n}.ffn.net.2.{param}"),
    # Not in diffusers: kept under their original names by WanFunControlTransformer3DModel.
    TemplateRule("ref_conv.{param}", "ref_conv.{param}"),
    TemplateRule("control_adapter.{any}", "control_adapter.{any}"),
)


def transformer_key_map() -> KeyMap:
    """VideoX-Fun / Wan transformer file keys -> ``WanFunControlTransformer3DModel`` keys."""
    return KeyMap(TRANSFORMER_RULES, name="Wan transformer (original -> diffusers)")


# VideoX-Fun WanTransformer3DModel defaults for config fields a config.json may leave out.
_VIDEOXFUN_DEFAULTS: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "in_dim_ref_conv": 16,
    "in_dim_control_adapter": 24,
    "downscale_factor_control_adapter": 8,
}
_WAN_CLIP_DIM = 1280  # VideoX-Fun hard-codes MLPProj(1280, dim) for the CLIP features
_DIFFUSERS_TEXT_LEN = 512  # diffusers' WanAttnProcessor assumes 512 text tokens


def transformer_config_from_original(
    config: Mapping[str, Any], shapes: Mapping[str, Shape] | None = None, *, source: str = "config.json"
) -> dict[str, Any]:
    """A VideoX-Fun transformer ``config.json`` -> ``WanFunControlTransformer3DModel`` config.

    ``in_dim`` wins over ``in_channels`` (VideoX-Fun's ``dict_mapping: {in_dim: in_channels}``).
    What VideoX-Fun hard-codes or leaves optional is read from the checkpoint ``shapes``: the CLIP
    feature width, and ``model_type`` and the ``ref_conv``/``control_adapter`` flags when config.json
    omits them.
    """
    shapes = shapes or {}

    def get(key: str) -> Any:
        if key in config:
            return config[key]
        if key in _VIDEOXFUN_DEFAULTS:
            return _VIDEOXFUN_DEFAULTS[key]
        raise ValueError(f"{source}: the Wan transformer config has no {key!r}")

    dim, num_heads = int(get("dim")), int(get("num_heads"))
    if dim % num_heads:
        raise ValueError(f"{source}: dim {dim} is not divisible by num_heads {num_heads}")
    if "in_dim" not in config and "in_channels" not in config:
        raise ValueError(f"{source}: the Wan transformer config has no 'in_dim'")
    in_dim = int(config.get("in_dim", config.get("in_channels")))
    if not get("qk_norm"):
        raise ValueError(
            f"{source}: qk_norm=false is not supported (diffusers' Wan attention always normalises q/k)"
        )
    if tuple(get("window_size")) != (-1, -1):
        raise ValueError(f"{source}: window_size {get('window_size')} (local attention) is not supported")
    if int(get("text_len")) != _DIFFUSERS_TEXT_LEN:
        raise ValueError(
            f"{source}: text_len {get('text_len')} is not supported (diffusers' Wan assumes 512)"
        )
    # Absent model_type: an image-conditioned checkpoint (img_emb.*) is i2v, as every Fun Control one is.
    model_type = config.get("model_type", "i2v" if "img_emb.proj.0.weight" in shapes else "t2v")
    if model_type not in ("t2v", "i2v"):
        raise ValueError(f"{source}: model_type {model_type!r} is not a Wan2.1 model type (t2v, i2v)")
    image_dim = None
    if model_type == "i2v":
        image_dim = (
            int(shapes["img_emb.proj.0.weight"][0]) if "img_emb.proj.0.weight" in shapes else _WAN_CLIP_DIM
        )

    return {
        "patch_size": list(get("patch_size")),
        "num_attention_heads": num_heads,
        "attention_head_dim": dim // num_heads,
        "in_channels": in_dim,
        "out_channels": int(get("out_dim")),
        "text_dim": int(get("text_dim")),
        "freq_dim": int(get("freq_dim")),
        "ffn_dim": int(get("ffn_dim")),
        "num_layers": int(get("num_layers")),
        "cross_attn_norm": bool(get("cross_attn_norm")),
        "qk_norm": "rms_norm_across_heads",
        "eps": float(get("eps")),
        "image_dim": image_dim,
        "added_kv_proj_dim": dim if model_type == "i2v" else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
        **fun_module_config(config, shapes),
    }


def fun_module_config(config: Mapping[str, Any], shapes: Mapping[str, Shape]) -> dict[str, Any]:
    """The ``ref_conv``/``control_adapter`` config fields; what ``config`` omits is read off ``shapes``.

    Plain diffusers configs and older VideoX-Fun configs do not carry these fields at all.
    """
    ref = shapes.get("ref_conv.weight")
    adapter = shapes.get("control_adapter.conv.weight")
    factor = int(
        config.get(
            "downscale_factor_control_adapter", _VIDEOXFUN_DEFAULTS["downscale_factor_control_adapter"]
        )
    )
    return {
        "add_ref_conv": bool(config.get("add_ref_conv", ref is not None)),
        "in_dim_ref_conv": int(
            config.get("in_dim_ref_conv", ref[1] if ref else _VIDEOXFUN_DEFAULTS["in_dim_ref_conv"])
        ),
        "add_control_adapter": bool(config.get("add_control_adapter", adapter is not None)),
        "in_dim_control_adapter": int(
            config.get(
                "in_dim_control_adapter",
                adapter[1] // factor**2 if adapter else _VIDEOXFUN_DEFAULTS["in_dim_control_adapter"],
            )
        ),
        "downscale_factor_control_adapter": factor,
    }


def transformer_config_to_original(config: Mapping[str, Any]) -> dict[str, Any]:
    """The VideoX-Fun ``config.json`` of a ``WanFunControlTransformer3DModel`` config (for writing)."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    out: dict[str, Any] = {
        "_class_name": "WanTransformer3DModel",
        "model_type": "i2v" if config.get("image_dim") else "t2v",
        "patch_size": list(config["patch_size"]),
        "text_len": _DIFFUSERS_TEXT_LEN,
        "in_dim": int(config["in_channels"]),
        "dim": dim,
        "ffn_dim": int(config["ffn_dim"]),
        "freq_dim": int(config["freq_dim"]),
        "text_dim": int(config["text_dim"]),
        "out_dim": int(config["out_channels"]),
        "num_heads": int(config["num_attention_heads"]),
        "num_layers": int(config["num_layers"]),
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": bool(config["cross_attn_norm"]),
        "eps": float(config["eps"]),
        "in_channels": int(config["in_channels"]),
        "hidden_size": dim,
    }
    if config.get("add_ref_conv"):
        out.update(add_ref_conv=True, in_dim_ref_conv=int(config["in_dim_ref_conv"]))
    if config.get("add_control_adapter"):
        out.update(
            add_control_adapter=True,
            in_dim_control_adapter=int(config["in_dim_control_adapter"]),
            downscale_factor_control_adapter=int(config["downscale_factor_control_adapter"]),
        )
    return out


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

# Wan2.1 VAE latent statistics (fixed by the released Wan2.1_VAE.pth; not stored in the file).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# Inside one residual block: original Sequential indices -> diffusers names.
_RESNET_INNER = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.{param}", "conv1.{param}"),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.{param}", "conv2.{param}"),
    ("shortcut.{param}", "conv_shortcut.{param}"),
)


def _resnet_rules(source_prefix: str, target_prefix: str) -> list[Rule]:
    return [TemplateRule(f"{source_prefix}.{s}", f"{target_prefix}.{t}") for s, t in _RESNET_INNER]


class DecoderUpsampleRule(Rule):
    """``decoder.upsamples.{i}`` (one flat list) <-> ``decoder.up_blocks.{b}.resnets.{r}`` / ``.upsamplers.0``.

    Each up stage holds ``num_res_blocks + 1`` residual blocks followed by one upsampler (none
    after the last stage), so the flat index is ``b * (num_res_blocks + 2) + r``.
    """

    def __init__(self, num_res_blocks: int) -> None:
        self.stride = num_res_blocks + 2
        self.num_res_blocks = num_res_blocks
        self._flat = re.compile(r"decoder\.upsamples\.(\d+)\.(.+)")
        self._resnet = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
        self._upsampler = re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)")
        self._inner = [TemplateRule(s, t) for s, t in _RESNET_INNER]
        self._resample = TemplateRule("{kind}.{any}", "{kind}.{any}", kind=r"resample|time_conv")

    @staticmethod
    def _first(rules: Sequence[TemplateRule], key: str, inverse: bool) -> str | None:
        for rule in rules:
            if inverse:
                found = rule.inverse(key)
                if found is not None:
                    return found[0]
            else:
                out = rule.forward(key)
                if out is not None:
                    return out[0][0]
        return None

    def forward(self, key: str) -> list[tuple[str, Transform | None]] | None:
        m = self._flat.fullmatch(key)
        if m is None:
            return None
        stage, offset = divmod(int(m.group(1)), self.stride)
        rest = m.group(2)
        if offset <= self.num_res_blocks:
            inner = self._first(self._inner, rest, inverse=False)
            return None if inner is None else [(f"decoder.up_blocks.{stage}.resnets.{offset}.{inner}", None)]
        inner = self._first([self._resample], rest, inverse=False)
        return None if inner is None else [(f"decoder.up_blocks.{stage}.upsamplers.0.{inner}", None)]

    def inverse(self, target: str) -> tuple[str, int] | None:
        m = self._resnet.fullmatch(target)
        if m is not None:
            inner = self._first(self._inner, m.group(3), inverse=True)
            if inner is None:
                return None
            return f"decoder.upsamples.{int(m.group(1)) * self.stride + int(m.group(2))}.{inner}", 0
        m = self._upsampler.fullmatch(target)
        if m is not None:
            inner = self._first([self._resample], m.group(2), inverse=True)
            if inner is None:
                return None
            return f"decoder.upsamples.{int(m.group(1)) * self.stride + self.num_res_blocks + 1}.{inner}", 0
        return None


def vae_key_map(num_res_blocks: int = 2) -> KeyMap:
    """``Wan2.1_VAE.pth`` keys -> diffusers ``AutoencoderKLWan`` keys (the decoder depends on ``num_res_blocks``)."""
    rules: list[Rule] = [
        TemplateRule("conv1.{param}", "quant_conv.{param}"),
        TemplateRule("conv2.{param}", "post_quant_conv.{param}"),
        TemplateRule("{side}.conv1.{param}", "{side}.conv_in.{param}", side="encoder|decoder"),
        TemplateRule("{side}.head.0.gamma", "{side}.norm_out.gamma", side="encoder|decoder"),
        TemplateRule("{side}.head.2.{param}", "{side}.conv_out.{param}", side="encoder|decoder"),
        TemplateRule("{side}.middle.1.{any}", "{side}.mid_block.attentions.0.{any}", side="encoder|decoder"),
    ]
    for side in ("encoder", "decoder"):
        rules += _resnet_rules(f"{side}.middle.0", f"{side}.mid_block.resnets.0")
        rules += _resnet_rules(f"{side}.middle.2", f"{side}.mid_block.resnets.1")
    rules += _resnet_rules("encoder.downsamples.{n}", "encoder.down_blocks.{n}")
    rules.append(
        TemplateRule(
            "encoder.downsamples.{n}.{kind}.{any}",
            "encoder.down_blocks.{n}.{kind}.{any}",
            kind="resample|time_conv",
        )
    )
    rules.append(DecoderUpsampleRule(num_res_blocks))
    return KeyMap(rules, name="Wan VAE (original -> diffusers)")


def vae_config_from_original(
    shapes: Mapping[str, Shape], *, source: str = "Wan2.1_VAE.pth"
) -> dict[str, Any]:
    """The ``AutoencoderKLWan`` config of an original Wan VAE file, read off its tensor shapes."""
    try:
        base_dim = int(shapes["encoder.conv1.weight"][0])
        z_dim = int(shapes["conv2.weight"][0])
    except KeyError as e:
        raise ValueError(f"{source}: not a Wan VAE state dict (no {e.args[0]!r})") from None
    blocks: dict[int, set[str]] = {}
    for key in shapes:
        m = re.fullmatch(r"encoder\.downsamples\.(\d+)\.(\w+)\..+", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for index in sorted(blocks):
        kinds = blocks[index]
        if "resample" in kinds:
            temporal.append("time_conv" in kinds)
            stages.append([])
        elif kinds <= {"residual", "shortcut"}:
            stages[-1].append(index)
        else:
            raise ValueError(
                f"{source}: encoder.downsamples.{index} holds {sorted(kinds)}; only residual and "
                "resample blocks are supported (attn_scales must be empty)"
            )
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"{source}: encoder stages hold unequal residual block counts {[len(s) for s in stages]}"
        )
    dim_mult = []
    for stage in stages:
        out_channels = int(shapes[f"encoder.downsamples.{stage[0]}.residual.2.weight"][0])
        if out_channels % base_dim:
            raise ValueError(
                f"{source}: stage width {out_channels} is not a multiple of base width {base_dim}"
            )
        dim_mult.append(out_channels // base_dim)
    if z_dim != len(WAN21_LATENTS_MEAN):
        raise ValueError(
            f"{source}: z_dim {z_dim}; the Wan2.1 VAE latent statistics are defined for 16 channels"
        )
    return {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": counts.pop(),
        "attn_scales": [],
        "temperal_downsample": temporal,
        "dropout": 0.0,
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
    }


# --------------------------------------------------------------------------------------------
# UMT5 text encoder
# --------------------------------------------------------------------------------------------

UMT5_RULES: tuple[Rule, ...] = (
    TemplateRule("token_embedding.weight", "shared.weight"),
    TemplateRule("blocks.{n}.norm1.weight", "encoder.block.{n}.layer.0.layer_norm.weight"),
    TemplateRule(
        "blocks.{n}.attn.{x}.weight", "encoder.block.{n}.layer.0.SelfAttention.{x}.weight", x="q|k|v|o"
    ),
    TemplateRule(
        "blocks.{n}.pos_embedding.embedding.weight",
        "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    TemplateRule("blocks.{n}.norm2.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    # Wan's gated FFN is fc2(fc1(x) * gelu_tanh(gate(x))); UMT5's is wo(gelu_new(wi_0(x)) * wi_1(x)).
    TemplateRule("blocks.{n}.ffn.gate.0.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_0.weight"),
    TemplateRule("blocks.{n}.ffn.fc1.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_1.weight"),
    TemplateRule("blocks.{n}.ffn.fc2.weight", "encoder.block.{n}.layer.1.DenseReluDense.wo.weight"),
    TemplateRule("norm.weight", "encoder.final_layer_norm.weight"),
)


def umt5_key_map() -> KeyMap:
    """``models_t5_umt5-xxl-enc-bf16.pth`` keys -> transformers ``UMT5EncoderModel`` keys."""
    return KeyMap(UMT5_RULES, name="Wan UMT5 encoder (original -> transformers)")


def umt5_config_from_original(shapes: Mapping[str, Shape], *, source: str = "umt5 .pth") -> dict[str, Any]:
    """``UMT5Config`` fields of an original Wan T5 encoder file, read off its tensor shapes.

    Wan's T5 has one relative position table per block (``shared_pos=False``), bidirectional
    buckets with max distance 128, RMS norms with eps 1e-6 and a tanh-GELU gated FFN: UMT5.
    """
    if "blocks.0.pos_embedding.embedding.weight" not in shapes:
        raise ValueError(f"{source}: not a Wan UMT5 encoder with per-block position tables")
    vocab, d_model = shapes["token_embedding.weight"]
    buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "d_kv": int(shapes["blocks.0.attn.q.weight"][0]) // int(heads),
        "d_ff": int(shapes["blocks.0.ffn.fc1.weight"][0]),
        "num_layers": layers,
        "num_heads": int(heads),
        "relative_attention_num_buckets": int(buckets),
        **T5_ENCODER_SETTINGS,
    }


# --------------------------------------------------------------------------------------------
# CLIP image encoder
# --------------------------------------------------------------------------------------------


def _flatten(t: Tensor) -> Tensor:
    return t.reshape(-1)


def _as_cls(t: Tensor) -> Tensor:
    return t.reshape(1, 1, -1)


def _drop_batch(t: Tensor) -> Tensor:
    return t.squeeze(0)


def _add_batch(t: Tensor) -> Tensor:
    return t.unsqueeze(0)


def _transpose(t: Tensor) -> Tensor:
    return t.t()


_V = "vision_model"  # prefix of every CLIPVision* tensor
CLIP_RULES: tuple[Rule, ...] = (
    TemplateRule("visual.patch_embedding.weight", _V + ".embeddings.patch_embedding.weight"),
    TemplateRule(
        "visual.cls_embedding",
        _V + ".embeddings.class_embedding",
        transform=_flatten,
        inverse_transform=_as_cls,
    ),
    TemplateRule(
        "visual.pos_embedding",
        _V + ".embeddings.position_embedding.weight",
        transform=_drop_batch,
        inverse_transform=_add_batch,
    ),
    TemplateRule("visual.pre_norm.{param}", _V + ".pre_layrnorm.{param}"),
    TemplateRule("visual.transformer.{n}.norm1.{param}", _V + ".encoder.layers.{n}.layer_norm1.{param}"),
    SplitRule(
        "visual.transformer.{n}.attn.to_qkv.{param}",
        [_V + ".encoder.layers.{n}.self_attn." + p + "_proj.{param}" for p in ("q", "k", "v")],
    ),
    TemplateRule(
        "visual.transformer.{n}.attn.proj.{param}", _V + ".encoder.layers.{n}.self_attn.out_proj.{param}"
    ),
    TemplateRule("visual.transformer.{n}.norm2.{param}", _V + ".encoder.layers.{n}.layer_norm2.{param}"),
    TemplateRule("visual.transformer.{n}.mlp.0.{param}", _V + ".encoder.layers.{n}.mlp.fc1.{param}"),
    TemplateRule("visual.transformer.{n}.mlp.2.{param}", _V + ".encoder.layers.{n}.mlp.fc2.{param}"),
    TemplateRule("visual.post_norm.{param}", _V + ".post_layernorm.{param}"),
    TemplateRule(
        "visual.head", "visual_projection.weight", transform=_transpose, inverse_transform=_transpose
    ),
)

CLIP_IGNORED: tuple[tuple[str, str], ...] = (
    (r"textual\..+", "XLM-RoBERTa text tower of the CLIP file; Wan encodes text with UMT5"),
    (r"log_scale", "CLIP contrastive temperature; unused by Wan"),
)

# The original builder (clip_xlm_roberta_vit_h_14) hard-codes these; the file cannot tell them.
CLIP_VISION_HEADS = 16
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_key_map() -> KeyMap:
    """Open-CLIP XLM-RoBERTa ViT-H/14 ``.pth`` keys -> ``CLIPVisionModelWithProjection`` keys."""
    return KeyMap(CLIP_RULES, ignore=CLIP_IGNORED, name="Wan CLIP image encoder (original -> transformers)")


def clip_config_from_original(shapes: Mapping[str, Shape], *, source: str = "CLIP .pth") -> dict[str, Any]:
    """``CLIPVisionConfig`` fields of the open-clip ViT file, read off its shapes (heads: fixed 16)."""
    try:
        hidden, _, patch, _ = shapes["visual.patch_embedding.weight"]
        positions = int(shapes["visual.pos_embedding"][1])
    except KeyError as e:
        raise ValueError(f"{source}: not an open-clip ViT state dict (no {e.args[0]!r})") from None
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"{source}: {positions} positions is not a square grid plus a class token")
    if hidden % CLIP_VISION_HEADS:
        raise ValueError(f"{source}: width {hidden} does not split into {CLIP_VISION_HEADS} heads")
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"visual\.transformer\.(\d+)\.", k)))
    return {
        "hidden_size": int(hidden),
        "intermediate_size": int(shapes["visual.transformer.0.mlp.0.weight"][0]),
        "projection_dim": int(shapes["visual.head"][1]),
        "num_hidden_layers": layers,
        "num_attention_heads": CLIP_VISION_HEADS,
        "num_channels": 3,
        "image_size": grid * int(patch),
        "patch_size": int(patch),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


def diffusers_key_map(component: str) -> KeyMap:
    """Folders written by ``save_pretrained`` use the model's own key names."""
    return identity_key_map(name=f"Wan {component} (diffusers layout)")

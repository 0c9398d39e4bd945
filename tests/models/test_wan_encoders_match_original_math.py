"""The UMT5 and CLIP key maps are right in meaning, not only in shape.

Shapes cannot tell Wan's T5 ``gate``/``fc1`` apart (both dim -> dim_ffn), nor the q/k/v order of
the CLIP's fused projection. Here the original-layout tensors of a tiny model are run through a
small re-statement of the original computations (from Wan's T5 and open-clip ViT as used by
VideoX-Fun: ``fc2(fc1(x) * gelu_tanh(gate(x)))``, per-block bidirectional relative position
buckets with max distance 128, unscaled T5 attention; the ViT's output after its penultimate
block) and compared with the transformers models vidctrl loads them into.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from vidctrl.models.wan import ORIGINAL_FILES, load_wan_components


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))  # at most 2, and no more than an xdist worker's share
    yield
    torch.set_num_threads(previous)


def relative_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int = 128) -> torch.Tensor:
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    distance = rel.abs()
    exact = half // 2
    far = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    )
    far = far.long().clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def wan_t5_encoder(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    batch, length = ids.shape
    x = sd["token_embedding.weight"][ids]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    key_bias = torch.where(mask[:, None, None, :] > 0, 0.0, torch.finfo(x.dtype).min)
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms_norm(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(batch, length, heads, -1) for n in "qkv")
        position = sd[p + "pos_embedding.embedding.weight"][relative_bucket(rel, buckets)].permute(2, 0, 1)
        scores = torch.einsum("binc,bjnc->bnij", q, k) + position[None] + key_bias
        attended = torch.einsum("bnij,bjnc->binc", scores.softmax(-1), v).reshape(batch, length, -1)
        x = x + F.linear(attended, sd[p + "attn.o.weight"])
        h = rms_norm(x, sd[p + "norm2.weight"])
        gated = F.linear(h, sd[p + "ffn.fc1.weight"]) * F.gelu(
            F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh"
        )
        x = x + F.linear(gated, sd[p + "ffn.fc2.weight"])
    return rms_norm(x, sd["norm.weight"])


def wan_clip_penultimate(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int = 16) -> torch.Tensor:
    weight = sd["visual.patch_embedding.weight"]
    width, patch = weight.shape[0], weight.shape[-1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("visual.transformer.")})
    x = F.conv2d(pixels, weight, stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(len(x), -1, -1), x], dim=1) + sd["visual.pos_embedding"]
    x = F.layer_norm(x, (width,), sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"], eps=1e-5)
    for i in range(layers - 1):  # Wan: use_31_block, i.e. all but the last block, no post norm
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"])
        q, k, v = qkv.view(*x.shape[:2], 3, heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(
            attended.transpose(1, 2).reshape(x.shape), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]
        )
        h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        x = x + F.linear(
            F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
            sd[p + "mlp.2.weight"],
            sd[p + "mlp.2.bias"],
        )
    return x


def test_umt5_encoder_computes_what_wans_t5_computes_from_the_same_file(tiny_wan_dirs):
    folder = tiny_wan_dirs[("wan2.1-fun-control-v1.0", "original")]
    wan = load_wan_components(folder, parts=("text_encoder", "tokenizer"))
    sd = torch.load(folder / ORIGINAL_FILES["text_encoder"], weights_only=True)
    tokens = wan.tokenizer(
        ["a dancer spins on one foot", "jump"], padding="max_length", max_length=24, return_tensors="pt"
    )
    with torch.no_grad():
        ours = wan.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        reference = wan_t5_encoder(sd, tokens.input_ids, tokens.attention_mask)
    valid = tokens.attention_mask.bool()
    torch.testing.assert_close(ours[valid], reference[valid], rtol=1e-4, atol=1e-5)


def test_clip_image_encoder_penultimate_block_matches_the_original_vit(tiny_wan_dirs):
    folder = tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")]
    encoder = load_wan_components(folder, parts=("image_encoder",)).image_encoder
    sd = torch.load(folder / ORIGINAL_FILES["image_encoder"], weights_only=True)
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        reference = wan_clip_penultimate(sd, pixels)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)

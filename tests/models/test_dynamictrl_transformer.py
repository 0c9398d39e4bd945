"""DynamiCtrl's PadaLN transformer: the block math of the original, the pose through the shared patch
embedding, zero-initialised PadaLN starting from the exact base model, and strict loading of the
released CogVideoX1.5-5B-I2V and DynamiCtrl key lists at full size on the meta device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from reference_checkpoints import reference_json
from vidctrl.families.dynamictrl import write_tiny_dynamictrl
from vidctrl.models.cogvideox.components import (
    build_transformer,
    load_cogvideox_transformer,
    rotary_embedding,
)
from vidctrl.models.cogvideox.padaln import (
    DynamiCtrlTransformer3DModel,
    padaln_initializer,
    padaln_keys,
)
from vidctrl.models.loading import ShapeReader, StrictLoadError, identity_key_map, plan_and_check

BLOCKS, DIM, TEMB = 42, 3072, 512


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_dynamictrl")
    return {
        "dynamictrl": write_tiny_dynamictrl(root / "dynamictrl", seed=0),
        "original": write_tiny_dynamictrl(root / "original", layout="original", seed=0),
        "base": write_tiny_dynamictrl(root / "base", seed=0, with_padaln=False),
    }


def inputs(model: Any, seed: int = 0, frames: int = 2) -> dict[str, Any]:
    """Model inputs for a (1, frames, 32, 8, 8) latent video with 226 text tokens."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    return {
        "hidden_states": torch.randn(1, frames, config.in_channels, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=g),
        "timestep": torch.tensor([417]),
        "ofs": torch.full((1,), 2.0),
        "image_rotary_emb": rotary_embedding(config, latent_frames=frames, latent_height=8, latent_width=8),
        "control_hidden_states": torch.randn(1, frames, 16, 8, 8, generator=g),
    }


def reference_forward(model: DynamiCtrlTransformer3DModel, x: dict[str, Any]) -> torch.Tensor:
    """The original's forward written out step by step (DynamiCtrlTransformerModel.forward,
    DynamiCtrlBlock.forward, PoseAdaptiveLN.forward), on the model's own sub-modules."""
    emb = model.time_embedding(model.time_proj(x["timestep"]))
    emb = emb + model.ofs_embedding(model.ofs_proj(x["ofs"]))
    text = x["encoder_hidden_states"]
    n_text = text.shape[1]
    tokens = model.patch_embed(text, x["hidden_states"])
    enc, h = tokens[:, :n_text], tokens[:, n_text:]
    pose = x["control_hidden_states"]
    c = model.patch_embed(text, torch.cat([pose, pose], dim=2))[:, n_text:]
    for block in model.transformer_blocks:
        norm_h, norm_enc, gate_msa, enc_gate_msa = block.norm1(h, enc, emb)
        shift, scale, gate = block.control_norm1.linear(torch.nn.functional.silu(emb)).chunk(3, dim=1)
        c = block.control_norm1.norm(c) * (1 + scale[:, None]) + shift[:, None]
        norm_h = norm_h + c
        attn_h, attn_enc = block.attn1(hidden_states=norm_h, encoder_hidden_states=norm_enc,
                                       image_rotary_emb=x["image_rotary_emb"])
        h = h + gate_msa * attn_h
        enc = enc + enc_gate_msa * attn_enc
        c = c + gate[:, None] * c
        norm_h, norm_enc, gate_ff, enc_gate_ff = block.norm2(h, enc, emb)
        ff = block.ff(torch.cat([norm_enc, norm_h], dim=1))
        h = h + gate_ff * ff[:, n_text:]
        enc = enc + enc_gate_ff * ff[:, :n_text]
    h = model.proj_out(model.norm_out(model.norm_final(h), temb=emb))
    b, f, _, height, width = x["hidden_states"].shape
    p, p_t = model.config.patch_size, model.config.patch_size_t
    out = h.reshape(b, f // p_t, height // p, width // p, -1, p_t, p, p)
    return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


def test_padaln_forward_is_the_originals_block_math(tiny_dirs: dict[str, Path]) -> None:
    model = DynamiCtrlTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer").eval()
    x = inputs(model)
    with torch.no_grad():
        out = model(**x, return_dict=False)[0]
        expected = reference_forward(model, x)
    assert out.shape == (1, 2, 16, 8, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # the pose changes the prediction
        other = model(**{**x, "control_hidden_states": -x["control_hidden_states"]}, return_dict=False)[0]
    assert not torch.allclose(out, other)


def test_pose_latents_fill_the_shared_patch_embedding_by_repetition(tiny_dirs: dict[str, Path]) -> None:
    model = DynamiCtrlTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer").eval()
    x = inputs(model)
    pose, text = x["control_hidden_states"], x["encoder_hidden_states"]
    with torch.no_grad():
        tokens = model.embed_pose(pose, text)
        expected = model.patch_embed(text, torch.cat([pose, pose], dim=2))[:, text.shape[1]:]
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    assert tokens.shape == (1, 1 * 4 * 4, 32)  # 2 latent frames / p_t 2, 8x8 / p 2


def test_forward_refuses_a_missing_pose(tiny_dirs: dict[str, Path]) -> None:
    model = DynamiCtrlTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer")
    x = inputs(model)
    x["control_hidden_states"] = None
    with pytest.raises(ValueError, match="need the pose latents"):
        model(**x)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(tiny_dirs: dict[str, Path]) -> None:
    def run(checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model = DynamiCtrlTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer").train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(**inputs(model), return_dict=False)[0]
        out.square().mean().backward()
        return out.detach(), model.transformer_blocks[1].control_norm1.linear.weight.grad

    (a, grad_a), (b, grad_b) = run(False), run(True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_a, grad_b)


def load_base_as_dynamictrl(base: Path, zero_init: bool) -> tuple[DynamiCtrlTransformer3DModel, list[int]]:
    added: list[int] = []
    model, report, _ = load_cogvideox_transformer(
        base, transformer_class=DynamiCtrlTransformer3DModel,
        initialize_missing=padaln_initializer(zero_init=zero_init, on_added=added.append),
    )
    assert report.ok
    return model, added  # type: ignore[return-value]


def test_zero_init_padaln_starts_from_the_exact_base_model_and_still_learns(tiny_dirs: dict[str, Path]) -> None:
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_dirs["base"] / "transformer").eval()
    model, added = load_base_as_dynamictrl(tiny_dirs["base"], zero_init=True)
    assert added == [2]
    x = inputs(model)
    with torch.no_grad():
        expected = base(**{k: v for k, v in x.items() if k != "control_hidden_states"}, return_dict=False)[0]
        out = model(**x, return_dict=False)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    model.train()
    model(**x, return_dict=False)[0].square().mean().backward()
    first, second = (b.control_norm1 for b in model.transformer_blocks)
    assert first.norm.weight.grad.abs().sum() > 0  # block 0 sees the patch-embedded pose
    assert first.linear.bias.grad.abs().sum() > 0
    assert second.linear.bias.grad.abs().sum() > 0  # deeper blocks: the shift learns first
    assert second.norm.weight.grad.abs().sum() == 0  # their pose tokens are still zero


def test_default_padaln_init_is_pytorchs_and_changes_the_base_prediction(tiny_dirs: dict[str, Path]) -> None:
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_dirs["base"] / "transformer").eval()
    model, added = load_base_as_dynamictrl(tiny_dirs["base"], zero_init=False)
    assert added == [2]
    layer = model.transformer_blocks[0].control_norm1
    bound = 1 / layer.linear.in_features**0.5
    assert layer.linear.weight.abs().max() <= bound and layer.linear.weight.abs().max() > bound / 2
    assert torch.equal(layer.norm.weight, torch.ones_like(layer.norm.weight))
    x = inputs(model)
    with torch.no_grad():
        expected = base(**{k: v for k, v in x.items() if k != "control_hidden_states"}, return_dict=False)[0]
        out = model.eval()(**x, return_dict=False)[0]
    assert not torch.allclose(out, expected, atol=1e-3)


def test_dynamictrl_checkpoint_restores_padaln_in_both_layouts(tiny_dirs: dict[str, Path]) -> None:
    saved = DynamiCtrlTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer")
    for name in ("dynamictrl", "original"):
        added: list[int] = []
        model, report, raw = load_cogvideox_transformer(
            tiny_dirs[name], transformer_class=DynamiCtrlTransformer3DModel,
            initialize_missing=padaln_initializer(zero_init=False, on_added=added.append),
        )
        assert report.ok and added == []
        assert raw["_class_name"] == ("DynamiCtrlTransformerModel" if name == "original"
                                      else "DynamiCtrlTransformer3DModel")
        for key, value in saved.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_plain_diffusers_loads_a_saved_dynamictrl_transformer_without_its_padaln(tiny_dirs: dict[str, Path]) -> None:
    plain = CogVideoXTransformer3DModel.from_pretrained(tiny_dirs["dynamictrl"] / "transformer")
    assert not any("control_norm1" in k for k in plain.state_dict())
    assert plain.config.in_channels == 32 and plain.config.patch_size_t == 2


# --- the released key lists, full size, meta device --------------------------------------------


def test_released_dynamictrl_keys_load_strictly_at_full_size() -> None:
    ref = reference_json("DynamiCtrl-5B__original")
    model = build_transformer(ref["config"], DynamiCtrlTransformer3DModel)
    _, report = plan_and_check(model, ShapeReader(ref["keys"]), identity_key_map())
    if not report.ok:
        raise StrictLoadError(report)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    added = padaln_keys(ref["keys"])
    assert len(added) == 4 * BLOCKS and set(added) == set(ref["keys_added_vs_CogVideoX1.5-5B-I2V"])
    assert ref["keys"]["transformer_blocks.0.control_norm1.linear.weight"] == [3 * DIM, TEMB]
    assert padaln_initializer()(model, []) == {}  # nothing to add: every PadaLN tensor is restored


def test_released_cogvideox15_i2v_keys_load_strictly_and_gain_every_padaln_layer() -> None:
    base = reference_json("CogVideoX1.5-5B-I2V__diffusers")
    dynamictrl = reference_json("DynamiCtrl-5B__original")
    assert base["config"] == dynamictrl["config"]
    model = build_transformer(base["config"], DynamiCtrlTransformer3DModel)
    _, report = plan_and_check(model, ShapeReader(base["keys"]), identity_key_map())
    assert not report.unexpected and not report.mismatched
    assert sorted(report.missing) == sorted(padaln_keys(dynamictrl["keys"]))

    added: list[int] = []
    with torch.device("meta"):
        fresh = padaln_initializer(on_added=added.append)(model, report.missing)
    assert added == [BLOCKS]
    shapes = {k: list(v.shape) for k, v in fresh.items()}
    assert shapes == {k: dynamictrl["keys"][k] for k in report.missing}
    _, report = plan_and_check(model, ShapeReader({**base["keys"], **shapes}), identity_key_map())
    if not report.ok:
        raise StrictLoadError(report)
    assert sum(p.numel() for p in model.parameters()) == dynamictrl["num_params"]


def test_a_checkpoint_with_some_padaln_layers_missing_is_refused_not_filled_in() -> None:
    ref = reference_json("DynamiCtrl-5B__original")
    lost = [k for k in ref["keys"] if k.startswith("transformer_blocks.7.control_norm1.")]
    keys = {k: v for k, v in ref["keys"].items() if k not in lost}
    model = build_transformer(ref["config"], DynamiCtrlTransformer3DModel)
    _, report = plan_and_check(model, ShapeReader(keys), identity_key_map())
    assert sorted(report.missing) == sorted(lost)
    assert padaln_initializer()(model, report.missing) == {}
    with pytest.raises(StrictLoadError, match=r"transformer_blocks\.7\.control_norm1\.linear\.weight"):
        raise StrictLoadError(report)

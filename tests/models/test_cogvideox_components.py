"""CogVideoX components: tiny models in the release layout load strictly through the code a real
checkpoint goes through, equal diffusers' own loading, widen without changing the output, and get
the rotary positions the CogVideoX pipelines compute."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel
from safetensors.torch import load_file, save_file
from torch import nn

from vidctrl.models.cogvideox import (
    CogVideoXModelFilesError,
    load_cogvideox_components,
    load_cogvideox_transformer,
    resize_crop_region_for_grid,
    rotary_embedding,
    widen_patch_embedding,
    write_tiny_cogvideox,
)
from vidctrl.models.loading import StrictLoadError

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_cogvideox")
    return {
        "5b": write_tiny_cogvideox(root / "5b", "cogvideox-fun-inp", variant="5b"),
        "2b": write_tiny_cogvideox(root / "2b", "cogvideox-fun-control", variant="2b"),
        "1.5": write_tiny_cogvideox(root / "15", in_channels=32, variant="1.5"),
        "t2v": write_tiny_cogvideox(root / "t2v", in_channels=16, variant="5b"),
    }


def _inputs(config, frames: int = 3, size: int = 8, batch: int = 1) -> dict:
    kwargs = {
        "hidden_states": torch.randn(batch, frames, config.in_channels, size, size, generator=torch.Generator().manual_seed(1)),
        "encoder_hidden_states": torch.randn(batch, 226, config.text_embed_dim, generator=torch.Generator().manual_seed(2)),
        "timestep": torch.tensor([500] * batch),
        "image_rotary_emb": rotary_embedding(config, latent_frames=frames, latent_height=size, latent_width=size),
        "return_dict": False,
    }
    if config.ofs_embed_dim is not None:
        kwargs["ofs"] = torch.full((batch,), 2.0)
    return kwargs


@pytest.mark.parametrize("variant", ["5b", "2b", "1.5"])
def test_tiny_release_loads_strictly_and_equals_diffusers_loading(variant: str, tiny: dict[str, Path]) -> None:
    components = load_cogvideox_components(tiny[variant])
    assert set(components.reports) == {"transformer", "vae", "text_encoder"}
    assert all(r.ok and not r.ignored for r in components.reports.values())
    ours = components.transformer
    theirs = CogVideoXTransformer3DModel.from_pretrained(tiny[variant] / "transformer")
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frames = 4 if variant == "1.5" else 3
    with torch.no_grad():
        out = ours(**_inputs(ours.config, frames))[0]
        ref = theirs(**_inputs(theirs.config, frames))[0]
    assert out.shape == (1, frames, 16, 8, 8) and torch.equal(out, ref)
    vae = AutoencoderKLCogVideoX.from_pretrained(tiny[variant] / "vae")
    assert vae.config.scaling_factor == components.vae.config.scaling_factor == (1.15258426 if variant == "2b" else 0.7)
    assert components.scheduler_config["prediction_type"] == "v_prediction"
    assert components.scheduler_config["rescale_betas_zero_snr"] is True
    assert components.scheduler_config["snr_shift_scale"] == (3.0 if variant == "2b" else 1.0)
    ids = components.tokenizer(["a person dances"], padding="max_length", max_length=226).input_ids
    assert len(ids[0]) == 226


def test_inp_release_keeps_its_videox_fun_config_key(tiny: dict[str, Path]) -> None:
    _, _, raw = load_cogvideox_transformer(tiny["5b"])
    assert raw["add_noise_in_inpaint_model"] is True and raw["in_channels"] == 33


def test_stray_pos_embedding_in_a_file_is_tolerated_and_any_other_extra_key_is_named(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    folder = shutil.copytree(tiny["5b"], tmp_path / "m")
    state = load_file(folder / WEIGHTS)
    save_file({**state, "pos_embedding": torch.zeros(1, 4, 32)}, folder / WEIGHTS)
    _, report, _ = load_cogvideox_transformer(folder)
    assert report.ok and list(report.ignored) == ["pos_embedding"]

    save_file({**state, "blocks.0.extra.weight": torch.zeros(2)}, folder / WEIGHTS)
    with pytest.raises(StrictLoadError, match=r"unexpected \(1\)[\s\S]*blocks.0.extra.weight"):
        load_cogvideox_transformer(folder)
    del state["proj_out.bias"]
    save_file(state, folder / WEIGHTS)
    with pytest.raises(StrictLoadError, match=r"missing \(1\)[\s\S]*proj_out.bias"):
        load_cogvideox_transformer(folder)


def test_missing_files_name_the_file_and_where_to_get_the_release(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CogVideoXModelFilesError, match=r"not found.*alibaba-pai/CogVideoX-Fun"):
        load_cogvideox_components(tmp_path / "nowhere")
    with pytest.raises(CogVideoXModelFilesError, match="pass the folder that contains transformer/"):
        load_cogvideox_components(tiny["5b"] / "transformer")
    import shutil

    folder = shutil.copytree(tiny["5b"], tmp_path / "m")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CogVideoXModelFilesError, match=r"missing scheduler/scheduler_config.json"):
        load_cogvideox_components(folder)


class WithExtraNorm(CogVideoXTransformer3DModel):
    """A subclass that adds a layer to every block, as a family with its own control layers does."""

    @classmethod
    def from_config(cls, config, **kwargs):
        model = super().from_config(config, **kwargs)
        for block in model.transformer_blocks:
            block.extra_norm = nn.LayerNorm(model.config.num_attention_heads * model.config.attention_head_dim)
        return model


def test_a_subclass_loads_a_base_checkpoint_only_with_its_new_layers_supplied(tiny: dict[str, Path]) -> None:
    with pytest.raises(StrictLoadError, match=r"missing \(4\)[\s\S]*transformer_blocks.0.extra_norm.weight"):
        load_cogvideox_transformer(tiny["5b"], transformer_class=WithExtraNorm)

    def initialize(model: nn.Module, missing: list[str]) -> dict[str, torch.Tensor]:
        assert all(".extra_norm." in k for k in missing)
        return {k: torch.ones(32) if k.endswith("weight") else torch.zeros(32) for k in missing}

    model, report, _ = load_cogvideox_transformer(tiny["5b"], transformer_class=WithExtraNorm,
                                                  initialize_missing=initialize)
    assert report.ok and torch.equal(model.transformer_blocks[1].extra_norm.weight, torch.ones(32))


@pytest.mark.parametrize(("variant", "frames"), [("t2v", 3), ("1.5", 4)])
def test_widening_adds_zero_channels_that_leave_the_output_unchanged(
    variant: str, frames: int, tiny: dict[str, Path], tmp_path: Path
) -> None:
    model = load_cogvideox_components(tiny[variant], parts=["transformer"]).transformer
    base_in = model.config.in_channels
    inputs = _inputs(model.config, frames)
    with torch.no_grad():
        before = model(**inputs)[0]
        assert widen_patch_embedding(model, base_in + 17)
        assert not widen_patch_embedding(model, base_in + 17)
        extra = torch.randn(1, frames, 17, 8, 8)
        after = model(**{**inputs, "hidden_states": torch.cat([inputs["hidden_states"], extra], dim=2)})[0]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert model.config.in_channels == base_in + 17
    with pytest.raises(ValueError, match="more than the 16 this train mode feeds"):
        widen_patch_embedding(model, 16)
    model.save_pretrained(tmp_path / "widened")
    assert CogVideoXTransformer3DModel.from_pretrained(tmp_path / "widened").config.in_channels == base_in + 17


def _pipeline_rotary(config, height: int, width: int, frames: int):
    """What diffusers' CogVideoX pipeline computes (its method, on a stand-in pipeline object)."""
    stand_in = SimpleNamespace(vae_scale_factor_spatial=8, transformer=SimpleNamespace(config=config))
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(stand_in, height, width, frames, "cpu")


@pytest.mark.parametrize(("variant", "height", "width", "frames"),
                         [("5b", 64, 64, 3), ("5b", 480, 720, 13), ("5b", 256, 448, 7), ("1.5", 128, 192, 4)])
def test_rotary_positions_at_the_training_size_match_the_pipeline(
    variant: str, height: int, width: int, frames: int, tiny: dict[str, Path]
) -> None:
    config = CogVideoXTransformer3DModel.load_config(tiny[variant] / "transformer")
    config = SimpleNamespace(**{**config, "patch_size_t": config.get("patch_size_t")})
    cos, sin = rotary_embedding(config, latent_frames=frames, latent_height=height // 8, latent_width=width // 8)
    ref_cos, ref_sin = _pipeline_rotary(config, height, width, frames)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    tokens = frames // (config.patch_size_t or 1) * (height // 16) * (width // 16)
    assert cos.shape == (tokens, config.attention_head_dim)
    assert rotary_embedding(SimpleNamespace(use_rotary_positional_embeddings=False), latent_frames=1,
                            latent_height=8, latent_width=8) is None


@pytest.mark.parametrize("grid", [(4, 4), (30, 45), (16, 28), (40, 20), (3, 90)])
def test_crop_region_centres_the_training_grid_in_the_sample_grid(grid: tuple[int, int]) -> None:
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    assert resize_crop_region_for_grid(grid, 45, 30) == get_resize_crop_region_for_grid(grid, 45, 30)


def test_tiny_writer_refuses_unknown_presets_and_variants(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CogVideoX-Fun preset"):
        write_tiny_cogvideox(tmp_path, "cogvideox-fun-pose")
    with pytest.raises(ValueError, match="unknown CogVideoX variant"):
        write_tiny_cogvideox(tmp_path, "cogvideox-fun-inp", variant="10b")
    index = json.loads((write_tiny_cogvideox(tmp_path / "c", "cogvideox-fun-control") / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "CogVideoXTransformer3DModel"]
    assert index["scheduler"] == ["diffusers", "CogVideoXDDIMScheduler"]

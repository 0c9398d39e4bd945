"""Tiny Wan2.1-Fun models written in both layouts load through the user's code path and run."""

import json
import re
import shutil
import socket

import pytest
import torch
from safetensors.torch import save_file

from vidctrl.models.loading import StrictLoadError
from vidctrl.models.wan import (
    ORIGINAL_FILES,
    PRESETS,
    WanFunControlTransformer3DModel,
    WanModelFilesError,
    detect_layout,
    load_wan_components,
    write_tiny_wan,
)

MODEL_PARTS = ("transformer", "vae", "text_encoder", "image_encoder")


def public(config) -> dict:
    """A diffusers config without its bookkeeping entries (_class_name, _diffusers_version, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))  # at most 2, and no more than an xdist worker's share
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
@pytest.mark.parametrize("preset", PRESETS)
def test_tiny_model_loads_like_a_release_and_every_component_runs(tiny_wan_dirs, preset, layout):
    folder = tiny_wan_dirs[(preset, layout)]
    assert detect_layout(folder) == layout
    wan = load_wan_components(folder)
    assert wan.layout == layout
    assert all(wan.reports[p].ok and wan.reports[p].loaded > 0 for p in MODEL_PARTS)
    generator = torch.Generator().manual_seed(0)

    with torch.no_grad():
        video = torch.rand(1, 3, 9, 64, 64, generator=generator) * 2 - 1
        latents = wan.vae.encode(video).latent_dist.mode()
        assert latents.shape == (1, 16, 3, 8, 8)  # 16 channels, 8x spatial, 9 frames -> 3
        assert wan.vae.decode(latents).sample.shape == (1, 3, 9, 64, 64)

        tokens = wan.tokenizer(
            ["a dancer spins", "Two arms up!"],
            padding="max_length",
            max_length=512,
            truncation=True,
            return_tensors="pt",
        )
        assert tokens.input_ids.shape == (2, 512) and tokens.attention_mask[0, :3].all()
        text = wan.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        assert text.shape == (2, 512, 32) and torch.isfinite(text).all()

        size = wan.image_encoder.config.image_size
        pixels = torch.randn(1, 3, size, size, generator=generator)
        clip = wan.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        assert clip.shape == (1, 17, 64)  # Wan uses the penultimate block: 4x4 patches + class token

        transformer = wan.transformer
        extra = {}
        if transformer.config.add_ref_conv:
            extra["full_ref_latents"] = latents[:, :, 0]
        if transformer.config.add_control_adapter:
            extra["camera_embedding"] = torch.randn(1, 24, 3, 64, 64, generator=generator)
        conditions = torch.randn(1, transformer.config.in_channels - 16, 3, 8, 8, generator=generator)
        out = transformer(
            hidden_states=torch.cat([latents, conditions], dim=1),
            timestep=torch.tensor([500]),
            encoder_hidden_states=text[:1],
            encoder_hidden_states_image=clip,
            **extra,
        ).sample
    assert out.shape == (1, 16, 3, 8, 8) and torch.isfinite(out).all()
    assert ("full_ref_latents" in extra) == (preset == "wan2.1-fun-control-v1.1")
    assert ("camera_embedding" in extra) == (preset == "wan2.1-fun-control-camera")


def _tokens_of(tokenizer):
    ids = tokenizer("a b").input_ids
    assert ids[-1] == tokenizer.eos_token_id
    return ids


@pytest.mark.parametrize("preset", PRESETS)
def test_both_layouts_of_one_seed_load_to_identical_weights(tiny_wan_dirs, preset):
    """The original-layout writer and every key map (fused qkv, reshapes, VAE decoder indices) invert exactly."""
    diffusers = load_wan_components(tiny_wan_dirs[(preset, "diffusers")])
    original = load_wan_components(tiny_wan_dirs[(preset, "original")])
    for part in MODEL_PARTS:
        a, b = getattr(diffusers, part).state_dict(), getattr(original, part).state_dict()
        assert a.keys() == b.keys(), part
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert differing == [], part
    assert public(diffusers.transformer.config) == public(original.transformer.config)
    assert _tokens_of(diffusers.tokenizer) == _tokens_of(original.tokenizer)


def test_original_layout_stores_release_file_names_and_original_keys(tiny_wan_dirs):
    folder = tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")]
    for name in ORIGINAL_FILES.values():
        assert (folder / name).exists(), name
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["in_dim"] == 48 and config["add_ref_conv"] is True and config["model_type"] == "i2v"
    vae = torch.load(folder / ORIGINAL_FILES["vae"], weights_only=True)
    assert "decoder.upsamples.0.residual.0.gamma" in vae and "encoder.conv1.weight" in vae
    clip = torch.load(folder / ORIGINAL_FILES["image_encoder"], weights_only=True)
    assert "visual.transformer.0.attn.to_qkv.weight" in clip and "log_scale" in clip


def test_sharded_transformer_loads_through_its_index(tmp_path):
    folder = write_tiny_wan(tmp_path, "wan2.1-fun-control-camera", layout="original", transformer_shards=3)
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(folder.glob("diffusion_pytorch_model-*-of-00003.safetensors"))) == 3
    wan = load_wan_components(folder, parts=("transformer",))
    assert wan.reports["transformer"].ok and "index.json" in wan.reports["transformer"].what
    assert wan.vae is None and wan.tokenizer is None


def test_loading_never_opens_a_network_connection(tiny_wan_dirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for layout in ("diffusers", "original"):
        wan = load_wan_components(tiny_wan_dirs[("wan2.1-fun-control-v1.0", layout)])
        assert wan.tokenizer is not None and wan.transformer is not None


def test_missing_release_file_error_names_the_file_and_where_to_get_it(tiny_wan_dirs, tmp_path):
    folder = shutil.copytree(tiny_wan_dirs[("wan2.1-fun-control-v1.0", "original")], tmp_path / "release")
    (folder / ORIGINAL_FILES["vae"]).unlink()
    load_wan_components(folder, parts=("transformer",))  # other parts are not needed
    with pytest.raises(WanModelFilesError, match=re.escape("missing Wan2.1_VAE.pth")) as err:
        load_wan_components(folder)
    assert "alibaba-pai/Wan2.1-Fun" in str(err.value) and "never downloads" in str(err.value)
    with pytest.raises(WanModelFilesError, match="not found"):
        load_wan_components(tmp_path / "nowhere")
    with pytest.raises(WanModelFilesError, match="pass the folder that contains transformer/"):
        load_wan_components(tiny_wan_dirs[("wan2.1-fun-control-v1.0", "diffusers")] / "transformer")


def test_config_that_disagrees_with_the_weights_is_reported_key_by_key(tiny_wan_dirs, tmp_path):
    folder = shutil.copytree(tiny_wan_dirs[("wan2.1-fun-control-v1.0", "original")], tmp_path / "release")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "add_ref_conv": True, "in_dim": 32}))
    with pytest.raises(StrictLoadError) as err:
        load_wan_components(folder, parts=("transformer",))
    report = err.value.report
    assert report.missing == ["ref_conv.weight", "ref_conv.bias"]
    assert [m.target for m in report.mismatched] == ["patch_embedding.weight"]
    assert "2 missing, 0 unexpected, 1 with a different shape" in str(err.value)


def test_fields_an_older_config_json_lacks_are_read_off_the_weights(tiny_wan_dirs, tmp_path):
    folder = shutil.copytree(tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")], tmp_path / "release")
    config = json.loads((folder / "config.json").read_text())
    for key in ("add_ref_conv", "in_dim_ref_conv", "model_type", "in_channels"):
        del config[key]
    (folder / "config.json").write_text(json.dumps(config))
    transformer = load_wan_components(folder, parts=("transformer",)).transformer
    assert transformer.ref_conv is not None and transformer.config.image_dim == 64
    assert transformer.config.in_channels == 48


def test_unexpected_weights_fail_strict_loading_and_are_reported_when_not_strict(tiny_wan_dirs, tmp_path):
    folder = shutil.copytree(tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")], tmp_path / "release")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "add_ref_conv": False}))
    with pytest.raises(StrictLoadError, match=r"0 missing, 2 unexpected") as err:
        load_wan_components(folder, parts=("transformer",))
    assert sorted(err.value.report.unexpected) == ["ref_conv.bias", "ref_conv.weight"]
    wan = load_wan_components(folder, parts=("transformer",), strict=False)
    assert wan.transformer.ref_conv is None and len(wan.reports["transformer"].unexpected) == 2


def test_dtype_is_applied_per_tensor_with_the_libraries_fp32_exceptions(tiny_wan_dirs):
    folder = tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")]
    wan = load_wan_components(folder, dtype={"transformer": torch.bfloat16, "text_encoder": torch.bfloat16})
    t = wan.transformer
    assert t.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16 and t.ref_conv.weight.dtype == torch.bfloat16
    # diffusers keeps these in fp32 for Wan: norms, modulation tables, the time embedder
    assert t.blocks[0].norm2.weight.dtype == torch.float32
    assert t.scale_shift_table.dtype == torch.float32
    assert t.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    # transformers keeps UMT5's "wo" in fp32 for fp16 only
    assert {p.dtype for p in wan.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wan.vae.parameters()} == {torch.float32}  # not named: stored dtype


def test_saved_transformer_round_trips_through_diffusers_save_and_load(tmp_path):
    wan_dir = write_tiny_wan(tmp_path / "tiny", "wan2.1-fun-control-camera")
    transformer = load_wan_components(wan_dir, parts=("transformer",)).transformer
    transformer.save_pretrained(tmp_path / "saved")
    again = WanFunControlTransformer3DModel.from_pretrained(tmp_path / "saved")
    assert public(again.config) == public(transformer.config)
    assert again.control_adapter is not None
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), transformer.state_dict().values(), strict=True)
    )


def test_every_loaded_parameter_owns_contiguous_memory(tiny_wan_dirs, tmp_path):
    """Split qkv and transposed projections are copied out of the fused source tensor, so no two
    parameters share storage (DDP buckets and safetensors want that) and the source can be freed."""
    wan = load_wan_components(tiny_wan_dirs[("wan2.1-fun-control-v1.1", "original")], parts=MODEL_PARTS)
    for part in MODEL_PARTS:
        params = list(getattr(wan, part).parameters())
        assert all(p.is_contiguous() for p in params), part
        storages = [p.untyped_storage().data_ptr() for p in params]
        assert len(set(storages)) == len(storages), part
    save_file(dict(wan.image_encoder.state_dict()), str(tmp_path / "clip.safetensors"))

"""Every released Wan2.1-Fun file loads strictly: full-size models on the meta device, keys from the
reference key lists (as a safetensors header would give them), nothing downloaded."""

import pytest
from diffusers import AutoencoderKLWan
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config, UMT5EncoderModel

from reference_checkpoints import reference_json
from vidctrl.models.loading import (
    ShapeReader,
    StrictLoadError,
    empty_weights,
    identity_key_map,
    plan_and_check,
)
from vidctrl.models.wan.keymap import (
    clip_config_from_original,
    clip_key_map,
    fun_module_config,
    transformer_config_from_original,
    transformer_key_map,
    umt5_config_from_original,
    umt5_key_map,
    vae_config_from_original,
    vae_key_map,
)
from vidctrl.models.wan.transformer import WanFunControlTransformer3DModel

VIDEOXFUN = [
    "Wan2.1-Fun-1.3B-Control",
    "Wan2.1-Fun-14B-Control",
    "Wan2.1-Fun-V1.1-1.3B-Control",
    "Wan2.1-Fun-V1.1-14B-Control",
    "Wan2.1-Fun-V1.1-1.3B-Control-Camera",
    "Wan2.1-Fun-V1.1-14B-Control-Camera",
]
DIFFUSERS = [n for n in VIDEOXFUN if "V1.1" in n]


def assert_strict_match(model, keys, key_map, what):
    plan, report = plan_and_check(model, ShapeReader(keys, what), key_map)
    if not report.ok:
        raise StrictLoadError(report)
    return plan, report


@pytest.mark.parametrize("name", VIDEOXFUN)
def test_released_videoxfun_transformer_loads_strictly_at_full_size(name):
    ref = reference_json(f"{name}__videoxfun")
    config = transformer_config_from_original(ref["config"], ref["keys"])
    with empty_weights():
        model = WanFunControlTransformer3DModel.from_config(config)
    _, report = assert_strict_match(model, ref["keys"], transformer_key_map(), name)
    assert report.ignored == {}
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert config["add_ref_conv"] == ("V1.1" in name and "Camera" not in name)
    assert config["add_control_adapter"] == ("Camera" in name)
    assert config["in_channels"] == (32 if "Camera" in name else 48)


@pytest.mark.parametrize("name", DIFFUSERS)
def test_transformer_key_map_reproduces_every_listed_diffusers_rename(name):
    original = reference_json(f"{name}__videoxfun")
    converted = reference_json(f"{name}__diffusers")
    key_map = transformer_key_map()
    renames = converted["rename_map_original_to_diffusers"]
    assert set(renames) == set(original["keys"])
    assert {k: key_map.rename(k) for k in original["keys"]} == renames
    # and back: the map is a bijection on these keys
    assert key_map.to_source(dict.fromkeys(renames.values())).keys() == set(original["keys"])


@pytest.mark.parametrize("name", DIFFUSERS)
def test_diffusers_layout_transformer_with_fun_modules_loads_strictly(name):
    ref = reference_json(f"{name}__diffusers")
    keys = {**ref["keys"], **ref["original_only_keys_after_rename"]}
    config = {**ref["config"], **fun_module_config(ref["config"], keys)}
    with empty_weights():
        model = WanFunControlTransformer3DModel.from_config(config)
    assert_strict_match(model, keys, identity_key_map(), name)
    original = reference_json(f"{name}__videoxfun")
    from_original = transformer_config_from_original(original["config"], original["keys"])
    assert {k: from_original[k] for k in ref["config"]} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in ref["config"].items()
    }


def test_released_vae_loads_strictly_and_its_config_is_read_off_its_shapes():
    original = reference_json("Wan2.1_VAE.pth__original")
    converted = reference_json("Wan2.1_VAE__diffusers")
    config = vae_config_from_original(original["keys"])
    assert {k: converted["config"][k] for k in config} == config
    with empty_weights():
        model = AutoencoderKLWan.from_config(config)
    key_map = vae_key_map(config["num_res_blocks"])
    plan, _ = assert_strict_match(model, original["keys"], key_map, "Wan2.1_VAE.pth")
    renamed = {target: original["keys"][a.source] for target, a in plan.assignments.items()}
    assert renamed == converted["keys"]
    with empty_weights():
        diffusers_model = AutoencoderKLWan.from_config(converted["config"])
    assert_strict_match(diffusers_model, converted["keys"], identity_key_map(), "vae/ (diffusers)")


def test_released_umt5_encoder_loads_strictly_into_transformers_umt5():
    ref = reference_json("models_t5_umt5-xxl-enc-bf16.pth__original")
    config = umt5_config_from_original(ref["keys"])
    wan = ref["config"]
    assert (
        config["vocab_size"],
        config["d_model"],
        config["d_ff"],
        config["num_heads"],
        config["num_layers"],
    ) == (wan["vocab"], wan["dim"], wan["dim_ffn"], wan["num_heads"], wan["num_layers"])
    assert config["num_heads"] * config["d_kv"] == wan["dim_attn"]
    assert config["relative_attention_num_buckets"] == wan["num_buckets"]
    with empty_weights():
        model = UMT5EncoderModel(UMT5Config(**config))
    assert_strict_match(model, ref["keys"], umt5_key_map(), "models_t5_umt5-xxl-enc-bf16.pth")


def test_released_clip_vision_tower_loads_strictly_and_only_the_text_tower_is_left_out():
    ref = reference_json("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth__original")
    config = clip_config_from_original(ref["keys"])
    assert (
        config["hidden_size"],
        config["num_hidden_layers"],
        config["image_size"],
        config["patch_size"],
    ) == (1280, 32, 224, 14)
    with empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    _, report = assert_strict_match(model, ref["keys"], clip_key_map(), "CLIP .pth")
    assert set(report.ignored) == {k for k in ref["keys"] if not k.startswith("visual.")}
    assert all(k.startswith("textual.") or k == "log_scale" for k in report.ignored)

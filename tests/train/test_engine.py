"""Engine behaviour at tiny scale: YAML configs, LoRA, precision, the original checkpoint layout,
NaN handling, gradient accumulation and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vidctrl.cli import main
from vidctrl.config.train import ConfigError, parse_train_config

PRESET = "wan2.1-fun-control-v1.0"
SMALL = ["--video_sample_size", "64", "--image_sample_size", "64", "--token_sample_size", "64",
         "--video_sample_stride", "1", "--video_sample_n_frames", "5", "--enable_bucket", "--report_to", "none",
         "--seed", "1", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "sample", "--out", str(root), "--layout", "videox", "--num_videos", "3",
                 "--num_images", "0"]) == 0
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model") / "tiny"
    assert main(["model", "tiny", "--preset", PRESET, "--out", str(root)]) == 0
    return root


def base(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--preset", PRESET, "--pretrained_model_name_or_path", str(model), "--train_data_meta",
            str(data / "metadata.json"), "--train_data_dir", str(data), "--output_dir", str(out), *SMALL]


def test_yaml_config_flat_or_sectioned_and_flags_win(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "preset": PRESET, "learning_rate": 3e-5, "data": {"video_sample_n_frames": 33},
        "family": {"control_dropout": 0.2},
    }))
    config = parse_train_config([str(config_file), "--learning_rate", "1e-4"])
    assert config.optim.learning_rate == 1e-4
    assert config.data.video_sample_n_frames == 33 and config.family.control_dropout == 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: wan2.1-fun-control-v1.0\nlearning_rat: 1\n")
    with pytest.raises(ConfigError, match="unknown config keys \\['learning_rat'\\]"):
        parse_train_config([str(bad)])


def test_unknown_preset_and_missing_preset_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="unknown preset 'wan3'; choose one of"):
        parse_train_config(["--preset", "wan3"])
    with pytest.raises(ConfigError, match="choose a model with --preset"):
        parse_train_config([])


@pytest.mark.slow
def test_lora_trains_only_adapters_and_checkpoints_them(model: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    assert main([*base(model, data, out), "--use_lora", "--rank", "4", "--network_alpha", "4",
                 "--max_train_steps", "2", "--checkpointing_steps", "2"]) == 0
    adapter = out / "checkpoint-2" / "transformer"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()


@pytest.mark.slow
def test_original_layout_bf16_and_gradient_accumulation(tmp_path: Path, data: Path) -> None:
    original = tmp_path / "original"
    assert main(["model", "tiny", "--preset", PRESET, "--out", str(original), "--layout", "original"]) == 0
    assert (original / "Wan2.1_VAE.pth").exists()
    out = tmp_path / "run"
    assert main([*base(original, data, out), "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2",
                 "--max_train_steps", "2", "--checkpointing_steps", "2", "--gradient_checkpointing"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_the_samples(model: Path, data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*base(model, data, tmp_path / "nan"), "--learning_rate", "1e30", "--max_grad_norm", "0",
                 "--max_train_steps", "20"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: step " in err and ("loss is" in err or "gradient norm is" in err) and ".mp4" in err


def test_bad_data_source_is_a_usage_error(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--preset", PRESET, "--pretrained_model_name_or_path", str(model),
                 "--output_dir", str(tmp_path / "x"), "--report_to", "none", "--max_train_steps", "1"])
    assert code != 0
    assert "train_data_meta" in capsys.readouterr().err


def test_flags_of_systems_not_in_this_version_name_their_system() -> None:
    with pytest.raises(ConfigError, match="--controlnet_model_name_or_path: flags of ControlNeXt-SVD"):
        parse_train_config(["--preset", PRESET, "--controlnet_model_name_or_path", "x"])

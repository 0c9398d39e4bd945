"""The launch files the seed commands name ship with vidctrl (in the repo and in the package), are
found from any folder, and the DeepSpeed config is filled from the training flags -- clipping at
--max_grad_norm above all -- or refused where it contradicts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vidctrl.cli import main
from vidctrl.config.train import ConfigError
from vidctrl.train.distributed import (
    SHIPPED_LAUNCH_FILES,
    FsdpOptions,
    configure_deepspeed,
    read_launch,
    resolve_deepspeed_config_file,
    shipped_path,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", SHIPPED_LAUNCH_FILES)
def test_each_launch_file_is_in_the_repo_at_the_seed_path_and_in_the_package(name: str) -> None:
    packaged = shipped_path(name)
    assert packaged is not None and (REPO / name).read_bytes() == packaged.read_bytes()


@pytest.mark.parametrize(("name", "stage", "offload"), [
    ("config/zero_stage2_config.json", 2, False),
    ("config/zero_stage3_config.json", 3, False),
    ("config/zero_stage3_config_cpu_offload.json", 3, True),
])
def test_deepspeed_configs_leave_batch_accumulation_clipping_and_precision_to_the_flags(
    name: str, stage: int, offload: bool
) -> None:
    config = json.loads((REPO / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in config["zero_optimization"]) == offload
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"


def test_accelerate_yaml_is_an_accelerate_deepspeed_config() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "accelerate_configs" / "deepspeed.yaml"))
    assert config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 2
    assert config.mixed_precision == "bf16"
    raw = yaml.safe_load((REPO / "accelerate_configs" / "deepspeed.yaml").read_text())
    assert "gradient_clipping" not in raw["deepspeed_config"]  # --max_grad_norm decides


def test_config_path_prints_the_packaged_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-path", "accelerate_configs/deepspeed.yaml"]) == 0
    assert Path(capsys.readouterr().out.strip()) == shipped_path("accelerate_configs/deepspeed.yaml")
    assert main(["config-path", "config/zero_stage9.json"]) == 1
    assert "ships no config/zero_stage9.json" in capsys.readouterr().err


def test_a_seed_config_path_missing_here_resolves_to_vidctrls_copy(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "config/zero_stage2_config.json"}
    resolve_deepspeed_config_file(env)
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(shipped_path("config/zero_stage2_config.json"))
    own = tmp_path / "config" / "zero_stage2_config.json"
    own.parent.mkdir()
    own.write_text("{}")
    env = {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "config/zero_stage2_config.json"}
    resolve_deepspeed_config_file(env)
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "config/zero_stage2_config.json"  # the user's own wins
    with pytest.raises(ConfigError, match="does not exist, and vidctrl ships no file"):
        resolve_deepspeed_config_file({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "config/mine.json"})


def test_max_grad_norm_becomes_deepspeeds_gradient_clipping() -> None:
    config = json.loads((REPO / "config" / "zero_stage2_config.json").read_text())
    configure_deepspeed(config, micro_batch_size=1, gradient_accumulation_steps=2, max_grad_norm=0.05)
    assert config["gradient_clipping"] == 0.05  # not accelerate's "auto" -> 1.0, not absent
    assert config["train_micro_batch_size_per_gpu"] == 1 and config["gradient_accumulation_steps"] == 2
    unclipped = {"gradient_clipping": "auto"}
    configure_deepspeed(unclipped, micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=0)
    assert unclipped["gradient_clipping"] == 0.0


@pytest.mark.parametrize(("key", "value", "flag"), [
    ("gradient_clipping", 1.0, "--max_grad_norm"),
    ("train_micro_batch_size_per_gpu", 4, "--train_batch_size"),
    ("gradient_accumulation_steps", 8, "--gradient_accumulation_steps"),
])
def test_a_deepspeed_value_contradicting_a_flag_is_refused_naming_both(key: str, value: float, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"sets {key} to {value} but {flag} is"):
        configure_deepspeed({key: value}, micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=0.05)


def test_launch_plan_reads_accelerates_environment() -> None:
    assert read_launch({}).engine == "single"
    assert read_launch({"WORLD_SIZE": "2"}).engine == "ddp"
    env = {"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true",
           "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_TRANSFORMER_CLS_TO_WRAP": "WanTransformerBlock"}
    plan = read_launch(env)
    assert plan.engine == "fsdp" and plan.world_size == 4
    assert plan.fsdp == FsdpOptions(offload_params=True, reshard_after_forward=False,
                                    block_classes=("WanTransformerBlock",))
    assert "ACCELERATE_USE_FSDP" not in env  # accelerate must not wrap the model a second time


@pytest.mark.parametrize(("env", "message"), [
    ({"FSDP_VERSION": "1"}, "FSDP2 .* only"),
    ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "--gradient_checkpointing"),
    ({"FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "per transformer block"),
    ({"FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, "vidctrl export zero-to-bf16"),
])
def test_fsdp_flags_vidctrl_cannot_honour_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_launch({"ACCELERATE_USE_FSDP": "true", **env})

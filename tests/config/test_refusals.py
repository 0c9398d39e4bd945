"""Flags no preset of this version reads are refused naming the preset; two spellings of the optimizer
must agree; a zero count is a value, never "not given"; --interval_frame only where it has a meaning."""

from __future__ import annotations

import logging

import pytest

from vidctrl.config.fields import ConfigError
from vidctrl.config.refusals import optimizer_name
from vidctrl.config.train import parse_train_config
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.train.optim import scaled_learning_rate

WAN = ["--preset", "wan2.1-fun-control-v1.1"]


@pytest.mark.parametrize("flag", [["--validation_image_folder", "gt"], ["--validation_control_folder", "pose"],
                                  ["--use_ema"]])
def test_controlnext_only_flags_are_refused_naming_the_preset_and_the_family(flag: list[str]) -> None:
    with pytest.raises(ConfigError, match=rf"--{flag[0][2:]}: preset wan2.1-fun-control-v1.1 cannot honour .*"
                                          "ControlNeXt-SVD"):
        parse_train_config([*WAN, *flag])


@pytest.mark.parametrize(("flags", "named"), [
    (["--optimizer", "adamw8bit", "--use_came"], "--optimizer adamw8bit and --use_came"),
    (["--optimizer", "adamw", "--use_8bit_adam"], "--optimizer adamw and --use_8bit_adam"),
    (["--use_came", "--use_8bit_adam"], "--use_8bit_adam and --use_came"),
])
def test_conflicting_optimizer_spellings_are_an_error(flags: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"{named} name different optimizers"):
        parse_train_config([*WAN, *flags])


@pytest.mark.parametrize(("flags", "name"), [([], "adamw"), (["--use_came"], "came"),
                                              (["--optimizer", "came", "--use_came"], "came"),
                                              (["--use_8bit_adam"], "adamw8bit")])
def test_agreeing_optimizer_spellings_pick_that_optimizer(flags: list[str], name: str) -> None:
    assert optimizer_name(parse_train_config([*WAN, *flags]).optim) == name


@pytest.mark.parametrize("flag", ["--max_train_steps", "--validation_steps", "--validation_frames",
                                  "--checkpoints_total_limit", "--height"])
def test_zero_is_refused_not_read_as_not_given(flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):  # the wording may come from the numeric range checks
        parse_train_config([*WAN, flag, "0"])


def test_an_empty_prompt_separator_is_refused_not_read_as_the_default() -> None:
    with pytest.raises(ConfigError, match="--validation_prompt_separator is empty"):
        parse_train_config(["--preset", "dynamictrl", "--validation_prompt_separator", ""])


def test_interval_frame_outside_controlnext_sampling_is_refused_with_the_flag_that_does_it() -> None:
    with pytest.raises(ConfigError, match=r"--interval_frame is ControlNeXt's .* the videox way here, whose step "
                                          "is --video_sample_stride"):
        parse_train_config([*WAN, "--interval_frame", "2", "--train_data_meta", "m.json"])
    with pytest.raises(ValueError, match=r"--interval_frame: .* the videox way"):
        ClipRules.from_config(DataConfig(interval_frame=2), layout="videox")


def test_interval_frame_sets_the_step_of_controlnext_sampling() -> None:
    config = parse_train_config([*WAN, "--interval_frame", "3", "--frame_sampling", "controlnext"])
    rules = ClipRules.from_config(config.data, layout="videox")
    assert rules.interval_frame == 3
    assert ClipRules.from_config(DataConfig(), layout="controlnext").interval_frame == 1


def test_scale_lr_multiplies_by_accumulation_batch_and_processes_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    kwargs = {"gradient_accumulation_steps": 2, "train_batch_size": 3, "num_processes": 4}
    assert scaled_learning_rate(1e-4, scale_lr=False, **kwargs) == 1e-4
    assert scaled_learning_rate(1e-4, scale_lr=True, **kwargs) == pytest.approx(2.4e-3)
    assert "--scale_lr: learning rate 0.0001 x 2 accumulation steps x 3 per-process batch x 4 processes" in caplog.text

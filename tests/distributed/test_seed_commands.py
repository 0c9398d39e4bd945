"""The seed commands, verbatim: every `accelerate launch` block of the five seed docs.

Only the script is replaced (`-m vidctrl train --preset P`), the model path (a `vidctrl model tiny`
folder), the data paths (sample data in the doc's layout), and sizes/steps are scaled down by flags
appended at the end (`--num_processes 2` on the launcher side for the multi-process ones). Every
command's launcher flags parse with accelerate's own parser and its script flags with vidctrl's;
then each command this machine can run is run: one process, or two CPU processes over gloo
(DeepSpeed ZeRO-2/3 through accelerate's plugin), and the ZeRO-3 checkpoint goes through the doc's
own `zero_to_bf16.py` line (as `vidctrl export zero-to-bf16`).

A system without a model family in this version (EasyAnimate, ControlNeXt-SVD) has its launcher flags
parsed; a test lists those systems, so that adding the family fails until its commands run here too.
Test ids say which command ran: `<doc system>-<n>-<what>`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from mp_helpers import launch, make_model, metrics, weights

from seed_commands import DOCS, SeedCommand, seed_commands, seed_doc
from vidctrl.cli import main
from vidctrl.families import all_presets

VIDEOX_SCALE_DOWN = [
    "--image_sample_size", "64", "--video_sample_size", "32", "--token_sample_size", "32",
    "--video_sample_stride", "1", "--video_sample_n_frames", "5", "--train_batch_size", "1",
    "--dataloader_num_workers", "0", "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "none",
]
DYNAMICTRL_SCALE_DOWN = [
    "--height_buckets", "32", "--width_buckets", "32", "--height", "32", "--width", "32", "--frame_buckets", "5",
    "--max_num_frames", "5", "--train_batch_size", "1", "--gradient_accumulation_steps", "1",
    "--dataloader_num_workers", "0", "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "none",
    "--lr_warmup_steps", "0",
]


def preset_of(command: SeedCommand) -> str | None:
    """The vidctrl preset of a command, or None when its system has no family here."""
    if command.system == "Wan2.1-Fun":
        if not command.script_args:
            return None
        model = command.variables.get("MODEL_NAME", "")
        return "wan2.1-fun-control-v1.1" if "V1.1" in model else "wan2.1-fun-control-v1.0"
    wanted = {"CogVideoX-Fun": "cogvideox-fun-inp", "DynamiCtrl": "dynamictrl"}.get(command.system)
    return wanted if wanted in all_presets() else None


def command_id(command: SeedCommand) -> str:
    what = preset_of(command) or ("launcher-only" if not command.script_args else "no-family")
    return f"{command.system}-{command.index}-{what}-{command.engine}"


COMMANDS = seed_commands()
IDS = [command_id(c) for c in COMMANDS]


def test_every_seed_doc_contributes_its_commands() -> None:
    counts = {system: sum(c.system == system for c in COMMANDS) for system in DOCS.values()}
    # Wan: launcher example for many machines + 3 launches x 2 versions; EasyAnimate 4; CogVideoX-Fun 2
    assert counts == {"DynamiCtrl": 1, "EasyAnimate": 4, "Wan2.1-Fun": 7, "ControlNeXt-SVD": 1, "CogVideoX-Fun": 2}
    assert sum(bool(c.fixed_typos) for c in COMMANDS) == 2  # the two ZeRO-3 lines


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_launcher_flags_parse_with_accelerates_parser(command: SeedCommand) -> None:
    from accelerate.commands.launch import launch_command_parser

    launch_command_parser().parse_args([*command.launcher, "script.py"])


# the commands vidctrl has a preset for (the multi-machine launcher example has no script flags to parse)
PARSED = [c for c in COMMANDS if preset_of(c) is not None]
# A system whose commands are parsed and run once its family lands: adding a family fails this list.
NO_FAMILY_YET = {"EasyAnimate", "ControlNeXt-SVD"}


def test_commands_without_a_preset_are_the_launcher_example_and_the_systems_without_a_family() -> None:
    without = [c for c in COMMANDS if preset_of(c) is None]
    assert {c.system for c in without if c.script_args} == NO_FAMILY_YET
    assert [c.engine for c in without if not c.script_args] == ["multinode"]
    names = " ".join(all_presets()).lower()
    assert "easyanimate" not in names and "controlnext" not in names, (
        "a family for a NO_FAMILY_YET system exists now: map its commands in preset_of")


@pytest.mark.parametrize("command", PARSED, ids=[command_id(c) for c in PARSED])
def test_script_flags_parse_with_the_seed_meaning(command: SeedCommand, tmp_path: Path) -> None:
    from vidctrl.config.train import parse_train_config

    config = parse_train_config(["--preset", preset_of(command), *command.script_args])
    if "--max_grad_norm" in " ".join(command.script_args):
        value = next(a.split("=", 1)[1] if "=" in a else command.script_args[i + 1]
                     for i, a in enumerate(command.script_args) if a.startswith("--max_grad_norm"))
        assert config.optim.max_grad_norm == float(value)
    assert config.run.use_deepspeed == ("--use_deepspeed" in command.script_args)


# --- running them ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, videox_sample_data: Path,
           dynamictrl_sample_data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed-assets")
    out = {"videox": videox_sample_data, "dynamictrl": dynamictrl_sample_data}
    from PIL import Image

    from vidctrl.data.video import read_frames

    frame = read_frames(out["dynamictrl"] / "videos" / "video_000.mp4", np.array([0]))[0]
    Image.fromarray(frame).save(root / "reference.jpg")
    out["reference"] = root / "reference.jpg"
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed-models")
    return {preset: make_model(root / preset, preset) for preset in {preset_of(c) for c in COMMANDS if preset_of(c)}}


def runnable_args(command: SeedCommand, assets: dict[str, Path], model: Path) -> list[str]:
    """Script args with the paths replaced, and the scale-down flags appended."""
    values = command.variables
    replace = {
        values.get("MODEL_NAME", "\0"): str(model),
        values.get("MODEL_PATH", "\0"): str(model),
        values.get("DATASET_META_NAME", "\0"): str(assets["videox"] / "metadata.json"),
        values.get("DATASET_NAME", "\0"): str(assets["videox"]),
        values.get("DATA_ROOT", "\0"): str(assets["dynamictrl"]),
        "/home/user/data/dynamictrl_train/test.jpg": str(assets["reference"]),
        "/home/user/data/dynamictrl_train/test_driving_video.mp4": str(assets["dynamictrl"] / "poses" / "video_000.mp4"),
    }
    args = []
    for arg in command.script_args:
        for old, new in sorted(replace.items(), key=lambda kv: -len(kv[0])):
            if old != "\0" and old in arg:
                arg = arg.replace(old, new)
        args.append(arg)
    if command.system == "DynamiCtrl":
        args[args.index("--output_dir") + 1] = "output_dir"
        return [*args, *DYNAMICTRL_SCALE_DOWN]
    return [*args, *VIDEOX_SCALE_DOWN]


def runnable_launcher(command: SeedCommand) -> tuple[list[str], int]:
    launcher = list(command.launcher)
    if command.engine == "accelerate-yaml":
        from vidctrl.train.distributed import shipped_path

        at = launcher.index("--config_file") + 1
        # outside a vidctrl checkout: --config_file "$(vidctrl config-path accelerate_configs/deepspeed.yaml)"
        launcher[at] = str(shipped_path(launcher[at]))
    processes = 1 if command.engine == "plain" else 2
    return launcher, processes


def test_wan_v1_0_launch_lines_are_v1_1s() -> None:
    versions = {preset_of(c): [] for c in COMMANDS if c.system == "Wan2.1-Fun" and preset_of(c)}
    for command in COMMANDS:
        if preset_of(command) in versions:
            versions[preset_of(command)].append(command.launcher)
    assert versions["wan2.1-fun-control-v1.0"] == versions["wan2.1-fun-control-v1.1"]


# Every command of every seed doc that has a preset runs, Wan V1.0's too (its launch lines are V1.1's).
RUNNABLE = list(PARSED)


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=[command_id(c) for c in RUNNABLE])
def test_seed_command_runs(command: SeedCommand, assets: dict[str, Path], models: dict[str, Path],
                           tmp_path: Path) -> None:
    launcher, processes = runnable_launcher(command)
    args = runnable_args(command, assets, models[preset_of(command)])
    if command.engine == "plain":
        # one process: `accelerate launch --mixed_precision="bf16"` adds nothing the script flags do not
        # say (its flags parse in test_launcher_flags_parse_with_accelerates_parser); run it in this process
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            assert main(["train", "--preset", preset_of(command), *args]) == 0
    else:
        # run where the doc's relative paths (config/..., output_dir) are not: vidctrl finds its own copies
        run = launch(["--preset", preset_of(command), *args], launcher=launcher, processes=processes, cwd=tmp_path,
                     quiet_defaults=False, timeout=150)
        assert run.returncode == 0, run.output[-4000:]
    out = tmp_path / "output_dir"
    assert len(metrics(out)) == 2 and (out / "checkpoint-2" / "trainer_state.json").is_file()
    if command.engine == "zero3":
        # --zero3_save_16bit_model true: the checkpoint carries the gathered 16-bit weights as well
        assert weights(out / "checkpoint-2" / "transformer")
        # the doc's own line: python scripts/zero_to_bf16.py output_dir/checkpoint-{our-num-steps} \
        #     output_dir/checkpoint-{your-num-steps}-outputs --max_shard_size 80GB --safe_serialization
        line = next(line for line in seed_doc("Wan2.1-Fun").splitlines()
                    if "zero_to_bf16.py" in line)
        words = shlex.split(line.replace("{our-num-steps}", "2").replace("{your-num-steps}", "2"))
        export = words[words.index("scripts/zero_to_bf16.py") + 1 :]
        export = [str(tmp_path / w) if w.startswith("output_dir/") else w for w in export]
        assert main(["export", "zero-to-bf16", *export]) == 0
        assert weights(tmp_path / "output_dir" / "checkpoint-2-outputs")


MULTINODE = [c for c in COMMANDS if c.engine == "multinode"]


@pytest.mark.slow
@pytest.mark.parametrize("command", MULTINODE, ids=[command_id(c) for c in MULTINODE])
def test_multi_machine_launch_line_runs_as_one_machine_of_two_processes(
    command: SeedCommand, assets: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    """The doc's multi-machine line with its environment set for one machine (MASTER_ADDR=127.0.0.1,
    WORLD_SIZE=1 machine, NUM_PROCESS=2, RANK=0), driving the V1.1 command's script flags."""
    from mp_helpers import free_port

    wan = next(c for c in COMMANDS if preset_of(c) == "wan2.1-fun-control-v1.1" and c.engine == "plain")
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "1", "NUM_PROCESS": "2",
              "RANK": "0"}
    launcher = [re.sub(r"\$(\w+)", lambda m: values[m.group(1)], w) for w in command.raw_launcher]
    args = runnable_args(wan, assets, models[preset_of(wan)])
    run = launch(["--preset", preset_of(wan), *args], launcher=launcher, processes=2, cwd=tmp_path,
                 quiet_defaults=False, timeout=150)
    assert run.returncode == 0, run.output[-4000:]
    assert len(metrics(tmp_path / "output_dir")) == 2

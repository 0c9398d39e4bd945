"""Wan2.1-Fun Control trains from the seed doc's own commands (script replaced, sizes scaled down):
checkpoints, resumes bit for bit, validates to mp4, and its transformer loads in plain diffusers."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidctrl.cli import main
from vidctrl.config.train import ConfigError, parse_train_config

SHARED = Path(__file__).resolve().parents[3] / "shared"
SEED_DOC = SHARED / "seeds" / "002_60a58ad940286ce4.txt"

SCALE_DOWN = [
    "--image_sample_size", "64", "--video_sample_size", "64", "--token_sample_size", "64",
    "--video_sample_stride", "1", "--video_sample_n_frames", "9", "--dataloader_num_workers", "0",
    "--mixed_precision", "no", "--report_to", "none", "--learning_rate", "1e-3",
]

pytestmark = pytest.mark.skipif(not SEED_DOC.exists(), reason="shared/seeds is not beside this checkout")


def seed_commands() -> list[list[str]]:
    """The script arguments of every non-DeepSpeed `accelerate launch` block in the Wan seed doc."""
    text = SEED_DOC.read_text()
    commands = []
    for block in re.findall(r"accelerate launch (.*?)```", text, flags=re.S):
        if "deepspeed" in block.split("\n")[0] or "--train_mode" not in block:
            continue  # DeepSpeed launches belong to the scale-out issue; skip the bare launcher example
        words = shlex.split(block.replace("\\\n", " "))
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        commands.append(words[script + 1 :])
    return commands


def with_paths(args: list[str], *, model: Path, data: Path, out: Path) -> list[str]:
    replaced = [
        arg.replace("$MODEL_NAME", str(model))
        .replace("$DATASET_META_NAME", str(data / "metadata.json"))
        .replace("$DATASET_NAME", str(data))
        for arg in args
    ]
    return [*replaced, "--output_dir", str(out)]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "sample", "--out", str(root), "--layout", "videox", "--num_videos", "4",
                 "--num_images", "0"]) == 0
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for preset in ("wan2.1-fun-control-v1.0", "wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera"):
        assert main(["model", "tiny", "--preset", preset, "--out", str(root / preset)]) == 0
        out[preset] = root / preset
    return out


def test_seed_doc_has_the_v1_1_and_v1_0_commands() -> None:
    commands = seed_commands()
    modes = {next(a for a in c if a.startswith("--control_ref_image")) for c in commands}
    assert len(commands) == 2 and modes == {"--control_ref_image=random", "--control_ref_image=first_frame"}


@pytest.mark.parametrize(("index", "preset"), [(0, "wan2.1-fun-control-v1.1"), (1, "wan2.1-fun-control-v1.0")])
def test_seed_command_parses_every_flag_with_the_seed_meaning(index: int, preset: str, tmp_path: Path) -> None:
    args = with_paths(seed_commands()[index], model=tmp_path / "m", data=tmp_path / "d", out=tmp_path / "o")
    config = parse_train_config(["--preset", preset, *args])
    assert config.data.video_sample_n_frames == 81 and config.data.video_sample_stride == 2
    assert config.data.enable_bucket and config.data.random_hw_adapt and config.data.training_with_video_token_length
    assert config.optim.max_grad_norm == 0.05 and config.optim.adam_epsilon == 1e-10
    assert config.optim.lr_scheduler == "constant_with_warmup" and config.optim.lr_warmup_steps == 100
    assert config.objective.uniform_sampling and config.model.low_vram and config.model.gradient_checkpointing
    assert config.model.trainable_modules == ["."] and config.model.train_mode == "control_ref"
    assert config.family.flow_shift == 5.0  # read from config/wan2.1/wan_civitai.yaml
    assert config.family.add_full_ref_image_in_self_attention == (preset == "wan2.1-fun-control-v1.1")


def test_flags_the_preset_cannot_honour_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="add_full_ref_image_in_self_attention needs the ref_conv"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.0", "--add_full_ref_image_in_self_attention"])
    with pytest.raises(ConfigError, match="flow matching only"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--loss_type", "ddpm"])
    with pytest.raises(ConfigError, match="camera adapter"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--train_mode", "control_camera_ref"])


def train_args(preset: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    index = 0 if preset == "wan2.1-fun-control-v1.1" else 1
    args = with_paths(seed_commands()[index], model=model, data=data, out=out)
    return ["train", "--preset", preset, *args, *SCALE_DOWN, *extra]


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "transformer" / "diffusion_pytorch_model.safetensors")


def metric(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["wan2.1-fun-control-v1.1", "wan2.1-fun-control-v1.0"])
def test_seed_command_trains_checkpoints_and_resumes_bit_exactly(
    preset: str, tiny_models: dict[str, Path], sample_data: Path, tmp_path: Path
) -> None:
    model = tiny_models[preset]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    steps = ["--checkpointing_steps", "2", "--max_train_steps"]
    assert main(train_args(preset, model, sample_data, straight, *steps, "4")) == 0
    assert main(train_args(preset, model, sample_data, resumed, *steps, "2")) == 0
    assert main(train_args(preset, model, sample_data, resumed, *steps, "4", "--resume_from_checkpoint", "latest")) == 0
    a, b = checkpoint_weights(straight, 4), checkpoint_weights(resumed, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric(straight, "loss") == metric(resumed, "loss")

    # the saved transformer loads in plain diffusers (V1.1's ref_conv is vidctrl's; diffusers ignores it)
    from diffusers import WanTransformer3DModel

    loaded = WanTransformer3DModel.from_pretrained(straight / "checkpoint-4" / "transformer")
    assert loaded.config.in_channels == 48


@pytest.mark.slow
def test_validation_writes_mp4_and_contact_sheet(tiny_models: dict[str, Path], sample_data: Path,
                                                 tmp_path: Path) -> None:
    import av

    meta = json.loads((sample_data / "metadata.json").read_text())
    control = str(sample_data / meta[0]["control_file_path"])
    out = tmp_path / "out"
    code = main(train_args(
        "wan2.1-fun-control-v1.1", tiny_models["wan2.1-fun-control-v1.1"], sample_data, out,
        "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2",
        "--validation_prompts", "a person dances", "--validation_control_videos", control,
        "--validation_num_inference_steps", "2", "--validation_frames", "5",
    ))
    assert code == 0
    mp4 = out / "validation" / "step-2" / "sample-0.mp4"
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].frames == 5
    assert (out / "validation" / "step-2" / "sample-0.png").stat().st_size > 0
    assert (out / "loss_curve.png").exists()


@pytest.mark.slow
def test_camera_preset_trains_on_camera_trajectories_and_resumes_bit_exactly(tiny_models: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    import numpy as np

    from vidctrl.data.camera import CameraTrajectory, write_camera_txt
    from vidctrl.data.video import write_video

    data = tmp_path / "data"
    entries = []
    for i in range(2):
        frames = [np.full((64, 64, 3), (20 * k + 40 * i) % 255, dtype=np.uint8) for k in range(12)]
        write_video(data / f"v{i}.mp4", frames, fps=8)
        w2c = np.tile(np.eye(4)[:3], (12, 1, 1))
        w2c[:, 0, 3] = np.linspace(0, 0.5, 12)
        intrinsics = np.tile([0.5, 0.9, 0.5, 0.5], (12, 1))
        rows = np.concatenate([np.zeros((12, 1)), intrinsics, np.zeros((12, 2)), w2c.reshape(12, 12)], axis=1)
        write_camera_txt(data / f"v{i}.txt", CameraTrajectory.from_array(rows))
        entries.append({"file_path": f"v{i}.mp4", "control_file_path": f"v{i}.txt", "text": "a room", "type": "video"})
    (data / "metadata.json").write_text(json.dumps(entries))

    def run(out: Path, steps: int, *extra: str) -> int:
        return main(["train", "--preset", "wan2.1-fun-control-camera", "--pretrained_model_name_or_path",
                     str(tiny_models["wan2.1-fun-control-camera"]), "--train_data_meta", str(data / "metadata.json"),
                     "--train_data_dir", str(data), "--train_mode", "control_ref_camera", "--output_dir", str(out),
                     "--max_train_steps", str(steps), "--checkpointing_steps", "2", *SCALE_DOWN, *extra])

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight, 4) == 0
    assert (straight / "checkpoint-2" / "transformer" / "config.json").exists()
    assert run(resumed, 2) == 0
    assert run(resumed, 4, "--resume_from_checkpoint", "latest") == 0
    a, b = checkpoint_weights(straight, 4), checkpoint_weights(resumed, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in checkpoint_weights(straight, 2).items())
    assert metric(straight, "loss") == metric(resumed, "loss")

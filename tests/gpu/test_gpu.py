"""What only a CUDA machine proves (`make gpu-check`, `pytest -m gpu`): every preset's tiny model trains
in bf16 on the GPU with gradient checkpointing, `--low_vram`, validation, caching and resume; one-process
DeepSpeed ZeRO-2 and FSDP2; the loader with `--pin_memory`.

Without CUDA these tests are skipped (and the run says how many and why). `VIDCTRL_GPU_TESTS_ON_CPU=1`
runs them on the CPU instead, to check the tests themselves where there is no GPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vidctrl.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

ON_CPU = os.environ.get("VIDCTRL_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU),
                       reason="needs a CUDA device: run `make gpu-check` on a GPU machine"),
]
PRECISION = "no" if ON_CPU else "bf16"

VIDEOX = ["--image_sample_size", "64", "--video_sample_size", "64", "--token_sample_size", "64",
          "--video_sample_stride", "1", "--video_sample_n_frames", "9"]
DYNAMICTRL = ["--height_buckets", "64", "--width_buckets", "64", "--height", "64", "--width", "64",
              "--frame_buckets", "5", "--max_num_frames", "5", "--id_token", "BW_STYLE"]
COMMON = ["--report_to", "none", "--seed", "3", "--learning_rate", "1e-4", "--dataloader_num_workers", "1",
          "--train_batch_size", "1", "--mixed_precision", PRECISION, "--gradient_checkpointing", "--low_vram",
          "--pin_memory"]
PRESETS = {
    "wan2.1-fun-control-v1.0": "videox",
    "wan2.1-fun-control-v1.1": "videox",
    "wan2.1-fun-control-camera": "camera",
    "cogvideox-fun-inp": "videox",
    "cogvideox-fun-control": "videox",
    "dynamictrl": "dynamictrl",
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vidctrl.data.camera import CameraTrajectory, write_camera_txt

    out = {}
    for layout in ("videox", "dynamictrl"):
        root = tmp_path_factory.mktemp(f"data-{layout}")
        assert main(["data", "sample", "--out", str(root), "--layout", layout, "--num_videos", "3",
                     "--num_images", "0"]) == 0
        out[layout] = root
    # the camera preset: the same videos, each with a slow dolly as its control
    camera = out["videox"] / "camera.json"
    records = json.loads((out["videox"] / "metadata.json").read_text())
    for i, record in enumerate(records):
        rows = np.zeros((8, 19))
        rows[:, 0] = np.arange(8)
        rows[:, 1:5] = [0.5, 0.9, 0.5, 0.5]
        rows[:, 7:19] = np.eye(3, 4).reshape(-1)
        rows[:, 18] = np.linspace(0, 1, 8)  # translation along z
        write_camera_txt(out["videox"] / f"camera_{i}.txt", CameraTrajectory.from_array(rows))
        record["control_file_path"] = f"camera_{i}.txt"
    camera.write_text(json.dumps(records))
    out["camera"] = camera
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    for preset in PRESETS:
        assert main(["model", "tiny", "--preset", preset, "--out", str(root / preset)]) == 0
    return {preset: root / preset for preset in PRESETS}


def data_flags(preset: str, datasets: dict[str, Path]) -> list[str]:
    layout = PRESETS[preset]
    if layout == "dynamictrl":
        root = datasets["dynamictrl"]
        return ["--data_root", str(root), "--video_column", "video.txt", "--caption_column", "prompts.txt",
                *DYNAMICTRL]
    root = datasets["videox"]
    meta = datasets["camera"] if layout == "camera" else root / "metadata.json"
    return ["--train_data_meta", str(meta), "--train_data_dir", str(root), *VIDEOX]


def validation_flags(preset: str, datasets: dict[str, Path], tmp: Path) -> list[str]:
    flags = ["--validation_steps", "2", "--validation_prompts", "a person dances",
             "--validation_num_inference_steps", "2", "--validation_frames", "5"]
    image = tmp / "reference.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    if preset == "wan2.1-fun-control-camera":
        return [*flags, "--validation_control_videos", str(datasets["videox"] / "camera_0.txt")]
    if preset == "cogvideox-fun-inp":
        return [*flags, "--validation_images", str(image)]
    if preset == "dynamictrl":
        pose = sorted((datasets["dynamictrl"] / "poses").glob("*.mp4"))[0]
        return [*flags, "--validation_images", str(image), "--validation_control_videos", str(pose)]
    control = datasets["videox"] / json.loads((datasets["videox"] / "metadata.json").read_text())[0]["control_file_path"]
    if preset.startswith("cogvideox"):
        return [*flags, "--validation_control_videos", str(control)]
    return [*flags, "--validation_images", str(image), "--validation_control_videos", str(control)]


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_in_bf16_validates_caches_and_resumes_on_the_gpu(
    preset: str, datasets: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    base = ["--preset", preset, "--pretrained_model_name_or_path", str(models[preset]),
            *data_flags(preset, datasets), *COMMON]
    out = tmp_path / "run"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    assert main(["train", *base, "--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "1",
                 *validation_flags(preset, datasets, tmp_path)]) == 0
    assert (out / "validation" / "step-2" / "sample-0.mp4").stat().st_size > 0
    if not ON_CPU:
        assert torch.cuda.max_memory_allocated() > 0
        assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["peak_memory_gib"] > 0
    # resume from the newest checkpoint
    assert main(["train", *base, "--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "1",
                 "--resume_from_checkpoint", "latest"]) == 0
    assert steps_logged(out) == [1, 2, 3]
    # cache the latents on the GPU, then train from them
    cached = tmp_path / "cached"
    assert main(["cache", *base, "--output_dir", str(cached), "--max_train_steps", "2"]) == 0
    assert main(["train", *base, "--output_dir", str(cached), "--max_train_steps", "2", "--load_tensors"]) == 0
    assert steps_logged(cached) == [1, 2]


@pytest.mark.parametrize("engine", ["zero2", "fsdp2"])
def test_one_process_deepspeed_zero2_and_fsdp2_train_on_the_gpu(
    engine: str, datasets: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    from mp_helpers import FSDP2, deepspeed_launch, launch

    preset = "wan2.1-fun-control-v1.1"
    out = tmp_path / "run"
    launcher = deepspeed_launch() if engine == "zero2" else FSDP2
    finished = launch(["--preset", preset, "--pretrained_model_name_or_path", str(models[preset]),
                       *data_flags(preset, datasets), *COMMON, "--output_dir", str(out), "--max_train_steps", "2",
                       "--checkpointing_steps", "2"],
                      launcher=launcher, processes=1, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert finished.returncode == 0, finished.output[-4000:]
    assert steps_logged(out) == [1, 2]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()


def test_loader_pins_memory_for_the_gpu(datasets: dict[str, Path]) -> None:
    from vidctrl.config.train import parse_train_config
    from vidctrl.data.loader import build_loader

    config = parse_train_config(["--preset", "wan2.1-fun-control-v1.1", *data_flags("wan2.1-fun-control-v1.1",
                                                                                    datasets), *COMMON])
    loader = build_loader(config.data, pin_memory=True)
    batch = next(iter(loader))
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    pinned = [t.is_pinned() for t in tensors]
    assert pinned and all(pinned) == (not ON_CPU)  # without CUDA, PyTorch pins nothing

"""Run vidctrl the way users do, on this CPU machine: `accelerate launch [flags] -m vidctrl train ...`
with 2 processes over gloo, or `python -m vidctrl` in a subprocess (for kill tests).

Shared by tests/distributed and tests/faults (the latter put this folder on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from vidctrl.cli import main

PRESET = "wan2.1-fun-control-v1.0"
# 32 px, 5 frames, one bucket (no --enable_bucket): a step takes ~10 ms, so a launch costs its start-up.
SMALL = [
    "--video_sample_size", "32", "--image_sample_size", "32", "--token_sample_size", "32",
    "--video_sample_stride", "1", "--video_sample_n_frames", "5", "--report_to", "none",
    "--seed", "3", "--learning_rate", "1e-3", "--dataloader_num_workers", "0",
]
DDP = ("--multi_gpu",)
FSDP2 = ("--use_fsdp", "--fsdp_version", "2")


def deepspeed_launch(config: str = "config/zero_stage2_config.json", *extra: str) -> tuple[str, ...]:
    return ("--use_deepspeed", "--deepspeed_config_file", config, *extra)


def make_data(root: Path, num_videos: int = 4) -> Path:
    assert main(["data", "sample", "--out", str(root), "--layout", "videox", "--num_videos", str(num_videos),
                 "--num_images", "0"]) == 0
    return root


def make_model(root: Path, preset: str = PRESET) -> Path:
    assert main(["model", "tiny", "--preset", preset, "--out", str(root)]) == 0
    return root


def train_args(model: Path, data: Path, out: Path, *extra: str, preset: str = PRESET) -> list[str]:
    return ["--preset", preset, "--pretrained_model_name_or_path", str(model), "--train_data_meta",
            str(data / "metadata.json"), "--train_data_dir", str(data), "--output_dir", str(out), *SMALL, *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Finished:
    returncode: int
    output: str
    seconds: float


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)
    env.update(extra or {})
    return env


def run_process(command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Finished:
    """Run `command` in its own process group; on timeout kill the whole group and fail."""
    start = time.monotonic()
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(env), cwd=cwd, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"timed out after {timeout} s (a hang?): {' '.join(command)}\n{output[-4000:]}") from None
    return Finished(process.returncode, output, time.monotonic() - start)


def launch(args: Sequence[str], *, launcher: Sequence[str] = DDP, processes: int = 2, timeout: float = 120,
           env: dict[str, str] | None = None, script: Sequence[str] = ("-m", "vidctrl", "train"),
           cwd: Path | None = None, quiet_defaults: bool = True) -> Finished:
    """`accelerate launch --num_processes N [launcher flags] -m vidctrl train ARGS` on this machine.
    `quiet_defaults` passes accelerate's defaults explicitly (it warns about each one otherwise)."""
    defaults = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"] if quiet_defaults else []
    command = [sys.executable, "-m", "accelerate.commands.launch", *defaults, *launcher,
               "--num_processes", str(processes), "--main_process_port", str(free_port()), *script, *args]
    return run_process(command, timeout=timeout, env=env, cwd=cwd)


def metrics(out: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a diffusers weights folder (single file or shards)."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / name)))
        return state
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

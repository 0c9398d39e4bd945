"""kill -9 at random moments, also in the middle of a checkpoint write; `--resume_from_checkpoint
latest` then ends with the weights of an uninterrupted run, and no `checkpoint-N` folder is ever
half-written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mp_helpers import train_args, weights
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
STEPS = 12


def run_args(model: Path, data: Path, out: Path) -> list[str]:
    return train_args(model, data, out, "--train_batch_size", "1", "--max_train_steps", str(STEPS),
                      "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
                      "--resume_from_checkpoint", "latest")


def assert_every_checkpoint_is_whole(out: Path) -> list[int]:
    """Every visible checkpoint folder is complete and readable; returns their steps."""
    steps = []
    for folder in sorted(out.glob("checkpoint-*")):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
        for name in ("optimizer.pth", "lr_scheduler.pth", "rng_state_0.pth"):
            torch.load(folder / name, weights_only=True)
        json.loads((folder / "sampler_state.json").read_text())
        steps.append(state["step"])
    return steps


def working_folders(out: Path) -> list[Path]:
    return list(out.glob(".checkpoint-*.tmp-*")) if out.is_dir() else []


def start(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "vidctrl", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def logged_steps(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def kill_after_steps(process: subprocess.Popen[bytes], out: Path, steps: int, delay: float,
                     timeout: float = 60) -> bool:
    """SIGKILL `delay` seconds after `steps` more optimizer steps were logged (a random moment of a
    step: data, forward, backward, optimizer or checkpoint); True when killed before it ended."""
    target = logged_steps(out) + steps
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and logged_steps(out) < target:
        time.sleep(0.002)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def kill_mid_write(process: subprocess.Popen[bytes], out: Path, timeout: float = 60) -> bool:
    """SIGKILL the moment a checkpoint is being written (its temporary folder exists); True when the
    kill landed while the folder was still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if working_folders(out):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return bool(working_folders(out))
        time.sleep(0.001)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return False


def test_kill_9_at_random_moments_then_resume_matches_the_uninterrupted_run(
    fault_model: Path, fault_data: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"  # a subprocess too: the same threads, the same float sums
    assert start(run_args(fault_model, fault_data, reference)).wait(timeout=120) == 0

    out = tmp_path / "killed"
    rng = random.Random(20240611)
    plan = ["random", "mid-write", "random", "mid-write"]
    mid_write_kills = 0
    for kind in plan:
        process = start(run_args(fault_model, fault_data, out))
        if kind == "mid-write":
            mid_write_kills += kill_mid_write(process, out)
        else:
            kill_after_steps(process, out, rng.randint(1, 2), rng.uniform(0.0, 0.15))
        steps = assert_every_checkpoint_is_whole(out) if out.is_dir() else []
        if steps and max(steps) == STEPS:
            break
    assert mid_write_kills >= 1, "no kill landed during a checkpoint write"

    final = start(run_args(fault_model, fault_data, out))
    assert final.wait(timeout=120) == 0
    assert assert_every_checkpoint_is_whole(out)[-1] == STEPS
    assert not working_folders(out)
    a = weights(reference / f"checkpoint-{STEPS}" / "transformer")
    b = weights(out / f"checkpoint-{STEPS}" / "transformer")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

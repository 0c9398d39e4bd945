"""Two `vidctrl train` runs into one output_dir (a requeued job whose first copy is alive, a shared
project folder): the second stops at once naming the first, and the first run's files stay whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mp_helpers import train_args

pytestmark = pytest.mark.slow
STEPS = 40


def test_second_run_into_the_same_output_dir_is_refused_and_the_first_finishes_whole(
    fault_model: Path, fault_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["-m", "vidctrl", "train", *train_args(fault_model, fault_data, out, "--train_batch_size", "1",
                                                  "--max_train_steps", str(STEPS), "--checkpointing_steps", "10")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".vidctrl-run.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        # Paused (alive, as a run busy validating is), so that it cannot finish before the second starts.
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            second = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"pid {first.pid} on host" in second.stderr and "is in use by another run" in second.stderr
        assert time.monotonic() - started < 60
        assert first.wait(timeout=300) == 0, first.stderr.read().decode() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20", "checkpoint-30",
                                                                 "checkpoint-40"]
    assert not (out / ".vidctrl-run.lock").exists()  # released at the end

"""SIGTERM (schedulers) and SIGINT (Ctrl-C) mid-run: the step finishes, every rank saves the same
step and exits non-zero naming the checkpoint to resume from; the resumed run ends with the weights
of an uninterrupted one. A second signal exits at once; `--save_on_signal false` keeps Python's
default behaviour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mp_helpers import free_port, launch, train_args, weights

from vidctrl.cli import main
from vidctrl.train.tracking import Tracker

STEPS = 3


def run(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["train", *train_args(model, data, out, "--max_train_steps", str(STEPS), "--checkpointing_steps",
                                      "100", *extra)])


def signal_self_after_step(monkeypatch: pytest.MonkeyPatch, signum: int, step: int) -> None:
    """Deliver `signum` to this process while step `step` is being logged (mid-run, between steps)."""
    log_step = Tracker.log_step

    def logging_then_signal(self: Tracker, global_step: int, **kwargs: object) -> None:
        log_step(self, global_step, **kwargs)
        if global_step == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Tracker, "log_step", logging_then_signal)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a / "transformer"), weights(b / "transformer")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_saves_the_next_step_exits_143_and_resumes_to_the_uninterrupted_weights(
    fault_model: Path, fault_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    assert run(fault_model, fault_data, reference) == 0

    def unhandled(signum: int, frame: object) -> None:  # without vidctrl's handler, fail instead of dying
        raise AssertionError("SIGTERM reached the test: the run installed no handler")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        with monkeypatch.context() as patch:
            signal_self_after_step(patch, signal.SIGTERM, 1)
            assert run(fault_model, fault_data, out) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the run gives the process its handlers back
    finally:
        signal.signal(signal.SIGTERM, before)
    # the signal landed after step 1 was logged: step 2 finished and was saved, nothing later
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / ".vidctrl-run.lock").exists()  # the stopped run gives up output_dir (issue 18)
    err = capfd.readouterr().err
    assert "SIGTERM received" in err
    assert f"--resume_from_checkpoint {out / 'checkpoint-2'}" in err

    assert run(fault_model, fault_data, out, "--resume_from_checkpoint", "latest") == 0
    assert_same_weights(reference / f"checkpoint-{STEPS}", out / f"checkpoint-{STEPS}")


def test_save_on_signal_false_keeps_pythons_default_ctrl_c(
    fault_model: Path, fault_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    signal_self_after_step(monkeypatch, signal.SIGINT, 1)
    assert run(fault_model, fault_data, tmp_path, "--save_on_signal", "false") == 130  # KeyboardInterrupt
    assert not list(tmp_path.glob("checkpoint-*"))
    assert not (tmp_path / ".vidctrl-run.lock").exists()  # released on the way out, even without a save
    assert "--resume_from_checkpoint" not in capfd.readouterr().err


SECOND_SIGNAL = textwrap.dedent("""
    import os, signal, sys, time
    from vidctrl.train.signals import StopRequest
    now = [0.0]
    with StopRequest(enabled=True, clock=lambda: now[0]) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested and stop.signal_name == "SIGINT"
        now[0] = 0.5  # the launcher's echo of the same Ctrl-C: still one request
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        print("still running", flush=True)
        now[0] = 5.0  # a person pressing Ctrl-C again
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    print("not reached", flush=True)
""")


def test_a_second_signal_exits_at_once_and_the_launchers_echo_does_not() -> None:
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stdout == "still running\n"
    assert "finishing this optimizer step" in done.stderr
    assert "second signal (SIGINT): exiting at once without saving" in done.stderr


def test_outside_the_main_thread_the_handlers_are_left_alone_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    from vidctrl.train.signals import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=lambda: StopRequest(enabled=True).install())
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before
    assert "outside the main thread" in caplog.text


def child_ranks(launcher: int) -> dict[int, int]:
    """rank -> pid of the training processes `accelerate launch` started under pid `launcher`."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher:
            for item in environ:
                if item.startswith(b"RANK="):
                    ranks[int(item[5:])] = int(entry.name)
    return ranks


@pytest.mark.slow
def test_sigterm_to_one_of_two_ranks_stops_both_at_the_same_step_and_resumes_exactly(
    fault_model: Path, fault_data: Path, tmp_path: Path
) -> None:
    steps = 40
    args = ["--max_train_steps", str(steps), "--checkpointing_steps", "1000", "--train_batch_size", "1"]
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    assert launch(train_args(fault_model, fault_data, reference, *args)).returncode == 0

    # Launched like mp_helpers.launch, but kept running to signal rank 1 alone after its first step.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--multi_gpu", "--num_processes", "2", "--main_process_port",
               str(free_port()), "-m", "vidctrl", "train", *train_args(fault_model, fault_data, out, *args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text()) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0][-4000:]
            time.sleep(0.01)
        ranks = child_ranks(process.pid)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1 and saved[0].name != f"checkpoint-{steps}", (saved, output[-4000:])
    # both ranks stopped at the step that was saved, and say so
    assert output.count(f"--resume_from_checkpoint {saved[0]}") == 2, output[-4000:]
    assert "stopped on SIGTERM" in output and "because another rank got SIGTERM/SIGINT" in output

    resumed = launch(train_args(fault_model, fault_data, out, *args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.output[-4000:]
    assert_same_weights(reference / f"checkpoint-{steps}", out / f"checkpoint-{steps}")


"""Checkpoints of a run that owns its output_dir: every rank resumes the main process's choice,
whatever its own (lagging) view of the folder, and a save removes only working folders it may."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vidctrl.run_lock import RunLock
from vidctrl.train.checkpoint import CheckpointManager, TrainingCheckpointError, WeightsIO


def manager(output_dir: Path, **kwargs: Any) -> CheckpointManager:
    io = WeightsIO(save=lambda folder: (folder / "weights.bin").write_bytes(b"w"), load=lambda folder: None)
    return CheckpointManager(output_dir, weights={"transformer": io}, **kwargs)


def saved_run(out: Path, steps: list[int]) -> None:
    main = manager(out)
    for step in steps:
        main.save(step, epoch=0, sampler_state={"position": step})
        # the checkpoint of a 2-process run holds rank 1's RNG state too
        shutil.copy(out / f"checkpoint-{step}" / "rng_state_0.pth", out / f"checkpoint-{step}" / "rng_state_1.pth")


def main_choice(out: Path, resume: str) -> Any:
    """What the main process broadcasts for `resume` (it resolves against its own listing)."""
    sent: list[Any] = []

    def broadcast(value: Any) -> Any:
        sent.append(value)
        return value

    with contextlib.suppress(TrainingCheckpointError):  # the main process raises it too, after sending
        manager(out, broadcast=broadcast).resume(resume)
    return sent[0]


def rank_one(out: Path, choice: Any, **kwargs: Any) -> CheckpointManager:
    return manager(out, is_main_process=False, process_index=1, num_processes=2, broadcast=lambda _: choice, **kwargs)


def test_rank_with_a_lagging_listing_resumes_the_main_processs_latest(tmp_path: Path, monkeypatch) -> None:
    saved_run(tmp_path, [1, 2])
    choice = main_choice(tmp_path, "latest")
    other = rank_one(tmp_path, choice)
    # this rank's listing does not show checkpoint-2 yet (NFS attribute cache, object-store mount)
    monkeypatch.setattr(other, "checkpoints", lambda: [info for info in CheckpointManager.checkpoints(other)
                                                       if info.step == 1])
    assert other.latest().name == "checkpoint-1"
    assert other.resume("latest").step == 2


def test_rank_waits_for_a_checkpoint_that_appears_late(tmp_path: Path) -> None:
    saved_run(tmp_path, [1, 2])
    choice = main_choice(tmp_path, "latest")
    hidden = tmp_path / ".lagging"
    (tmp_path / "checkpoint-2").rename(hidden)
    threading.Timer(0.3, lambda: hidden.rename(tmp_path / "checkpoint-2")).start()
    started = time.monotonic()
    assert rank_one(tmp_path, choice, visibility_timeout_s=10).resume("latest").step == 2
    assert time.monotonic() - started >= 0.25


def test_rank_that_never_sees_the_checkpoint_fails_naming_rank_host_and_folder(tmp_path: Path) -> None:
    saved_run(tmp_path, [1, 2])
    choice = main_choice(tmp_path, "latest")
    shutil.rmtree(tmp_path / "checkpoint-2")
    with pytest.raises(TrainingCheckpointError) as err:
        rank_one(tmp_path, choice, visibility_timeout_s=0.2).resume("latest")
    message = str(err.value)
    assert "rank 1" in message and socket.gethostname() in message and "checkpoint-2" in message


def test_rank_raises_the_main_processs_resolution_error(tmp_path: Path) -> None:
    choice = main_choice(tmp_path, "checkpoint-9")
    assert choice[0] == "error"
    with pytest.raises(TrainingCheckpointError, match="checkpoint-9 does not exist"):
        rank_one(tmp_path, choice).resume("checkpoint-9")


def test_save_keeps_working_folders_of_a_run_whose_lock_was_forced(tmp_path: Path) -> None:
    forced_token = "0123456789ab"
    (tmp_path / ".vidctrl-run.lock").write_text(
        f'{{"token": "{forced_token}", "host": "gpu-node-17", "pid": 4242, "started": {time.time()}, '
        f'"heartbeat": {time.time()}, "command": "x", "what": "vidctrl train"}}'
    )
    live = tmp_path / f".checkpoint-5.tmp-{forced_token}-deadbeef"
    dead = tmp_path / ".checkpoint-4.tmp-ffffffffffff-deadbeef"
    legacy = tmp_path / ".checkpoint-3.tmp-deadbeef"
    for folder in (live, dead, legacy):
        folder.mkdir()
    with RunLock(tmp_path, force=True) as lock:
        manager(tmp_path, lock=lock).save(6, epoch=0, sampler_state={})
        assert live.is_dir() and not dead.exists() and not legacy.exists()
        assert (tmp_path / "checkpoint-6").is_dir()


def test_save_stops_when_another_run_took_the_lock_over(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        (tmp_path / ".vidctrl-run.lock").write_text(
            f'{{"token": "0123456789ab", "host": "gpu-node-17", "pid": 4242, "started": {time.time()}, '
            f'"heartbeat": {time.time()}, "command": "x", "what": "vidctrl train"}}'
        )
        with pytest.raises(TrainingCheckpointError, match="no longer owns"):
            manager(tmp_path, lock=lock).save(1, epoch=0, sampler_state={})
    assert not (tmp_path / "checkpoint-1").exists()


def test_a_refusal_of_the_chosen_checkpoint_reaches_every_rank_before_anything_loads(tmp_path: Path) -> None:
    from vidctrl.config.fields import ConfigError

    saved_run(tmp_path, [1, 2])
    sent: list[Any] = []
    seen: list[int] = []

    def refuse(state: dict[str, Any]) -> None:
        seen.append(state["step"])
        raise ConfigError("--use_lora: the checkpoint trained the full model")

    def broadcast(value: Any) -> Any:
        sent.append(value)
        return value

    with pytest.raises(ConfigError, match="--use_lora"):
        manager(tmp_path, broadcast=broadcast).resume("latest", check=refuse)
    assert seen == [2] and sent[0][0] == "refused"
    with pytest.raises(ConfigError, match="--use_lora"):
        rank_one(tmp_path, sent[0]).resume("latest", check=refuse)
    assert seen == [2]  # only the main process judges

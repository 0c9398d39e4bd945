"""One run owns its folder (`vidctrl.run_lock`): a second run is refused with the owner named, a
dead run's lock is taken over with a log line, and a forced takeover keeps the other run's files."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidctrl.run_lock import LOCK_NAME, FolderLockedError, LockOwner, RunLock, hold_folder


def write_lock(folder: Path, *, host: str, pid: int, heartbeat_age_s: float, token: str = "abcdef012345") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    owner = {"token": token, "host": host, "pid": pid, "started": now - 3600, "heartbeat": now - heartbeat_age_s,
             "command": "vidctrl train --output_dir x", "what": "vidctrl train"}
    (folder / LOCK_NAME).write_text(json.dumps(owner))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_file_names_owner_and_is_removed_on_release(tmp_path: Path) -> None:
    with RunLock(tmp_path / "out", what="vidctrl train") as lock:
        owner = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
        assert owner["pid"] > 0 and owner["host"] == socket.gethostname() and owner["token"] == lock.token
        assert owner["command"] and owner["heartbeat"] >= owner["started"]
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_second_run_is_refused_naming_host_pid_and_what_to_do(tmp_path: Path) -> None:
    with RunLock(tmp_path, what="vidctrl train"), pytest.raises(FolderLockedError) as err:
        RunLock(tmp_path, what="vidctrl train").acquire()
    message = str(err.value)
    assert socket.gethostname() in message and "pid" in message and "last heartbeat" in message
    assert "--output_dir" in message and "--force_output_dir_lock" in message


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = dead_pid()
    write_lock(tmp_path, host=socket.gethostname(), pid=pid, heartbeat_age_s=1)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as lock:
        assert LockOwner.read(tmp_path / LOCK_NAME).token == lock.token
    assert any("took over" in r.getMessage() and "no longer runs" in r.getMessage() for r in caplog.records)


def test_foreign_lock_with_old_heartbeat_is_taken_over_and_fresh_one_refused(tmp_path: Path) -> None:
    write_lock(tmp_path / "old", host="gpu-node-17", pid=4242, heartbeat_age_s=700)
    with RunLock(tmp_path / "old", stale_after_s=600) as lock:
        assert lock.owner.took_over[0]["host"] == "gpu-node-17" and not lock.owner.took_over[0]["forced"]
    write_lock(tmp_path / "fresh", host="gpu-node-17", pid=4242, heartbeat_age_s=5)
    with pytest.raises(FolderLockedError, match="gpu-node-17"):
        RunLock(tmp_path / "fresh", stale_after_s=600).acquire()


def test_force_takes_over_a_live_lock_and_keeps_that_runs_working_folders(tmp_path: Path) -> None:
    write_lock(tmp_path, host="gpu-node-17", pid=4242, heartbeat_age_s=5, token="0123456789ab")
    with RunLock(tmp_path, force=True) as lock:
        assert lock.owner.took_over[0]["forced"]
        assert not lock.may_remove("0123456789ab")  # that run may still be writing
        assert lock.may_remove(lock.token) and lock.may_remove("ffffffffffff") and lock.may_remove(None)


def test_unreadable_lock_file_counts_as_stale(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text('{"token": "ab')  # torn by a crash
    with RunLock(tmp_path) as lock:
        assert lock.owner.took_over


def test_heartbeat_refreshes_and_a_takeover_is_noticed(tmp_path: Path) -> None:
    with RunLock(tmp_path, stale_after_s=0.4) as lock:
        first = LockOwner.read(tmp_path / LOCK_NAME).heartbeat
        time.sleep(0.35)
        assert LockOwner.read(tmp_path / LOCK_NAME).heartbeat > first
        write_lock(tmp_path, host="gpu-node-17", pid=4242, heartbeat_age_s=0, token="0123456789ab")
        with pytest.raises(FolderLockedError, match="no longer owns"):
            lock.check()
    # the other run's lock is not removed on release
    assert LockOwner.read(tmp_path / LOCK_NAME).token == "0123456789ab"


def test_every_process_raises_the_main_processs_refusal(tmp_path: Path) -> None:
    write_lock(tmp_path, host="gpu-node-17", pid=4242, heartbeat_age_s=1)
    refusal: list = []

    def main_broadcast(value):  # the main process: remember what it sends
        refusal.append(value)
        return value

    with pytest.raises(FolderLockedError), hold_folder(tmp_path, is_main_process=True, what="t",
                                                       broadcast=main_broadcast):
        pass
    # another rank receives the same refusal and raises it without touching the lock
    with pytest.raises(FolderLockedError, match="gpu-node-17"), hold_folder(
        tmp_path, is_main_process=False, what="t", broadcast=lambda _: refusal[0]
    ):
        pass


def test_cache_and_prepare_refuse_a_folder_owned_by_a_live_run(tmp_path: Path) -> None:
    from vidctrl.prepare.config import PrepareConfig
    from vidctrl.prepare.pipeline import prepare_dataset

    (tmp_path / "raw").mkdir()
    write_lock(tmp_path / "data", host="gpu-node-17", pid=4242, heartbeat_age_s=1)
    config = PrepareConfig(videos=tmp_path / "raw", out=tmp_path / "data", caption="a person")
    with pytest.raises(FolderLockedError, match="--out"):
        prepare_dataset(config, progress=False)


def test_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(FolderLockedError, match=f"output_dir {blocker / 'out'} cannot be created"):
        RunLock(blocker / "out").acquire()


def test_cache_refuses_a_cache_folder_owned_by_a_live_run(tmp_path: Path) -> None:
    from vidctrl.cache.build import build_cache
    from vidctrl.config.train import parse_train_config

    config = parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--output_dir", str(tmp_path / "out"),
                                 "--pretrained_model_name_or_path", str(tmp_path / "no-model")])
    write_lock(tmp_path / "out" / "cache", host="gpu-node-17", pid=4242, heartbeat_age_s=1)
    # refused before the model or the data is touched (neither exists)
    with pytest.raises(FolderLockedError, match=r"gpu-node-17.*--cache_dir"):
        build_cache(config)


def test_a_folder_the_lock_created_is_removed_when_nothing_was_written(tmp_path: Path) -> None:
    with RunLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    with RunLock(tmp_path / "used"):
        (tmp_path / "used" / "metrics.jsonl").write_text("{}\n")
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["metrics.jsonl"]

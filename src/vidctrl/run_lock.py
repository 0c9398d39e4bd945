"""One run owns a folder: `output_dir` of `vidctrl train`, a cache folder, a `data prepare` output.

The main process creates ``FOLDER/.vidctrl-run.lock`` with ``O_CREAT | O_EXCL`` (atomic on every
filesystem, NFS included, unlike ``flock``, which many network filesystems do not honour). The file
names its owner (host, pid, start time, command line, a random token) and a heartbeat time that a
daemon thread refreshes. A second run into the same folder is refused before it loads anything,
with the owner named. A lock whose owner is gone (same host and the pid is dead, or a heartbeat
older than ``stale_after_s``) is taken over, and the log says whose it was and why; ``force`` takes
over a lock the rules cannot call stale (say, a run on a host whose clock is wrong), and says so.

The token names the run's own working files (checkpoint ``.tmp``/``.old``/``.del`` folders), so a
save removes only what its own run, or a run whose lock is gone, left behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from vidctrl.config.fields import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".vidctrl-run.lock"
DEFAULT_STALE_AFTER_S = 600.0
#: the heartbeat is refreshed at least this often (and 4 times per stale period when that is shorter)
HEARTBEAT_EVERY_S = 30.0


class FolderLockedError(ConfigError):
    """Another live run owns the folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, /proc/PID/stat field 22), so that a
    pid reused by an unrelated process is not mistaken for the lock's owner; None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    return True


@dataclass
class LockOwner:
    """What the lock file says about the run holding it."""

    token: str
    host: str
    pid: int
    started: float
    heartbeat: float
    command: str
    what: str
    pid_start: str | None = None
    took_over: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def current(cls, what: str, token: str | None = None) -> LockOwner:
        now = time.time()
        return cls(token=token or secrets.token_hex(6), host=socket.gethostname(), pid=os.getpid(), started=now,
                   heartbeat=now, command=shlex.join(sys.argv), what=what, pid_start=_process_start(os.getpid()))

    @classmethod
    def read(cls, path: Path) -> LockOwner | None:
        """The owner in `path`, or None when the file vanished or cannot be read as a lock (then it
        is treated as stale: a lock file is written whole in one call, so a torn one is from a crash)."""
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return cls(token="unreadable", host="?", pid=-1, started=0.0, heartbeat=0.0, command="?", what="?")

    def describe(self) -> str:
        return (f"{self.what} pid {self.pid} on host {self.host}, started {_when(self.started)}, last heartbeat "
                f"{_when(self.heartbeat)} ({_ago(self.heartbeat)}); command: {self.command}")

    def stale_reason(self, stale_after_s: float) -> str | None:
        """Why this owner is gone, or None while it may be alive."""
        if self.token == "unreadable":
            return "the lock file cannot be read (left by a crash while it was written)"
        if self.host == socket.gethostname() and not _pid_alive(self.pid, self.pid_start):
            return f"process {self.pid} no longer runs on this host"
        age = time.time() - self.heartbeat
        if age > stale_after_s:
            return f"its last heartbeat is {age:.0f} s old (over the {stale_after_s:.0f} s of --output_dir_lock_timeout)"
        return None


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


def _ago(stamp: float) -> str:
    seconds = max(0.0, time.time() - stamp)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


class RunLock:
    """The lock of one folder, held by this process from :meth:`acquire` to :meth:`release`.

    Use it as a context manager; it is released on a normal end and on any exception (a kill -9
    leaves it, and the stale rules recover it). `lost` is set when another run took the lock over
    (this run's heartbeat stalled past the stale period): the owner of a folder checks it before
    writing and stops instead of mixing two runs' files.
    """

    def __init__(self, folder: str | Path, *, what: str = "vidctrl", stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 force: bool = False, flag_hint: str = "--output_dir", token: str | None = None) -> None:
        if not stale_after_s > 0:
            raise ConfigError(f"--output_dir_lock_timeout must be > 0 seconds, got {stale_after_s}")
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.stale_after_s = float(stale_after_s)
        self.force = force
        self.flag_hint = flag_hint
        self.owner = LockOwner.current(what, token)
        self.lost: str | None = None
        self._held = False
        self._created_folder = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.owner.token

    # ---- acquiring -------------------------------------------------------------------------

    def acquire(self) -> RunLock:
        try:
            return self._acquire()
        except OSError as err:
            name = self.flag_hint.lstrip("-")
            raise FolderLockedError(
                f"{name} {self.folder} cannot be created or written ({err.strerror or err}"
                f"{': ' + str(err.filename) if err.filename else ''}); pass a folder you can write to {self.flag_hint}"
            ) from err

    def _acquire(self) -> RunLock:
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(8):  # a lost race against another starting run is retried, then it is theirs
            if self._create():
                break
            current = LockOwner.read(self.path)
            if current is None:
                continue  # released between our attempt and the read
            reason = current.stale_reason(self.stale_after_s)
            if reason is None and not self.force:
                raise FolderLockedError(
                    f"{self.folder} is in use by another run: {current.describe()}. Wait for it to finish, "
                    f"use another {self.flag_hint}, or, if that run is dead, pass --force_output_dir_lock "
                    f"(a lock whose heartbeat is older than --output_dir_lock_timeout, "
                    f"{self.stale_after_s:.0f} s, is taken over by itself)"
                )
            if reason is None:
                reason = "--force_output_dir_lock was given (its owner may still be running)"
            if self._break(current):
                log.warning("took over the lock of %s from %s: %s", self.folder, current.describe(), reason)
                self.owner.took_over.append({"token": current.token, "host": current.host, "pid": current.pid,
                                             "reason": reason, "forced": reason.startswith("--force")})
                break
        else:
            raise FolderLockedError(f"could not take the lock {self.path}: other runs keep creating it; "
                                    f"is {self.folder} shared by several jobs starting at once?")
        self._held = True
        self._write()  # with the takeovers recorded
        self._thread = threading.Thread(target=self._beat, name="vidctrl-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(self.owner), indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _break(self, stale: LockOwner) -> bool:
        """Move the stale lock aside; False if another run moved or replaced it first."""
        aside = self.folder / f"{LOCK_NAME}.stale-{secrets.token_hex(4)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = LockOwner.read(aside)
        if moved is not None and moved.token != stale.token:
            # Between our read and the rename another run took the lock over: give it back.
            with suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return False if self.path.exists() else self._create()

    # ---- holding ---------------------------------------------------------------------------

    def _write(self) -> None:
        tmp = self.folder / f"{LOCK_NAME}.beat-{self.token}"
        tmp.write_text(json.dumps(asdict(self.owner), indent=1))
        os.replace(tmp, self.path)

    def check(self) -> None:
        """Raise when this run no longer owns the folder (another run took the lock over)."""
        if self.lost is None and self._held:
            current = LockOwner.read(self.path)
            if current is None or current.token != self.token:
                self.lost = (f"{current.describe()} took over the lock" if current else "the lock file was removed")
        if self.lost is not None:
            raise FolderLockedError(
                f"this run no longer owns {self.folder}: {self.lost}. It stops here so that two runs never "
                "write the same folder; resume from the newest checkpoint once the other run is done"
            )

    def _beat(self) -> None:
        every = min(HEARTBEAT_EVERY_S, self.stale_after_s / 4)
        while not self._stop.wait(every):
            current = LockOwner.read(self.path)
            if current is None or current.token != self.token:
                self.lost = f"{current.describe()} took over the lock" if current else "the lock file was removed"
                log.error("%s: this run no longer owns %s", self.lost, self.folder)
                return
            self.owner.heartbeat = time.time()
            try:
                self._write()
            except OSError as err:  # a full disk must not kill training; the next beat retries
                log.warning("could not refresh the heartbeat of %s: %s", self.path, err)

    # ---- releasing -------------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held and self.lost is None:
            current = LockOwner.read(self.path)
            if current is not None and current.token == self.token:
                self.path.unlink(missing_ok=True)
            if self._created_folder:  # a run that stopped before writing anything leaves no trace
                with suppress(OSError):
                    self.folder.rmdir()  # only if empty
        self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # ---- working files ---------------------------------------------------------------------

    def may_remove(self, token: str | None) -> bool:
        """Whether working files named with `token` may be removed: this run's own, and those of any
        run whose lock is gone; not those of a run whose lock was forced from it (it may be alive)."""
        if token is None or token == self.token:
            return True
        return not any(entry["token"] == token and entry.get("forced") for entry in self.owner.took_over)


def main_process_value(value: Any) -> Any:
    """The main process's `value`, on every process of the launch (itself when there is one)."""
    from accelerate.state import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


@dataclass
class FolderHold:
    """A launch's hold on a folder: the lock (main process only) and its token (every process)."""

    lock: RunLock | None
    token: str


@contextmanager
def hold_folder(folder: str | Path, *, is_main_process: bool, what: str,
                stale_after_s: float = DEFAULT_STALE_AFTER_S, force: bool = False, flag_hint: str = "--output_dir",
                broadcast: Callable[[Any], Any] = main_process_value) -> Iterator[FolderHold]:
    """Hold `folder` for one launch: the main process takes the lock, every process learns the
    token, or every process raises the same :class:`FolderLockedError` (no rank goes on alone)."""
    lock: RunLock | None = None
    outcome: tuple[str, str] | None = None
    if is_main_process:
        try:
            lock = RunLock(folder, what=what, stale_after_s=stale_after_s, force=force, flag_hint=flag_hint).acquire()
            outcome = ("ok", lock.token)
        except FolderLockedError as err:
            outcome = ("error", str(err))
    kind, value = broadcast(outcome)
    if kind == "error":
        raise FolderLockedError(value)
    try:
        yield FolderHold(lock, value)
    finally:
        if lock is not None:
            lock.release()


__all__ = ["DEFAULT_STALE_AFTER_S", "LOCK_NAME", "FolderHold", "FolderLockedError", "LockOwner", "RunLock", "hold_folder", "main_process_value"]

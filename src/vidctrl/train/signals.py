"""Preemption: SIGTERM (SLURM, Kubernetes, the launcher) and SIGINT (Ctrl-C) end a run at a step
boundary with a checkpoint instead of killing it mid-step (`--save_on_signal`, on by default).

The handler only records the request; the training loop carries it through the per-step agreement
(`distributed.agree`), so every rank stops after the same optimizer step even when the signal
reached one rank only, or reached the ranks during different steps. A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# `accelerate launch` (torchrun) forwards the signal it received to every rank, which a terminal's
# Ctrl-C or SLURM has already signalled directly: a repeat this soon after the first is that echo,
# not a person or a scheduler insisting.
ECHO_WINDOW_S = 1.0


class TrainingStopped(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum


def _say(text: str) -> None:
    # os.write: the handler may interrupt the main thread inside a print or a logging call.
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


class StopRequest:
    """Installs the handlers for the duration of the training loop and remembers the first signal.

    Handlers are process-wide and can only be set from the main thread; elsewhere (training run in a
    worker thread) the run keeps Python's default behaviour and says so.
    """

    def __init__(self, *, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self._clock = clock
        self._first_at = 0.0
        self._pid = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> None:
        if not self.enabled or self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("--save_on_signal: training runs outside the main thread, where Python cannot catch "
                        "signals; SIGTERM/SIGINT will end it without a checkpoint")
            return
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before `install` (a no-op when none was installed)."""
        for signum, previous in self._previous.items():
            # None: the handler was set outside Python; the default is the nearest we can put back
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited the handler: the training process decides
        now = self._clock()
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first_at = signum, now
            _say(f"vidctrl: {name} received: finishing this optimizer step, then saving a checkpoint and "
                 f"exiting (send it again to exit at once without saving)\n")
            return
        if now - self._first_at < ECHO_WINDOW_S:
            return
        _say(f"vidctrl: second signal ({name}): exiting at once without saving\n")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

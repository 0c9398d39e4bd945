"""Suite-wide: one share of the cores per xdist worker; say which opt-in tests did not run
(see tests/opt_in.py)."""

from __future__ import annotations

import os

import pytest

from opt_in import OPT_INS, opted_in


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # torch takes every core per process by default: two workers would each spin two threads on
        # two cores. Subprocesses the tests launch set their own (mp_helpers: OMP_NUM_THREADS=1).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for variable, (value, what) in OPT_INS.items():
        if not opted_in(variable):
            terminalreporter.write_line(f"opt-in not run: {variable}={value}: {what}")

"""Suite-wide: say which opt-in tests did not run (see tests/opt_in.py)."""

from __future__ import annotations

import pytest

from opt_in import OPT_INS, opted_in


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for variable, (value, what) in OPT_INS.items():
        if not opted_in(variable):
            terminalreporter.write_line(f"opt-in not run: {variable}={value}: {what}")

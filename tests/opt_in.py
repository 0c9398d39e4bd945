"""Tests the default suite leaves out for time, each switched on by an environment variable.

They are not collected unless asked for (so they never show as skips that look like missing inputs),
and every run ends with a line per opt-in that was not asked for (tests/conftest.py), so nobody
takes them for run.
"""

from __future__ import annotations

import os

# variable -> (the value that switches it on, what it adds)
OPT_INS = {
    "VIDCTRL_TEST_DS_OFFLOAD": ("1", "ZeRO-3 with CPU offload follows one process (DeepSpeed compiles its "
                                     "CPU Adam in C++ on first use: 3.7 minutes on 2 cores)"),
}


def opted_in(variable: str) -> bool:
    value, _ = OPT_INS[variable]
    return os.environ.get(variable) == value

"""Suite-wide: the sample datasets every training test reads, written once per session (per xdist
worker); one share of the cores per worker; which opt-in tests did not run (see tests/opt_in.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from opt_in import OPT_INS, opted_in


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # torch takes every core per process by default: two workers would each spin two threads on
        # two cores. Subprocesses the tests launch set their own (mp_helpers: OMP_NUM_THREADS=1).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _shared_sample(tmp_path_factory: pytest.TempPathFactory, layout: str, videos: int) -> Iterator[Path]:
    """`vidctrl data sample` in one layout, shared by every test that reads it: a test that wrote into it
    would change what the tests after it read, so the session ends with an error if any file changed."""
    from vidctrl.cli import main

    root = tmp_path_factory.mktemp(f"sample-{layout}")
    assert main(["data", "sample", "--out", str(root), "--layout", layout, "--num_videos", str(videos),
                 "--num_images", "0"]) == 0
    before = _snapshot(root)
    yield root
    assert _snapshot(root) == before, f"a test wrote into the shared sample dataset {root}: copy it first"


@pytest.fixture(scope="session")
def videox_sample_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sample data in the VideoX-Fun layout (metadata.json), 4 videos with pose controls, no images."""
    yield from _shared_sample(tmp_path_factory, "videox", 4)


@pytest.fixture(scope="session")
def dynamictrl_sample_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sample data in DynamiCtrl's layout (videos/, poses/, video.txt, prompts.txt), 3 videos."""
    yield from _shared_sample(tmp_path_factory, "dynamictrl", 3)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for variable, (value, what) in OPT_INS.items():
        if not opted_in(variable):
            terminalreporter.write_line(f"opt-in not run: {variable}={value}: {what}")

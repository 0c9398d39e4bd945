"""The suite proves what it claims in any clone: no test reads beside the repository (the seed docs and
key lists ship under tests/fixtures), and no test skips for a missing input; only a test that needs
CUDA hardware may skip, and pytest's -ra prints its reason."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(p for p in TESTS.rglob("*.py") if p != Path(__file__).resolve())
OUTSIDE = re.compile(r"shared/(seeds|reference)|VIDCTRL_REFERENCE_CHECKPOINTS|parents\[[3-9]\]|/work/")
SKIP = re.compile(r"pytest\.skip\(|importorskip\(|mark\.skipif|mark\.skip\b|mark\.xfail")


def offending_lines(pattern: re.Pattern[str], allow: str | None = None) -> list[str]:
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if pattern.search(line) and not (allow and allow in line.lower()):
                found.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    return found


def test_no_test_reads_beside_the_repository() -> None:
    assert offending_lines(OUTSIDE) == []


def test_only_cuda_gated_tests_skip() -> None:
    assert offending_lines(SKIP, allow="cuda") == []


def test_the_patterns_see_a_skip_and_a_path_beside_the_repository() -> None:
    assert SKIP.search('    pytest.skip("shared/seeds is not beside this checkout")')
    assert SKIP.search('pytestmark = pytest.mark.skipif(not SEED_DOC.exists(), reason="...")')
    assert OUTSIDE.search('SHARED = Path(__file__).resolve().parents[3] / "shared"')
    assert not SKIP.search("def test_non_strict_load_skips_unexpected_keys():")

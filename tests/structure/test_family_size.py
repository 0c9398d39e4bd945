"""A family file says only what its backbone does differently from the shared seams (families/base.py,
families/encoding.py, families/cogvideox.py); code every family could use, or that is not the family's
difference (validation inputs, condition builders, sampling loops), lives in its own module. A family
file growing past 350 lines is the sign that such code has crept back in."""

from __future__ import annotations

from pathlib import Path

FAMILIES = Path(__file__).resolve().parents[2] / "src" / "vidctrl" / "families"
MAX_LINES = 350


def test_no_family_file_exceeds_350_lines() -> None:
    files = sorted(FAMILIES.glob("*.py"))
    assert files, f"no family modules found under {FAMILIES}"
    sizes = {path.name: len(path.read_text().splitlines()) for path in files}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, (
        f"family files over {MAX_LINES} lines: {too_long}; move what is not the family's own difference into "
        "a shared seam or a module beside it (e.g. families/<family>_validation.py)"
    )

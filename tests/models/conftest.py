from pathlib import Path

import pytest

from vidctrl.models.wan import PRESETS, write_tiny_wan


@pytest.fixture(scope="session")
def tiny_wan_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every tiny preset written once in each layout, with the same seed."""
    root = tmp_path_factory.mktemp("tiny_wan")
    return {
        (preset, layout): write_tiny_wan(root / f"{preset}-{layout}", preset, layout=layout, seed=0)
        for preset in PRESETS
        for layout in ("diffusers", "original")
    }

"""Fixtures for multi-process tests: the session's sample dataset (tests/conftest.py) and one tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from mp_helpers import make_model


@pytest.fixture(scope="session")
def sample_data(videox_sample_data: Path) -> Path:
    return videox_sample_data


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("mp-model") / "tiny")

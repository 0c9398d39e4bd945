"""Fixtures for multi-process tests: one sample dataset and one tiny model per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from mp_helpers import make_data, make_model


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("mp-data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("mp-model") / "tiny")

"""The released checkpoints' key and shape lists, as they ship with the tests (tests/fixtures/checkpoints).

Each list names every parameter of one released file (or of its diffusers-layout conversion) with its
shape and the model's config: facts, no weights. They are gzipped JSON; `INDEX` lists them all with
their key counts. A missing list is an error, never a skip: the tests that read one prove that the
loader takes the real file, and a clone without the lists would otherwise pass having proved nothing.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

CHECKPOINTS = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


@cache
def _load(name: str) -> dict[str, Any] | list[dict[str, Any]]:
    path = CHECKPOINTS / f"{name}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"reference key list {path} is missing: it ships with the repository (tests/fixtures/checkpoints); "
            "restore it from git"
        )
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return json.load(file)


def reference_json(name: str) -> dict[str, Any]:
    """One key/shape list by its name in INDEX, e.g. ``"Wan2.1_VAE__diffusers"``: ``keys`` maps each
    parameter key to its shape, ``config`` holds the released model's hyperparameters.

    A deep copy, so that a test editing it (adding a stray key) cannot leak into another test."""
    return json.loads(json.dumps(_load(name)))


def reference_index() -> list[dict[str, Any]]:
    """INDEX.json: one entry per list (``name``, ``layout``, ``class``, ``num_keys``, ``num_params``)."""
    index = _load("INDEX")
    assert isinstance(index, list)
    return [dict(entry) for entry in index]

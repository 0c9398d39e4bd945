"""Validation references and control frames are decoded by the same image rules as training samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vidctrl.train.validation import load_control, load_reference


def _grey16(path: Path, grey: int, size: tuple[int, int] = (8, 8)) -> Path:
    Image.fromarray(np.full(size, grey * 257, dtype=np.uint16)).save(path)
    return path


def test_validation_reference_16bit_png_keeps_its_grey(tmp_path: Path) -> None:
    reference = load_reference(_grey16(tmp_path / "ref.png", 70), 4, 4)
    assert reference.shape == (3, 4, 4)
    assert (reference == 70).all()


def test_validation_control_folder_of_16bit_pngs_keeps_its_greys(tmp_path: Path) -> None:
    folder = tmp_path / "control"
    folder.mkdir()
    for index, grey in enumerate((30, 70)):
        _grey16(folder / f"{index}.png", grey)
    control, _ = load_control(folder, 8, 8, 2)
    assert [int(frame.float().mean()) for frame in control] == [30, 70]


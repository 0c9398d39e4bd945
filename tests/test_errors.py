"""A user's mistake ends in one `error:` line, also when a DataLoader worker process met it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vidctrl.data.records import DataError, Problem
from vidctrl.errors import UserError, format_user_error

PROBLEM = Problem(message="cannot be loaded: moov atom not found", file="videos/a.mp4", sample=3,
                  fix="re-encode it", code="load_failed")


class BadSample(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DataError(PROBLEM)


def test_an_error_raised_in_a_dataloader_worker_reads_as_the_workers_own_one_line_message() -> None:
    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(BadSample(), num_workers=1)))
    assert "Traceback" in str(caught.value)  # what torch hands back: the worker's formatted traceback
    text = format_user_error(caught.value)
    assert text == str(DataError(PROBLEM)) and text.startswith("error: sample 3 (videos/a.mp4)")
    assert "Traceback" not in text and "worker" not in text


def test_a_user_error_in_this_process_is_printed_as_it_is() -> None:
    assert format_user_error(DataError(PROBLEM)) == str(DataError(PROBLEM))
    assert format_user_error(UserError("no prefix yet")) == "error: no prefix yet"

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


def test_every_error_a_user_can_cause_is_a_user_error() -> None:
    from vidctrl.cache.store import CacheError
    from vidctrl.config.fields import ConfigError
    from vidctrl.data.camera import CameraFileError
    from vidctrl.data.video import MediaError
    from vidctrl.models.cogvideox.components import CogVideoXModelFilesError
    from vidctrl.models.loading import CheckpointError, StrictLoadError
    from vidctrl.models.wan.components import WanModelFilesError
    from vidctrl.prepare import PrepareError
    from vidctrl.train.checkpoint import TrainingCheckpointError
    from vidctrl.train.export import ExportError
    from vidctrl.train.optim import TrainableModulesError
    from vidctrl.train.sharded_state import ShardedStateError
    from vidctrl.train.trainer import TrainingError

    classes = [CacheError, ConfigError, CameraFileError, MediaError, CogVideoXModelFilesError, CheckpointError,
               StrictLoadError, WanModelFilesError, PrepareError, TrainingCheckpointError, ExportError,
               TrainableModulesError, ShardedStateError, TrainingError, DataError]
    assert [c.__name__ for c in classes if not issubclass(c, UserError)] == []
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)  # callers still catch these


def test_a_missing_dataset_is_refused_before_the_model_loads(tmp_path, capsys) -> None:
    from vidctrl.cli import main

    # A model folder that does not exist either: the dataset is named first, before anything loads.
    code = main(["train", "--preset", "wan2.1-fun-control-v1.0", "--train_data_meta", str(tmp_path / "meta.json"),
                 "--pretrained_model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and err.strip().splitlines()[-1] == (
        f"error: --train_data_meta {tmp_path / 'meta.json'} does not exist; pass the dataset's metadata file or folder")


def test_a_bug_in_vidctrl_keeps_its_traceback(monkeypatch) -> None:
    """Only user errors are turned into one line: anything else propagates (the interpreter prints its
    traceback and exits 1), so that bugs are reported with where they happened."""
    import vidctrl.commands.model as model_command
    from vidctrl.cli import main

    def broken(args) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(model_command, "run_tiny", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["model", "tiny", "--preset", "dynamictrl", "--out", "x"])

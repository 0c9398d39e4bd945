"""An output_dir that cannot be written, or a disk too full for the checkpoints: a clear error before
training starts, or at save time with the previous checkpoint intact; never a traceback, exit 0 or a
half-written checkpoint."""

from __future__ import annotations

import errno
import json
from collections import namedtuple
from pathlib import Path

import pytest
from mp_helpers import train_args

from vidctrl.cli import main
from vidctrl.train import checkpoint as checkpoint_module


def short_run(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *train_args(model, data, out, "--train_batch_size", "1", "--max_train_steps", "4",
                                 "--checkpointing_steps", "2", *extra)]


def test_output_dir_that_cannot_be_created_fails_before_training(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(short_run(fault_model, fault_data, blocker / "out")) == 1
    err = capsys.readouterr().err
    assert f"output_dir {blocker / 'out'} cannot be created" in err and "Traceback" not in err


def test_too_little_free_space_fails_before_training_with_the_estimate(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 4096, 4096))
    out = tmp_path / "out"
    assert main(short_run(fault_model, fault_data, out)) == 1
    err = capsys.readouterr().err
    assert f"output_dir {out} has 4.0 KiB free and checkpoints need about" in err
    assert not (out / "metrics.jsonl").exists()


def test_disk_full_at_save_time_names_the_step_and_keeps_the_previous_checkpoint(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save, saves = checkpoint_module._torch_save, []

    def full_disk(obj: object, path: Path) -> None:
        saves.append(path)
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module, "_torch_save", full_disk)
    out = tmp_path / "out"
    assert main(short_run(fault_model, fault_data, out)) == 1
    err = capsys.readouterr().err
    assert "error: step 4: could not write checkpoint" in err and "No space left on device" in err
    assert f"the newest good checkpoint is {out / 'checkpoint-2'}, untouched" in err
    assert [p.name for p in out.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))] == ["checkpoint-2"]
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2

    monkeypatch.setattr(checkpoint_module, "_torch_save", real_save)  # space freed: resume from step 2
    assert main(short_run(fault_model, fault_data, out, "--resume_from_checkpoint", "latest")) == 0
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()

"""Mistakes met once training has started still end in one `error:` line and a non-zero exit status:
a resume whose batch size breaks the data order, a --trainable_modules that selects nothing, a bad
sample met inside a DataLoader worker process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mp_helpers import train_args

from vidctrl.cli import main


def error_lines(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    err = capsys.readouterr().err
    return err, [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_resume_with_another_batch_size_names_the_sampler_file_and_the_change(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = train_args(fault_model, fault_data, out, "--max_train_steps", "2", "--checkpointing_steps", "2")
    assert main(["train", *base, "--train_batch_size", "1"]) == 0
    capsys.readouterr()
    code = main(["train", *base, "--train_batch_size", "2", "--max_train_steps", "4",
                 "--resume_from_checkpoint", "latest"])
    err, errors = error_lines(capsys)
    assert code != 0 and "Traceback" not in err and len(errors) == 1
    assert str(out / "checkpoint-2" / "sampler_state.json") in errors[0] and "batch_size 1 -> 2" in errors[0]


@pytest.mark.slow
def test_trainable_modules_that_select_nothing_end_in_one_error_line(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", *train_args(fault_model, fault_data, tmp_path / "out", "--max_train_steps", "1",
                                      "--trainable_modules", "no_such_block")])
    err, errors = error_lines(capsys)
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "no_such_block" in errors[0]


@pytest.mark.slow
def test_a_sample_that_fails_in_a_dataloader_worker_is_one_error_line_naming_it(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)
    entries = json.loads((data / "metadata.json").read_text())
    # Probed fine (the metadata says its size), decoded in a worker: a control file that is not a video.
    control = data / entries[0]["control_file_path"]
    control.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 4000)
    code = main(["train", *train_args(fault_model, data, tmp_path / "out", "--max_train_steps", "6",
                                      "--bad_sample_policy", "strict", "--dataloader_num_workers", "1",
                                      "--train_batch_size", "1")])
    err, errors = error_lines(capsys)
    assert code != 0 and "Traceback" not in err and len(errors) == 1, err[-3000:]
    assert control.name in errors[0] and "DataLoader worker" not in errors[0]


@pytest.mark.slow
def test_resume_latest_with_a_damaged_newest_checkpoint_stops_or_falls_back_when_asked(
    fault_model: Path, fault_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = train_args(fault_model, fault_data, out, "--train_batch_size", "1", "--checkpointing_steps", "1")
    assert main(["train", *base, "--max_train_steps", "2"]) == 0
    optimizer = out / "checkpoint-2" / "optimizer.pth"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    capsys.readouterr()
    resume = ["train", *base, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
    assert main(resume) != 0
    err, errors = error_lines(capsys)
    assert "Traceback" not in err and len(errors) == 1
    assert "checkpoint-2/optimizer.pth" in errors[0] and "--resume_from_checkpoint checkpoint-1" in errors[0]

    assert main([*resume, "--resume_fallback"]) == 0
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3

"""A dataset with corrupt samples mixed in -- truncated, empty, a control of another length, a
missing file: lenient mode trains and reports how many it left out; strict mode stops at the first,
naming its file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mp_helpers import train_args

from vidctrl.cli import main
from vidctrl.data.video import probe, read_frames, write_video


@pytest.fixture
def corrupt_data(fault_data: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "data"
    shutil.copytree(fault_data, root)
    entries = json.loads((root / "metadata.json").read_text())
    videos = [root / e["file_path"] for e in entries]
    truncated, empty, missing = videos[1], videos[2], videos[3]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    missing.unlink()
    control = root / entries[4]["control_file_path"]
    frames = read_frames(control, np.arange(probe(control).frames // 2))
    write_video(control, list(frames), probe(control).fps)
    return root, {"truncated": truncated.name, "empty": empty.name, "missing": missing.name,
                  "short control": control.name}


def run(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *train_args(model, data, out, "--train_batch_size", "1", "--max_train_steps", "6",
                                 "--checkpointing_steps", "6", *extra)]


def test_lenient_mode_trains_on_the_good_samples_and_reports_the_count(
    fault_model: Path, corrupt_data: tuple[Path, dict[str, str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    data, _ = corrupt_data
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(run(fault_model, data, out)) == 0
    assert (out / "checkpoint-6" / "trainer_state.json").is_file()
    summary = [r.getMessage() for r in caplog.records if "left out" in r.getMessage() and "skipped" in r.getMessage()]
    assert summary, caplog.text
    left_out = int(summary[-1].split("left out ")[1].split()[0])
    skipped = int(summary[-1].split("skipped ")[1].split()[0])
    assert left_out == 4 or (left_out == 3 and skipped >= 1), summary[-1]


def test_strict_mode_stops_at_the_first_bad_sample_naming_its_file(
    fault_model: Path, corrupt_data: tuple[Path, dict[str, str]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, names = corrupt_data
    assert main(run(fault_model, data, tmp_path / "out", "--bad_sample_policy", "strict")) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and names["truncated"] in error[0], error  # the first bad sample, by name
    assert not (tmp_path / "out" / "metrics.jsonl").exists()

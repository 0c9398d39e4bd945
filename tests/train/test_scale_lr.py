"""`--scale_lr`: the optimizer trains at learning_rate x accumulation x per-process batch x processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vidctrl.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

from mp_helpers import make_data, make_model, train_args


@pytest.mark.slow
def test_scale_lr_run_trains_at_the_scaled_rate(tmp_path: Path) -> None:
    data, model, out = make_data(tmp_path / "data", num_videos=2), make_model(tmp_path / "model"), tmp_path / "out"
    assert main(["train", *train_args(model, data, out, "--max_train_steps", "1", "--scale_lr",
                                      "--train_batch_size", "2", "--gradient_accumulation_steps", "1")]) == 0
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [pytest.approx(2e-3)]  # 1e-3 (mp_helpers) x 1 x 2 x 1 process

"""Resuming with changed flags: every changed field is logged with what it does, optimizer
hyper-parameters follow the flags (not the checkpoint), and changes the checkpoint cannot honour stop
the run naming the field."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from diffusers.optimization import get_scheduler

from vidctrl.cli import main
from vidctrl.config.fields import ConfigError
from vidctrl.train.resume_changes import (
    APPLIED,
    BREAKS_ORDER,
    REFUSED,
    apply_hyperparameters,
    config_changes,
    optimizer_hyperparameters,
    report_changes,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

from mp_helpers import make_data, make_model, train_args


def _schedule(lr: float, beta2: float = 0.999) -> tuple[torch.nn.Linear, torch.optim.AdamW, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, beta2))
    return model, optimizer, get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=2, num_training_steps=10)


def _train_steps(model: torch.nn.Linear, optimizer: torch.optim.Optimizer, scheduler: object, steps: int) -> None:
    for _ in range(steps):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()  # type: ignore[attr-defined]
        optimizer.zero_grad()


def test_unchanged_flags_give_back_exactly_the_restored_optimizer_and_schedule() -> None:
    model, optimizer, scheduler = _schedule(1e-3)
    _train_steps(model, optimizer, scheduler, 3)
    saved_optimizer, saved_schedule = optimizer.state_dict(), scheduler.state_dict()  # type: ignore[attr-defined]
    _, resumed_optimizer, resumed_schedule = _schedule(1e-3)
    fresh = optimizer_hyperparameters(resumed_optimizer)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed_schedule.load_state_dict(saved_schedule)  # type: ignore[attr-defined]
    apply_hyperparameters(resumed_optimizer, resumed_schedule, fresh)
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_schedule.get_last_lr() == scheduler.get_last_lr()  # type: ignore[attr-defined]


def test_a_new_learning_rate_and_beta_reach_the_restored_optimizer_at_the_resumed_schedule_position() -> None:
    model, optimizer, scheduler = _schedule(1e-3)
    _train_steps(model, optimizer, scheduler, 3)
    lr_at_3 = optimizer.param_groups[0]["lr"]
    _, resumed_optimizer, resumed_schedule = _schedule(1e-2, beta2=0.95)
    fresh = optimizer_hyperparameters(resumed_optimizer)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed_schedule.load_state_dict(scheduler.state_dict())  # type: ignore[attr-defined]
    apply_hyperparameters(resumed_optimizer, resumed_schedule, fresh)
    group = resumed_optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(lr_at_3 * 10) and group["betas"] == (0.9, 0.95)
    assert resumed_schedule.base_lrs == [1e-2]  # type: ignore[attr-defined]
    assert resumed_optimizer.state_dict()["state"]  # the Adam moments were kept


def test_each_changed_field_is_classified_applied_refused_or_order_breaking() -> None:
    saved = {"optim": {"learning_rate": 1e-4, "gradient_accumulation_steps": 1},
             "data": {"train_batch_size": 1, "dataloader_num_workers": 0},
             "model": {"use_lora": False}, "run": {"resume_from_checkpoint": None}, "preset": "p"}
    current = {"optim": {"learning_rate": 1e-2, "gradient_accumulation_steps": 2},
               "data": {"train_batch_size": 2, "dataloader_num_workers": 4},
               "model": {"use_lora": True}, "run": {"resume_from_checkpoint": "latest"}, "preset": "p"}
    effects = {c.name: c.effect for c in config_changes(saved, current)}
    assert effects == {"learning_rate": APPLIED, "gradient_accumulation_steps": BREAKS_ORDER,
                       "train_batch_size": BREAKS_ORDER, "dataloader_num_workers": APPLIED, "use_lora": REFUSED}
    with pytest.raises(ConfigError, match="use_lora False -> True from step 7: refused"):
        report_changes(saved, current, step=7)


@pytest.fixture(scope="module")
def trained_two_steps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("resume-changes")
    data, model, out = make_data(root / "data"), make_model(root / "model"), root / "out"
    assert main(["train", *train_args(model, data, out, "--max_train_steps", "2", "--checkpointing_steps", "2")]) == 0
    return data, model, out


@pytest.mark.slow
def test_resume_with_a_new_learning_rate_trains_at_it_and_logs_the_change(
    trained_two_steps: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, model, first = trained_two_steps
    out = tmp_path / "out"
    shutil.copytree(first, out)
    caplog.set_level(logging.INFO)
    assert main(["train", *train_args(model, data, out, "--max_train_steps", "3", "--checkpointing_steps", "3",
                                      "--resume_from_checkpoint", "latest", "--learning_rate", "1e-2",
                                      "--adam_beta2", "0.99")]) == 0
    assert "learning_rate 0.001 -> 0.01 from step 2: applied" in caplog.text
    assert "adam_beta2 0.999 -> 0.99 from step 2: applied" in caplog.text
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [1e-3, 1e-3, 1e-2]
    groups = torch.load(out / "checkpoint-3" / "optimizer.pth", weights_only=True)["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.99)] and [g["initial_lr"] for g in groups] == [1e-2]


@pytest.mark.slow
def test_resume_with_another_trained_set_is_refused_naming_the_field(
    trained_two_steps: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, first = trained_two_steps
    out = tmp_path / "out"
    shutil.copytree(first, out)
    assert main(["train", *train_args(model, data, out, "--max_train_steps", "3", "--resume_from_checkpoint",
                                      "latest", "--use_lora")]) != 0
    assert "use_lora False -> True from step 2: refused" in capsys.readouterr().err

"""Training checkpoints: round trip, atomicity under crashes, rotation, resume resolution, errors."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.optimization import get_scheduler
from torch import nn

from vidctrl.train.checkpoint import (
    ENGINE_STATE_DIR,
    MARKER_FILE,
    CheckpointManager,
    TrainingCheckpointError,
    WeightsIO,
    diffusers_weights,
    estimate_checkpoint_bytes,
    load_safetensors_into,
    lora_weights,
    preflight,
    read_trainer_state,
)
from vidctrl.train.rng import rank_generator


class TinyTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    @register_to_config
    def __init__(self, in_features: int = 4, out_features: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_features, hidden)
        self.proj_out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(torch.tanh(self.proj_in(x)))


class Run:
    """A tiny training run whose every step draws from every RNG stream the engine would."""

    def __init__(self, init_seed: int) -> None:
        torch.manual_seed(init_seed)
        self.model = TinyTransformer()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.scheduler = get_scheduler(
            "cosine", optimizer=self.optimizer, num_warmup_steps=2, num_training_steps=20
        )
        self.noise = rank_generator(init_seed, 0, "noise")
        self.sampler = {"epoch": 0, "position": 0, "seed": 5}

    def step(self) -> float:
        x = torch.randn(2, 4, generator=self.noise)
        # global streams too, as augmentations and dropout use them
        scale = random.random() + float(np.random.rand()) + float(torch.rand(()))
        loss = ((self.model(x * scale) - 1.0) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.sampler["position"] += 2
        return loss.item()

    def manager(self, output_dir: Path, **kwargs: Any) -> CheckpointManager:
        return CheckpointManager(
            output_dir,
            weights={"transformer": diffusers_weights(self.model)},
            stateful={"optimizer": self.optimizer, "lr_scheduler": self.scheduler},
            generators={"noise": self.noise},
            config_hash="abc123",
            **kwargs,
        )


def tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def draws(noise: torch.Generator) -> list[Any]:
    return [
        random.random(),
        np.random.rand(2).tolist(),
        torch.rand(2).tolist(),
        torch.rand(2, generator=noise).tolist(),
    ]


def bytes_writer(payload: bytes = b"w" * 64) -> WeightsIO:
    def save(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(payload)

    return WeightsIO(save=save, load=lambda folder: None)


def simple_manager(output_dir: Path, **kwargs: Any) -> CheckpointManager:
    return CheckpointManager(output_dir, weights={"transformer": bytes_writer()}, **kwargs)


def steps(manager: CheckpointManager) -> list[int]:
    return [info.step for info in manager.checkpoints()]


def hidden(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Round trip


def test_resume_restores_weights_optimizer_scheduler_rng_and_sampler_bit_identically(tmp_path: Path) -> None:
    saved = Run(init_seed=0)
    for _ in range(3):
        saved.step()
    path = saved.manager(tmp_path).save(3, epoch=1, sampler_state=saved.sampler)
    model_at_save = {k: v.clone() for k, v in saved.model.state_dict().items()}
    optimizer_at_save = copy.deepcopy(saved.optimizer.state_dict())
    scheduler_at_save = saved.scheduler.state_dict()
    sampler_at_save = dict(saved.sampler)
    draws_after_save = draws(saved.noise)
    losses_after_save = [saved.step() for _ in range(3)]

    resumed = Run(init_seed=99)  # different init, optimizer empty, RNGs elsewhere
    random.seed(123)
    state = resumed.manager(tmp_path).resume("latest")

    assert state is not None and state.path == path
    assert (state.step, state.epoch, state.sampler_state) == (3, 1, sampler_at_save)
    assert tensors_equal(resumed.model.state_dict(), model_at_save)
    assert tensors_equal(resumed.optimizer.state_dict(), optimizer_at_save)
    assert resumed.optimizer.state_dict()["state"]  # Adam moments, not an empty state
    assert resumed.scheduler.state_dict() == scheduler_at_save
    assert draws(resumed.noise) == draws_after_save
    resumed.sampler = dict(state.sampler_state)
    assert [resumed.step() for _ in range(3)] == losses_after_save
    assert tensors_equal(resumed.model.state_dict(), saved.model.state_dict())


def test_checkpoint_layout_is_diffusers_and_human_readable(tmp_path: Path) -> None:
    run = Run(init_seed=0)
    run.step()
    path = run.manager(tmp_path).save(1, epoch=0, sampler_state=run.sampler, extra={"samples_seen": 2})

    assert sorted(p.name for p in path.iterdir()) == [
        "lr_scheduler.pth",
        "optimizer.pth",
        "rng_state_0.pth",
        "sampler_state.json",
        MARKER_FILE,
        "transformer",
    ]
    assert sorted(p.name for p in (path / "transformer").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    reloaded = TinyTransformer.from_pretrained(path / "transformer")
    assert tensors_equal(reloaded.state_dict(), run.model.state_dict())
    trainer_state = json.loads((path / MARKER_FILE).read_text())
    assert trainer_state["step"] == 1 and trainer_state["epoch"] == 0
    assert trainer_state["config_hash"] == "abc123"
    assert trainer_state["vidctrl_version"]
    assert trainer_state["extra"] == {"samples_seen": 2}
    assert json.loads((path / "sampler_state.json").read_text()) == run.sampler


def test_lora_adapter_round_trip(tmp_path: Path) -> None:
    from peft import LoraConfig

    def lora_model(seed: int) -> TinyTransformer:
        torch.manual_seed(0)
        model = TinyTransformer()
        model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["proj_in", "proj_out"]))
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_()
        return model

    saved, loaded = lora_model(1), lora_model(2)
    path = CheckpointManager(tmp_path, weights={"transformer": lora_weights(saved)}).save(
        1, epoch=0, sampler_state={}
    )
    assert sorted(p.name for p in (path / "transformer").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    CheckpointManager(tmp_path, weights={"transformer": lora_weights(loaded)}).load(path)
    assert tensors_equal(loaded.state_dict(), saved.state_dict())


def test_sharded_weights_load_and_mismatched_model_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyTransformer(in_features=64, hidden=64)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="10KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    other = TinyTransformer(in_features=64, hidden=64)
    load_safetensors_into(other, tmp_path / "sharded")
    assert tensors_equal(other.state_dict(), model.state_dict())

    wider = TinyTransformer(in_features=64, hidden=64, out_features=5)
    with pytest.raises(TrainingCheckpointError, match=r"proj_out.weight \(3, 64\) vs model \(5, 64\)"):
        load_safetensors_into(wider, tmp_path / "sharded")
    extended = TinyTransformer(in_features=64, hidden=64)
    extended.proj_extra = nn.Linear(1, 1)
    with pytest.raises(
        TrainingCheckpointError, match=r"sharded does not match the model: missing 2 .*proj_extra"
    ):
        load_safetensors_into(extended, tmp_path / "sharded")


def test_loading_refuses_pickled_objects(tmp_path: Path) -> None:
    run = Run(init_seed=0)
    path = run.manager(tmp_path).save(1, epoch=0, sampler_state=run.sampler)
    torch.save({"state": {}, "param_groups": [], "payload": Run}, path / "optimizer.pth")
    with pytest.raises(TrainingCheckpointError, match=r"optimizer.pth .*weights_only"):
        Run(init_seed=0).manager(tmp_path).load(path)


def test_sampler_state_must_be_json_data(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sampler_state must be JSON"):
        simple_manager(tmp_path).save(1, epoch=0, sampler_state={"order": (1, 2)})
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Atomicity


def test_failure_mid_save_keeps_previous_checkpoint_latest_and_removes_partial(tmp_path: Path) -> None:
    simple_manager(tmp_path).save(1, epoch=0, sampler_state={})

    def half_then_disk_full(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "weights.bin"))

    failing = CheckpointManager(
        tmp_path, weights={"transformer": WeightsIO(half_then_disk_full, lambda f: None)}
    )
    with pytest.raises(TrainingCheckpointError, match=r"checkpoint-2 .*No space left on device") as caught:
        failing.save(2, epoch=0, sampler_state={})

    assert "checkpoint-1" in str(caught.value)  # names the good one left behind
    assert failing.latest() == tmp_path / "checkpoint-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_torch_save_failure_is_reported_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(init_seed=0)
    run.manager(tmp_path).save(1, epoch=0, sampler_state=run.sampler)

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(TrainingCheckpointError, match=r"checkpoint-2 .*file write failed"):
        run.manager(tmp_path).save(2, epoch=0, sampler_state=run.sampler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from vidctrl.train.checkpoint import CheckpointManager, WeightsIO

    out = Path(sys.argv[1])

    def good(folder):
        (folder / "weights.bin").write_bytes(b"good")

    def killed(folder):
        with open(folder / "weights.bin", "wb") as handle:
            handle.write(b"half")
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    CheckpointManager(out, weights={"transformer": WeightsIO(good, lambda f: None)}).save(
        1, epoch=0, sampler_state={})
    CheckpointManager(out, weights={"transformer": WeightsIO(killed, lambda f: None)}).save(
        2, epoch=0, sampler_state={})
    """
)


def test_kill_9_mid_save_leaves_latest_intact_and_next_save_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    manager = simple_manager(tmp_path)
    assert manager.latest() == tmp_path / "checkpoint-1"
    assert steps(manager) == [1]
    assert [name.split(".tmp-")[0] for name in hidden(tmp_path)] == [".checkpoint-2"]
    assert (tmp_path / "checkpoint-1" / "transformer" / "weights.bin").read_bytes() == b"good"

    manager.save(2, epoch=0, sampler_state={})
    assert steps(manager) == [1, 2]
    assert hidden(tmp_path) == []


def test_leftover_folders_are_ignored_and_cleaned(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path)
    manager.save(1, epoch=0, sampler_state={})
    # A complete-looking temp folder, a rotation interrupted mid-delete, and a marker-less folder.
    shutil.copytree(tmp_path / "checkpoint-1", tmp_path / ".checkpoint-9.tmp-0123abcd")
    shutil.copytree(tmp_path / "checkpoint-1", tmp_path / ".checkpoint-0.del-0123abcd")
    shutil.copytree(tmp_path / "checkpoint-1", tmp_path / "checkpoint-8")
    (tmp_path / "checkpoint-8" / MARKER_FILE).unlink()

    assert manager.latest() == tmp_path / "checkpoint-1"
    manager.save(2, epoch=0, sampler_state={})
    assert hidden(tmp_path) == []
    assert manager.latest() == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-8").is_dir()  # not ours to delete


def test_checkpoint_moved_aside_by_an_interrupted_replace_is_restored(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path)
    manager.save(3, epoch=0, sampler_state={"position": 3})
    os.replace(tmp_path / "checkpoint-3", tmp_path / ".checkpoint-3.old-0123abcd")
    assert manager.latest() is None

    manager.save(4, epoch=0, sampler_state={})
    assert steps(manager) == [3, 4]
    assert json.loads((tmp_path / "checkpoint-3" / "sampler_state.json").read_text()) == {"position": 3}


def test_saving_an_existing_step_again_replaces_it(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path)
    manager.save(2, epoch=0, sampler_state={"position": 1})
    manager.save(2, epoch=0, sampler_state={"position": 2})
    assert json.loads((tmp_path / "checkpoint-2" / "sampler_state.json").read_text()) == {"position": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


# --------------------------------------------------------------------------------------------
# Rotation


def test_rotation_keeps_the_newest_n(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path, total_limit=2)
    for step in (10, 20, 30, 40):
        manager.save(step, epoch=0, sampler_state={})
    assert steps(manager) == [30, 40]
    assert hidden(tmp_path) == []


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    simple_manager(tmp_path).save(50, epoch=0, sampler_state={})
    simple_manager(tmp_path).save(60, epoch=0, sampler_state={})
    manager = simple_manager(tmp_path, total_limit=2)
    manager.save(20, epoch=0, sampler_state={})  # a re-run resumed from before step 50
    assert steps(manager) == [20, 60]

    simple_manager(tmp_path, total_limit=1).save(30, epoch=0, sampler_state={})
    assert steps(manager) == [30]


def test_rotation_deletes_only_after_the_new_checkpoint_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = simple_manager(tmp_path, total_limit=1)
    manager.save(1, epoch=0, sampler_state={})
    removed = []
    original_remove = CheckpointManager._remove

    def checked_remove(self: CheckpointManager, path: Path, step: int) -> None:
        assert (tmp_path / "checkpoint-2" / MARKER_FILE).is_file()
        removed.append(step)
        original_remove(self, path, step)

    monkeypatch.setattr(CheckpointManager, "_remove", checked_remove)
    manager.save(2, epoch=0, sampler_state={})
    assert removed == [1] and steps(manager) == [2]

    def disk_full(folder: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    failing = CheckpointManager(
        tmp_path, total_limit=1, weights={"transformer": WeightsIO(disk_full, lambda f: None)}
    )
    with pytest.raises(TrainingCheckpointError):
        failing.save(3, epoch=0, sampler_state={})
    assert removed == [1] and steps(manager) == [2]


def test_total_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        CheckpointManager(tmp_path, total_limit=0)


# --------------------------------------------------------------------------------------------
# Resume resolution


def test_latest_without_checkpoints_starts_fresh_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = simple_manager(tmp_path / "never-created")
    assert manager.latest() is None
    with caplog.at_level(logging.INFO, logger="vidctrl.train.checkpoint"):
        assert manager.resume("latest") is None
    assert "starting a new run" in caplog.text
    assert manager.resume(None) is None


def test_resume_from_a_missing_path_names_it(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path)
    missing = tmp_path / "checkpoint-77"
    with pytest.raises(TrainingCheckpointError, match=str(missing)):
        manager.resolve(missing)


def test_resume_accepts_a_name_inside_output_dir_and_rejects_incomplete_folders(tmp_path: Path) -> None:
    manager = simple_manager(tmp_path)
    manager.save(5, epoch=0, sampler_state={})
    assert manager.resolve("checkpoint-5") == tmp_path / "checkpoint-5"
    (tmp_path / "partial").mkdir()
    with pytest.raises(TrainingCheckpointError, match="partial is not a complete"):
        manager.resolve(tmp_path / "partial")


# --------------------------------------------------------------------------------------------
# Unwritable output, disk space


def test_unwritable_output_dir_fails_clearly_even_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = simple_manager(tmp_path)
    manager.save(1, epoch=0, sampler_state={})
    real_mkdir = Path.mkdir

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name.startswith(".checkpoint-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(TrainingCheckpointError, match=rf"checkpoint-2 in {tmp_path}: Permission denied"):
        manager.save(2, epoch=0, sampler_state={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_failed_rename_leaves_previous_checkpoint_and_no_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = simple_manager(tmp_path)
    manager.save(1, epoch=0, sampler_state={})

    def read_only_fs(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(src))

    monkeypatch.setattr(os, "replace", read_only_fs)
    with pytest.raises(TrainingCheckpointError, match=r"checkpoint-2 .*Read-only file system"):
        manager.save(2, epoch=0, sampler_state={})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert read_trainer_state(tmp_path / "checkpoint-1")["step"] == 1


def test_preflight_reports_low_space_with_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert preflight(tmp_path / "out", estimated_bytes=1) > 0
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 99, 1024))  # type: ignore[attr-defined]
    with pytest.raises(
        TrainingCheckpointError, match=r"out has 1.0 KiB free and checkpoints need about 3.0 GiB"
    ):
        preflight(tmp_path / "out", estimated_bytes=3 * 1024**3)


def test_preflight_reports_an_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(**kwargs: Any) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("vidctrl.train.checkpoint.tempfile.mkstemp", denied)
    with pytest.raises(TrainingCheckpointError, match=r"output_dir .*out is not writable: Permission denied"):
        preflight(tmp_path / "out", estimated_bytes=1)


def test_estimate_counts_weights_and_adam_moments() -> None:
    params = [torch.zeros(10, dtype=torch.bfloat16), torch.zeros(5)]
    assert estimate_checkpoint_bytes(params) == 10 * (2 + 8) + 5 * (4 + 8)


# --------------------------------------------------------------------------------------------
# Several processes


def run_ranks(world: int, work: Any) -> list[Any]:
    barrier = threading.Barrier(world)
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = work(rank, barrier.wait)
        except BaseException as err:
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_each_rank_saves_and_restores_its_own_generators(tmp_path: Path) -> None:
    world = 2
    gens = [rank_generator(0, rank, "noise") for rank in range(world)]
    for rank, gen in enumerate(gens):
        torch.rand(rank + 1, generator=gen)

    def manager(rank: int, barrier: Any, generator: torch.Generator) -> CheckpointManager:
        return CheckpointManager(
            tmp_path,
            weights={"transformer": bytes_writer()} if rank == 0 else {},
            generators={"noise": generator},
            is_main_process=rank == 0,
            process_index=rank,
            num_processes=world,
            barrier=barrier,
        )

    run_ranks(
        world, lambda rank, barrier: manager(rank, barrier, gens[rank]).save(4, epoch=0, sampler_state={})
    )
    path = tmp_path / "checkpoint-4"
    assert sorted(p.name for p in path.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert read_trainer_state(path)["num_processes"] == world
    expected = [torch.rand(3, generator=gen).tolist() for gen in gens]

    fresh = [torch.Generator() for _ in range(world)]
    run_ranks(world, lambda rank, barrier: manager(rank, barrier, fresh[rank]).load(path))
    assert [torch.rand(3, generator=gen).tolist() for gen in fresh] == expected

    with pytest.raises(TrainingCheckpointError, match=r"rng_state_2.pth.*same number of processes"):
        CheckpointManager(tmp_path, process_index=2, num_processes=3).load(path)


# --------------------------------------------------------------------------------------------
# With accelerate


@pytest.fixture
def new_accelerator() -> Iterator[Any]:
    """A factory of Accelerators; each stands for a fresh process (its own prepared objects)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def make() -> Any:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        return Accelerator(cpu=True)

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_accelerate_save_state_works_as_the_state_writer(tmp_path: Path, new_accelerator: Any) -> None:
    def prepared(seed: int) -> tuple[Run, CheckpointManager]:
        accelerator = new_accelerator()
        run = Run(init_seed=seed)
        run.model, run.optimizer, run.scheduler = accelerator.prepare(run.model, run.optimizer, run.scheduler)
        return run, CheckpointManager(
            tmp_path,
            weights={"transformer": diffusers_weights(accelerator.unwrap_model(run.model))},
            generators={"noise": run.noise},
            state_writer=accelerator.save_state,
            state_reader=accelerator.load_state,
            is_main_process=accelerator.is_main_process,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            barrier=accelerator.wait_for_everyone,
        )

    saved, manager = prepared(0)
    for _ in range(2):
        saved.step()
    path = manager.save(2, epoch=0, sampler_state=saved.sampler)
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin"} <= {
        p.name for p in (path / ENGINE_STATE_DIR).iterdir()
    }
    after_save = draws(saved.noise)
    optimizer_at_save = copy.deepcopy(saved.optimizer.state_dict())

    resumed, resumed_manager = prepared(1)
    resumed_manager.load(path)
    assert tensors_equal(resumed.optimizer.state_dict(), optimizer_at_save)
    assert resumed.scheduler.state_dict() == saved.scheduler.state_dict()
    assert draws(resumed.noise) == after_save


# --------------------------------------------------------------------------------------------
# Damaged checkpoints: every problem names the file and what is wrong


def saved_run(output_dir: Path, *steps_to_save: int) -> Run:
    run = Run(init_seed=0)
    manager = run.manager(output_dir)
    for step in steps_to_save:
        run.step()
        manager.save(step, epoch=0, sampler_state=run.sampler)
    return run


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("relative", "damage", "expected"),
    [
        ("transformer/diffusion_pytorch_model.safetensors", "truncate", "truncated"),
        ("optimizer.pth", "truncate", "not a complete torch file"),
        ("rng_state_0.pth", "truncate", "not a complete torch file"),
        (MARKER_FILE, "garble", "not valid JSON"),
        ("sampler_state.json", "garble", "not valid JSON"),
    ],
)
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path: Path, relative: str, damage: str,
                                                         expected: str) -> None:
    saved_run(tmp_path, 2)
    target = tmp_path / "checkpoint-2" / relative
    if damage == "truncate":
        truncate(target)
    else:
        target.write_text('{"step": 2, "epo')
    with pytest.raises(TrainingCheckpointError) as caught:
        Run(init_seed=1).manager(tmp_path).resume("checkpoint-2")
    message = str(caught.value)
    assert relative in message and expected in message


@pytest.mark.parametrize("missing", ["optimizer.pth", "sampler_state.json", "rng_state_0.pth"])
def test_resume_from_a_checkpoint_without_a_state_file_names_it(tmp_path: Path, missing: str) -> None:
    saved_run(tmp_path, 2)
    (tmp_path / "checkpoint-2" / missing).unlink()
    with pytest.raises(TrainingCheckpointError, match=rf"checkpoint-2 has no {missing}"):
        Run(init_seed=1).manager(tmp_path).resume("checkpoint-2")


def test_loading_a_truncated_safetensors_names_the_file_not_a_bare_safetensor_error(tmp_path: Path) -> None:
    saved_run(tmp_path, 2)
    weights = tmp_path / "checkpoint-2" / "transformer" / "diffusion_pytorch_model.safetensors"
    truncate(weights, keep=0.9)
    with pytest.raises(TrainingCheckpointError, match=rf"{weights} is damaged: .*truncated"):
        load_safetensors_into(TinyTransformer(), weights.parent)


def test_trainer_state_without_a_step_is_named(tmp_path: Path) -> None:
    saved_run(tmp_path, 2)
    (tmp_path / "checkpoint-2" / MARKER_FILE).write_text('{"format": 1}')
    with pytest.raises(TrainingCheckpointError, match=rf"{MARKER_FILE} has no valid step"):
        Run(init_seed=1).manager(tmp_path).resume("checkpoint-2")


def test_latest_with_a_damaged_newest_checkpoint_offers_the_previous_one(tmp_path: Path) -> None:
    saved_run(tmp_path, 2, 4)
    truncate(tmp_path / "checkpoint-4" / "optimizer.pth")
    with pytest.raises(TrainingCheckpointError) as caught:
        Run(init_seed=1).manager(tmp_path).resume("latest")
    message = str(caught.value)
    assert "newest checkpoint is damaged" in message and "checkpoint-4/optimizer.pth" in message
    assert "--resume_from_checkpoint checkpoint-2" in message and "--resume_fallback" in message


def test_resume_fallback_resumes_from_the_previous_sound_checkpoint_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = saved_run(tmp_path, 2)
    model_at_2 = copy.deepcopy(run.model.state_dict())
    run.step()
    run.manager(tmp_path).save(4, epoch=0, sampler_state=run.sampler)
    truncate(tmp_path / "checkpoint-4" / "transformer" / "diffusion_pytorch_model.safetensors")
    resumed = Run(init_seed=1)
    with caplog.at_level(logging.WARNING, logger="vidctrl.train.checkpoint"):
        state = resumed.manager(tmp_path).resume("latest", fallback=True)
    assert state is not None and state.step == 2
    assert tensors_equal(resumed.model.state_dict(), model_at_2)
    assert "skipping damaged checkpoint-4" in caplog.text


def test_latest_when_every_checkpoint_is_damaged_says_so(tmp_path: Path) -> None:
    saved_run(tmp_path, 2)
    truncate(tmp_path / "checkpoint-2" / "lr_scheduler.pth")
    with pytest.raises(TrainingCheckpointError, match=r"every checkpoint .* is damaged"):
        Run(init_seed=1).manager(tmp_path).resume("latest", fallback=True)

"""Training checkpoints that a crash cannot corrupt, that rotate, and that resume exactly.

Layout of ``output_dir/checkpoint-{step}/``::

    transformer/diffusion_pytorch_model.safetensors   one folder per trainable model (WeightsIO)
    transformer/config.json
    optimizer.pth, lr_scheduler.pth, scaler.pth        one file per stateful object (main process)
    sampler_state.json                                 data order position (main process)
    rng_state_{rank}.pth                               every RNG stream of that rank
    engine_state/                                      only with a state_writer (accelerate save_state)
    trainer_state.json                                 written last: the completeness marker

Everything is written into ``.checkpoint-{step}.tmp-<hex>/``, fsynced, and renamed into place,
so a folder named ``checkpoint-{step}`` is always whole. Folders left by a killed save are
hidden (dot-prefixed), ignored by :meth:`CheckpointManager.latest`, and removed by the next save.
Rotation deletes old checkpoints only after the new one is in place, renaming each aside before
removing it so that a half-deleted folder never looks complete.

Every ``.pth`` file is read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.

All ranks call :meth:`CheckpointManager.save` and :meth:`CheckpointManager.load` together; the
output folder must be shared by all ranks (one filesystem), and only one run may write into it:
`vidctrl train` holds the folder's :class:`~vidctrl.run_lock.RunLock`, whose token names the run's
working folders (``.checkpoint-{step}.tmp-{token}-<hex>``), so that a save never removes the working
folder of another live run. On resume the main process picks the checkpoint and every rank loads
that one (:meth:`CheckpointManager.resume`), whatever its own view of a lagging shared filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import vidctrl
from vidctrl.config.fields import ConfigError
from vidctrl.errors import UserError
from vidctrl.integrity import safetensors_damage
from vidctrl.train.rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from vidctrl.run_lock import RunLock

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MARKER_FILE = "trainer_state.json"
SAMPLER_FILE = "sampler_state.json"
ENGINE_STATE_DIR = "engine_state"
RESUME_LATEST = "latest"

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Hidden working folders: .tmp (being written), .old (a same-step checkpoint being replaced),
# .del (being rotated away).
# The run token (a RunLock's) comes first where the run has one: ``.tmp-{token}-{random}``.
_WORKING_RE = re.compile(r"^\.checkpoint-(\d+)\.(tmp|old|del)-(?:([0-9a-f]+)-)?[0-9a-f]+$")
#: how long a rank waits to see the checkpoint the main process chose (a lagging shared filesystem)
RESUME_VISIBILITY_TIMEOUT_S = 120.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_RESERVED_NAMES = {MARKER_FILE, SAMPLER_FILE, ENGINE_STATE_DIR}


class TrainingCheckpointError(UserError, RuntimeError):
    """A training checkpoint could not be written, found or read."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


@dataclass(frozen=True)
class WeightsIO:
    """How one trainable model is written into, and read back from, its checkpoint subfolder.

    ``save`` runs on the main process only; ``load`` runs on every rank and must load in place
    (the optimizer holds references to the existing parameters).
    """

    save: Callable[[Path], None]
    load: Callable[[Path], None]


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


@dataclass(frozen=True)
class ResumeState:
    """What the engine needs after :meth:`CheckpointManager.load` has restored the objects."""

    path: Path
    step: int
    epoch: int
    sampler_state: dict[str, Any]
    trainer_state: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Weights


DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def diffusers_weights(model: nn.Module, weights_name: str = DIFFUSERS_WEIGHTS_NAME) -> WeightsIO:
    """Full weights of a diffusers ``ModelMixin`` (pass the unwrapped model) in its own layout:
    ``save_pretrained(safe_serialization=True)``, so the folder also loads with ``from_pretrained``."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained; pass a diffusers ModelMixin")

    def save(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]

    def load(folder: Path) -> None:
        load_safetensors_into(model, folder, weights_name)

    return WeightsIO(save=save, load=load)


def lora_weights(model: nn.Module, adapter_name: str = "default") -> WeightsIO:
    """The peft adapter ``adapter_name`` of ``model`` (a ``PeftModel`` or a diffusers model with
    ``add_adapter``): ``adapter_model.safetensors`` plus ``adapter_config.json``."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(model, adapter_name=adapter_name)
        save_file(
            {key: value.detach().contiguous().cpu() for key, value in state.items()},
            str(folder / PEFT_WEIGHTS_FILE),
            metadata={"format": "pt"},
        )
        model.peft_config[adapter_name].save_pretrained(str(folder))  # type: ignore[index,union-attr]

    def load(folder: Path) -> None:
        file = folder / PEFT_WEIGHTS_FILE
        if not file.is_file():
            raise TrainingCheckpointError(f"{folder} has no {PEFT_WEIGHTS_FILE}")
        state = _load_safetensors(file)
        expected = set(get_peft_model_state_dict(model, adapter_name=adapter_name))
        _check_keys(file, expected, set(state))
        set_peft_model_state_dict(model, state, adapter_name=adapter_name)

    return WeightsIO(save=save, load=load)


def load_safetensors_into(
    module: nn.Module, folder: Path, weights_name: str = DIFFUSERS_WEIGHTS_NAME
) -> None:
    """Copy ``{weights_name}.safetensors`` (or its sharded ``.index.json`` form) into ``module`` in
    place, strictly: every key present, none extra. Shards are read one at a time, so a large
    model is never held twice in host memory."""
    folder = Path(folder)
    single = folder / f"{weights_name}.safetensors"
    index = folder / f"{weights_name}.safetensors.index.json"
    if single.is_file():
        shards = [single]
    elif index.is_file():
        weight_map: dict[str, str] = _read_json(index, "the shard index")["weight_map"]
        shards = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise TrainingCheckpointError(f"{folder} has neither {single.name} nor {index.name}")
    shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    seen: set[str] = set()
    for shard in shards:
        state = _load_safetensors(shard)
        _check_keys(shard, set(shapes), set(state), require_all=False)
        wrong = [
            f"{key} {tuple(value.shape)} vs model {shapes[key]}"
            for key, value in state.items()
            if tuple(value.shape) != shapes[key]
        ]
        if wrong:
            raise TrainingCheckpointError(
                f"{shard} does not match the model: shapes differ for {'; '.join(wrong)}"
            )
        module.load_state_dict(state, strict=False)
        seen.update(state)
    _check_keys(folder, set(shapes), seen)


def _check_keys(source: Path, expected: set[str], found: set[str], *, require_all: bool = True) -> None:
    missing = sorted(expected - found) if require_all else []
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})"
            )
        raise TrainingCheckpointError(f"{source} does not match the model: {'; '.join(parts)}")


# --------------------------------------------------------------------------------------------
# Pre-flight


def estimate_checkpoint_bytes(parameters: Iterable[torch.Tensor], optimizer_slots: int = 2) -> int:
    """Rough size of one checkpoint: the trainable parameters at their dtype plus ``optimizer_slots``
    fp32 values per parameter (2 for Adam/AdamW). Pass only the trainable parameters."""
    total = 0
    for param in parameters:
        total += param.numel() * (param.element_size() + 4 * optimizer_slots)
    return total


def preflight(output_dir: str | Path, estimated_bytes: int) -> int:
    """Check, before training starts, that ``output_dir`` can be created and written and has at
    least ``estimated_bytes`` free; return the free bytes.

    With rotation, a new checkpoint is complete before the oldest is deleted, so pass
    ``(checkpoints_total_limit + 1) * estimate_checkpoint_bytes(...)``.
    """
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingCheckpointError(f"output_dir {path} cannot be created: {err.strerror or err}") from err
    try:
        # A real write, not os.access: access() ignores read-only mounts and answers yes to root.
        fd, probe = tempfile.mkstemp(prefix=".vidctrl-write-probe-", dir=path)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise TrainingCheckpointError(f"output_dir {path} is not writable: {err.strerror or err}") from err
    free = shutil.disk_usage(path).free
    if free < estimated_bytes:
        raise TrainingCheckpointError(
            f"output_dir {path} has {_human_bytes(free)} free and checkpoints need about "
            f"{_human_bytes(estimated_bytes)}. Free space there, lower checkpoints_total_limit, or choose "
            "another output_dir."
        )
    return free


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Manager


class CheckpointManager:
    """Saves and resumes training checkpoints in ``output_dir``.

    The objects to checkpoint are registered once: ``weights`` (subfolder -> :class:`WeightsIO`),
    ``stateful`` (name -> object with ``state_dict``/``load_state_dict``: optimizer, LR scheduler,
    grad scaler), ``generators`` (name -> ``torch.Generator`` the engine owns). ``state_writer``
    and ``state_reader``, if given, are called on every rank with ``<checkpoint>/engine_state``:
    this is where ``accelerator.save_state`` / ``accelerator.load_state`` go when the optimizer is
    sharded (DeepSpeed, FSDP) and cannot be saved from the main process alone.

    ``WeightsIO.save`` runs on the main process only, so under ZeRO-3 the engine gathers the full
    state dict on every rank first (``accelerator.get_state_dict`` is collective) and hands it to
    the writer. Do not use accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True)``
    with this class: naming and rotation are done here.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        total_limit: int | None = None,
        weights: Mapping[str, WeightsIO] | None = None,
        stateful: Mapping[str, Stateful] | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
        state_writer: Callable[[Path], None] | None = None,
        state_reader: Callable[[Path], None] | None = None,
        is_main_process: bool = True,
        process_index: int = 0,
        num_processes: int = 1,
        barrier: Callable[[], None] | None = None,
        config_hash: str | None = None,
        broadcast: Callable[[Any], Any] | None = None,
        lock: RunLock | None = None,
        run_token: str | None = None,
        visibility_timeout_s: float = RESUME_VISIBILITY_TIMEOUT_S,
    ) -> None:
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1 or unset, got {total_limit}")
        if (state_writer is None) != (state_reader is None):
            raise ValueError("state_writer and state_reader go together: pass both or neither")
        self.weights = dict(weights or {})
        self.stateful = dict(stateful or {})
        for name in [*self.weights, *self.stateful]:
            if not _NAME_RE.match(name) or name in _RESERVED_NAMES or name.startswith("rng_state"):
                raise ValueError(f"{name!r} cannot name a checkpoint entry")
        overlap = set(self.weights) & {f"{name}.pth" for name in self.stateful}
        if overlap:
            raise ValueError(f"checkpoint entry names collide: {sorted(overlap)}")
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit
        self.generators = dict(generators or {})
        self.state_writer = state_writer
        self.state_reader = state_reader
        self.is_main_process = is_main_process
        self.process_index = process_index
        self.num_processes = num_processes
        self._barrier = barrier or (lambda: None)
        self.config_hash = config_hash
        # `broadcast(value)` returns the main process's value on every rank (identity for one process).
        self._broadcast = broadcast or (lambda value: value)
        self.lock = lock  # the main process's hold on output_dir, checked before every save
        self.run_token = run_token or (lock.token if lock is not None else None)
        self.visibility_timeout_s = visibility_timeout_s

    # ---- finding ---------------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints in ``output_dir``, oldest step first."""
        if not self.output_dir.is_dir():
            return []
        found = []
        for entry in self.output_dir.iterdir():
            match = _CHECKPOINT_RE.match(entry.name)
            if match and entry.is_dir() and is_complete(entry):
                found.append(CheckpointInfo(step=int(match.group(1)), path=entry))
        return sorted(found, key=lambda info: info.step)

    def latest(self) -> Path | None:
        """The complete checkpoint with the highest step, or None."""
        found = self.checkpoints()
        return found[-1].path if found else None

    def resolve(self, resume_from_checkpoint: str | Path | None, *, fallback: bool = False) -> Path | None:
        """The checkpoint to resume from: ``None`` -> fresh start; ``"latest"`` -> the newest
        complete checkpoint, or a fresh start (logged) when there is none; otherwise a path,
        taken as given or, as the seeds allow, as a name inside ``output_dir``.

        A checkpoint with a damaged file (see :func:`find_damage`) is refused naming the file; for
        ``latest`` the error offers the previous sound checkpoint, and ``fallback`` (the
        ``--resume_fallback`` flag) resumes from it with a warning instead."""
        if resume_from_checkpoint is None or str(resume_from_checkpoint) == "":
            return None
        if str(resume_from_checkpoint) == RESUME_LATEST:
            return self._latest_sound(fallback)
        given = Path(resume_from_checkpoint).expanduser()
        candidates = [given] if given.is_absolute() else [given, self.output_dir / given]
        for path in candidates:
            if path.is_dir():
                if not is_complete(path):
                    raise TrainingCheckpointError(
                        f"resume_from_checkpoint {path} is not a complete vidctrl checkpoint (no {MARKER_FILE}); "
                        "it may be from an interrupted save or another trainer"
                    )
                damage = find_damage(path)
                if damage:
                    raise TrainingCheckpointError(
                        f"resume_from_checkpoint {path} is damaged: {damage}. Resume from an earlier checkpoint"
                    )
                return path
        raise TrainingCheckpointError(
            f"resume_from_checkpoint {resume_from_checkpoint} does not exist "
            f"(looked at {', '.join(str(path) for path in candidates)})"
        )

    def resume(self, resume_from_checkpoint: str | Path | None, *, fallback: bool = False,
               check: Callable[[dict[str, Any]], None] | None = None) -> ResumeState | None:
        """:meth:`resolve` then :meth:`load`; None for a fresh start. Call on every rank together.

        The main process resolves (``latest`` included) and every rank loads the checkpoint it
        chose: on a shared filesystem with lag, another rank's own listing may not show the newest
        checkpoint yet, and two ranks must never resume two steps. `check`, given the chosen
        checkpoint's trainer state, may refuse it (`ConfigError`) before anything loads; every rank
        then raises the main process's refusal.
        """
        choice: tuple[str, Any] | None = None
        if self.is_main_process:
            try:
                path = self.resolve(resume_from_checkpoint, fallback=fallback)
                choice = ("none", None) if path is None else ("path", (str(path), _step_of(path)))
                if path is not None and check is not None:
                    check(read_trainer_state(path))
            except TrainingCheckpointError as err:
                choice = ("error", str(err))
            except ConfigError as err:
                choice = ("refused", str(err))
        kind, value = self._broadcast(choice)
        if kind == "error":
            raise TrainingCheckpointError(value)
        if kind == "refused":
            raise ConfigError(value)
        if kind == "none":
            return None
        path_text, step = value
        path = Path(path_text)
        if not self.is_main_process:
            self._wait_until_visible(path, step)
        return self.load(path)

    def _wait_until_visible(self, path: Path, step: int) -> None:
        """Wait (bounded) until this rank sees `path` complete and at `step`."""
        deadline = time.monotonic() + self.visibility_timeout_s
        while True:
            complete = path.is_dir() and is_complete(path)
            seen = _step_of(path) if complete else None
            if complete and seen == step:
                return
            if time.monotonic() >= deadline:
                what = "does not exist" if not path.exists() else (
                    "is incomplete" if seen is None else f"holds step {seen}")
                raise TrainingCheckpointError(
                    f"rank {self.process_index} on host {socket.gethostname()}: the main process resumes from {path} "
                    f"(step {step}), which this rank's view of the filesystem {what} after "
                    f"{self.visibility_timeout_s:.0f} s. Every rank must see the same output_dir: check that it is "
                    "one shared folder, mounted on every machine"
                )
            time.sleep(min(1.0, self.visibility_timeout_s / 20))

    def _latest_sound(self, fallback: bool) -> Path | None:
        """The newest complete checkpoint, checked for damaged files; see :meth:`resolve`."""
        found = self.checkpoints()
        if not found:
            logger.info("resume_from_checkpoint latest: no checkpoint in %s, starting a new run", self.output_dir)
            return None
        damaged: list[str] = []
        for info in reversed(found):
            damage = find_damage(info.path)
            if damage is None:
                if damaged and not fallback:
                    raise TrainingCheckpointError(
                        f"resume_from_checkpoint latest: the newest checkpoint is damaged ({'; '.join(damaged)}). "
                        f"The previous complete one is {info.path}: resume with --resume_from_checkpoint "
                        f"{info.path.name}, or pass --resume_fallback to fall back to it automatically"
                    )
                if damaged:
                    logger.warning("resume_from_checkpoint latest: skipping damaged %s; resuming from %s "
                                   "(--resume_fallback)", "; ".join(damaged), info.path)
                return info.path
            damaged.append(f"{info.path.name}: {damage}")
        raise TrainingCheckpointError(
            f"resume_from_checkpoint latest: every checkpoint in {self.output_dir} is damaged ({'; '.join(damaged)}); "
            "start a new run in another --output_dir, or remove them"
        )

    # ---- saving ----------------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        epoch: int,
        sampler_state: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``checkpoint-{step}`` atomically, then rotate. Every rank calls this together.

        ``sampler_state`` and ``extra`` must be JSON data (they are stored human-readable).
        On failure the temporary folder is removed, the previous checkpoints are untouched, and
        :class:`TrainingCheckpointError` names the folder.
        """
        sampler_state = _json_data(sampler_state, "sampler_state")
        extra = _json_data(extra or {}, "extra")
        final = self.output_dir / f"checkpoint-{step}"

        self._barrier()
        # The main process picks the random name; the other ranks find it after the barrier.
        tmp = self.output_dir / f".checkpoint-{step}.tmp-{self._working_suffix()}"
        if self.is_main_process:
            if self.lock is not None:
                try:
                    self.lock.check()
                except Exception as err:
                    raise TrainingCheckpointError(f"not saving checkpoint-{step}: {err}") from err
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self._clean_working_folders()
                tmp.mkdir()
                if self.state_writer is not None:
                    (tmp / ENGINE_STATE_DIR).mkdir()
            except OSError as err:
                self._discard(tmp)
                raise self._save_error(final, err) from err
        self._barrier()
        if not self.is_main_process:
            tmp = self._find_tmp(step)

        try:
            self._write_contents(tmp, sampler_state)
            _fsync_tree(tmp)
        except BaseException as err:
            self._discard(tmp)
            if isinstance(err, Exception):
                raise self._save_error(final, err) from err
            raise
        self._barrier()

        if self.is_main_process:
            try:
                _write_json(tmp / MARKER_FILE, self._trainer_state(step, epoch, extra))
                _fsync_dir(tmp)
                self._publish(tmp, final)
            except BaseException as err:
                self._discard(tmp)
                if isinstance(err, Exception):
                    raise self._save_error(final, err) from err
                raise
            logger.info("saved checkpoint %s", final)
            self._rotate(keep=final)
        self._barrier()
        return final

    def _write_contents(self, tmp: Path, sampler_state: dict[str, Any]) -> None:
        if self.state_writer is not None:
            # Collective under DeepSpeed/FSDP: every rank, before anything only main does.
            self.state_writer(tmp / ENGINE_STATE_DIR)
        if self.is_main_process:
            for subfolder, io in self.weights.items():
                (tmp / subfolder).mkdir()
                io.save(tmp / subfolder)
            for name, obj in self.stateful.items():
                _torch_save(obj.state_dict(), tmp / f"{name}.pth")
            _write_json(tmp / SAMPLER_FILE, sampler_state)
        _torch_save(capture_rng_state(self.generators), tmp / f"rng_state_{self.process_index}.pth")

    def _trainer_state(self, step: int, epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": epoch,
            "config_hash": self.config_hash,
            "vidctrl_version": vidctrl.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_processes": self.num_processes,
            "weights": sorted(self.weights),
            "stateful": sorted(self.stateful),
            "generators": sorted(self.generators),
            "engine_state": self.state_writer is not None,
            "extra": extra,
        }

    def _working_suffix(self) -> str:
        random = secrets.token_hex(4)
        return f"{self.run_token}-{random}" if self.run_token else random

    def _find_tmp(self, step: int) -> Path:
        pattern = f".checkpoint-{step}.tmp-{self.run_token}-*" if self.run_token else f".checkpoint-{step}.tmp-*"
        found = sorted(self.output_dir.glob(pattern))
        if len(found) != 1:
            raise TrainingCheckpointError(
                f"rank {self.process_index}: expected one temporary folder .checkpoint-{step}.tmp-* in "
                f"{self.output_dir} after the main process created it, found {len(found)}; all ranks must "
                "share output_dir and only one run may write into it"
            )
        return found[0]

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``. A directory rename cannot replace a non-empty directory, so
        an existing same-step checkpoint (a re-run from an earlier step) is moved aside first and
        deleted after; if a crash falls between the two renames, the next save moves it back."""
        aside = None
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{self._working_suffix()}")
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside is not None:
                os.replace(aside, final)
            raise
        _fsync_dir(self.output_dir)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def _rotate(self, keep: Path) -> None:
        if self.total_limit is None:
            return
        others = [info for info in self.checkpoints() if info.path != keep]
        excess = len(others) - (self.total_limit - 1)
        for info in others[: max(excess, 0)]:
            logger.info("checkpoints_total_limit %d: removing %s", self.total_limit, info.path)
            self._remove(info.path, info.step)

    def _remove(self, path: Path, step: int) -> None:
        # Rename first: a crash during rmtree then leaves a hidden folder, never a partial
        # checkpoint-{step} that still has its marker.
        doomed = path.with_name(f".checkpoint-{step}.del-{self._working_suffix()}")
        try:
            os.replace(path, doomed)
        except OSError as err:
            logger.warning("could not remove old checkpoint %s: %s", path, err)
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _clean_working_folders(self) -> None:
        for entry in self.output_dir.iterdir():
            match = _WORKING_RE.match(entry.name)
            if not match or not entry.is_dir():
                continue
            step, kind, token = int(match.group(1)), match.group(2), match.group(3)
            if self.lock is not None and not self.lock.may_remove(token):
                logger.info("keeping %s: it belongs to a run whose lock was forced, which may still write it", entry)
                continue
            final = self.output_dir / f"checkpoint-{step}"
            if kind == "old" and not final.exists() and is_complete(entry):
                logger.warning("restoring %s, moved aside by a save that did not finish", final)
                os.replace(entry, final)
                continue
            logger.info("removing %s, left by a save or rotation that did not finish", entry)
            shutil.rmtree(entry, ignore_errors=True)

    def _discard(self, tmp: Path) -> None:
        # Only the main process removes: other ranks may still be writing into the folder.
        if self.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_error(self, final: Path, err: BaseException) -> TrainingCheckpointError:
        previous = self.latest() if self.output_dir.is_dir() else None
        where = f" ({err.filename})" if isinstance(err, OSError) and err.filename else ""
        reason = str(err) or type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            reason = err.strerror
        return TrainingCheckpointError(
            f"could not write checkpoint {final} in {self.output_dir}: {reason}{where}. "
            f"The partial checkpoint was removed; the newest good checkpoint is {previous or 'none'}, untouched. "
            "Check free space and permissions of output_dir."
        )

    # ---- loading ---------------------------------------------------------------------------

    def load(self, checkpoint: str | Path) -> ResumeState:
        """Restore every registered object from ``checkpoint`` in place. Every rank calls this.

        Order: engine state (``state_reader``), weights, stateful objects, sampler state, and this
        rank's RNG streams last, so that nothing run while loading (accelerate's ``load_state``
        restores its own RNG copy) can move a stream after it has been restored.
        """
        path = Path(checkpoint)
        trainer_state = read_trainer_state(path)
        try:
            step, epoch = int(trainer_state["step"]), int(trainer_state["epoch"])
        except (KeyError, TypeError, ValueError) as err:
            raise TrainingCheckpointError(
                f"{path / MARKER_FILE} has no valid step and epoch ({err!r}); resume from an earlier checkpoint"
            ) from err
        if trainer_state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingCheckpointError(
                f"{path} has checkpoint format {trainer_state.get('format')!r}; "
                f"this vidctrl reads format {CHECKPOINT_FORMAT}"
            )
        saved_hash = trainer_state.get("config_hash")
        if self.config_hash and saved_hash and saved_hash != self.config_hash:
            logger.warning(
                "resuming from %s, saved with config %s; the config is now %s",
                path,
                saved_hash,
                self.config_hash,
            )

        if self.state_reader is not None:
            engine_dir = path / ENGINE_STATE_DIR
            if not engine_dir.is_dir():
                raise TrainingCheckpointError(
                    f"{path} has no {ENGINE_STATE_DIR}/ for the engine's state_reader"
                )
            self.state_reader(engine_dir)
        for subfolder, io in self.weights.items():
            if not (path / subfolder).is_dir():
                raise TrainingCheckpointError(f"{path} has no {subfolder}/ weights")
            io.load(path / subfolder)
        for name, obj in self.stateful.items():
            obj.load_state_dict(_torch_load(path / f"{name}.pth", what=f"{name} state"))
        sampler_file = path / SAMPLER_FILE
        if not sampler_file.is_file():
            raise TrainingCheckpointError(f"{path} has no {SAMPLER_FILE}")
        sampler_state = _read_json(sampler_file, "the data sampler's position")

        rng_file = path / f"rng_state_{self.process_index}.pth"
        if not rng_file.is_file():
            raise TrainingCheckpointError(
                f"{path} has no {rng_file.name}: it was saved by {trainer_state.get('num_processes')} processes "
                f"and this is process {self.process_index}; resume with the same number of processes"
            )
        try:
            restore_rng_state(_torch_load(rng_file, what="RNG state"), self.generators)
        except ValueError as err:
            raise TrainingCheckpointError(f"{rng_file}: {err}") from err

        logger.info("resumed from %s (step %s, epoch %s)", path, step, epoch)
        return ResumeState(
            path=path,
            step=step,
            epoch=epoch,
            sampler_state=sampler_state,
            trainer_state=trainer_state,
        )


# --------------------------------------------------------------------------------------------
# Files


def _step_of(path: Path) -> int | None:
    """The step a complete checkpoint says it holds; None when it does not say (loading names that)."""
    try:
        step = read_trainer_state(path).get("step")
    except TrainingCheckpointError:
        return None
    return step if isinstance(step, int) else None


def is_complete(path: Path) -> bool:
    """A checkpoint folder is complete once its marker, written last, exists."""
    return (path / MARKER_FILE).is_file()


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The human-readable ``trainer_state.json`` of a checkpoint."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        raise TrainingCheckpointError(f"{path} is not a complete vidctrl checkpoint (no {MARKER_FILE})")
    return _read_json(marker, "the checkpoint's step, epoch and format")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a checkpoint file; a damaged file is an error naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingCheckpointError(f"{path.parent} has no {path.name} ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrainingCheckpointError(
            f"{path} ({what}) is not valid JSON: {err}; the file is damaged, resume from an earlier checkpoint"
        ) from err
    if not isinstance(data, dict):
        raise TrainingCheckpointError(f"{path} ({what}) must hold a JSON object; the file is damaged")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """`load_file` whose errors name the file (safetensors' own say only "incomplete metadata")."""
    if not path.is_file():
        raise TrainingCheckpointError(f"{path.parent} has no {path.name}")
    damage = safetensors_damage(path)
    if damage:
        raise TrainingCheckpointError(f"{path} is damaged: {damage}; resume from an earlier checkpoint")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError names no file
        raise TrainingCheckpointError(f"{path} cannot be read as safetensors: {err}") from err


def find_damage(checkpoint: Path) -> str | None:
    """The first damaged file of a checkpoint folder, described (None: every file looks whole).

    Cheap enough for every rank at every resume, at any model size: JSON files are parsed,
    .safetensors files are checked header against size, torch files (zip archives since torch 1.6)
    must end in their zip directory. The tensors themselves are not read.
    """
    import zipfile

    for folder, _dirs, files in sorted(os.walk(checkpoint)):
        for name in sorted(files):
            file = Path(folder) / name
            what: str | None = None
            if name.endswith(".safetensors"):
                what = safetensors_damage(file)
            elif name.endswith((".pth", ".pt")):
                if not zipfile.is_zipfile(file):
                    what = "not a complete torch file (truncated or damaged)"
            elif name.endswith(".json"):
                try:
                    json.loads(file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    what = "not valid JSON (truncated or damaged)"
            if what:
                return f"{file.relative_to(checkpoint.parent)}: {what}"
    return None


def _json_data(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as a dict after checking it survives a JSON round trip unchanged (tuples and
    non-string keys do not, and would come back different on resume)."""
    try:
        copy = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON data: {err}") from err
    if copy != dict(value):
        raise TypeError(f"{what} must be JSON data (string keys, lists not tuples): {value!r}")
    return copy


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise TrainingCheckpointError(f"{path.parent} has no {path.name} ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingCheckpointError(
            f"cannot read {path} ({what}) as plain tensors and numbers (weights_only): {err}. If the file was "
            "truncated or damaged, resume from an earlier checkpoint"
        ) from err


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (writers such as ``save_pretrained`` do not)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

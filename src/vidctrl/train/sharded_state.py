"""Checkpoint state that lives on many ranks (DeepSpeed ZeRO, FSDP2): write it, read it back for an
exact resume, and put the full model together again for export.

Nothing here unpickles arbitrary objects. FSDP2 state is written by vidctrl as safetensors (each
rank's shards) plus JSON. DeepSpeed state is DeepSpeed's own checkpoint (``engine.save_checkpoint``),
read back through a checkpoint engine that uses ``torch.load(weights_only=True)`` with three
DeepSpeed data classes allowed (its ZeRO stage enum, its loss scaler, its fragment address): the
files cannot run code.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vidctrl.errors import UserError

DEEPSPEED_TAG = "deepspeed"
FSDP_DIR = "fsdp"
FSDP_META = "fsdp.json"
FSDP_FORMAT = 1

# The DeepSpeed classes its checkpoints pickle besides tensors and builtins (DeepSpeed 0.14 - 0.19).
_DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class ShardedStateError(UserError, RuntimeError):
    """Sharded training state is missing, incomplete or from another run layout."""


# --------------------------------------------------------------------------------------------
# DeepSpeed


def _deepspeed_safe_globals() -> list[Any]:
    found = []
    for dotted in _DEEPSPEED_SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found


def load_deepspeed_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """One file of a DeepSpeed checkpoint, loaded with ``weights_only=True``."""
    globals_ = _deepspeed_safe_globals()
    try:
        with torch.serialization.safe_globals(globals_):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ShardedStateError(
            f"cannot read {path} as plain tensors and DeepSpeed's data classes (weights_only): {err}"
        ) from err


@contextmanager
def weights_only_deepspeed_loading(engine: Any) -> Iterator[None]:
    """Make ``engine.load_checkpoint`` read every file with :func:`load_deepspeed_file`."""
    checkpoint_engine = engine.checkpoint_engine
    original = checkpoint_engine.load

    def load(path: str, map_location: Any = None) -> Any:
        return load_deepspeed_file(path, map_location=map_location)

    checkpoint_engine.load = load
    try:
        yield
    finally:
        checkpoint_engine.load = original


def save_deepspeed_state(engine: Any, folder: Path) -> None:
    """DeepSpeed's own checkpoint of `engine` (model, fp32 master weights, optimizer shards) under
    ``folder/deepspeed/``. Collective: every rank calls it."""
    engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)


def load_deepspeed_state(engine: Any, folder: Path) -> None:
    """Restore what :func:`save_deepspeed_state` wrote, in place. Collective."""
    if not (folder / DEEPSPEED_TAG).is_dir():
        raise ShardedStateError(f"{folder} has no {DEEPSPEED_TAG}/ DeepSpeed state")
    with weights_only_deepspeed_loading(engine):
        path, _ = engine.load_checkpoint(
            str(folder), tag=DEEPSPEED_TAG, load_module_strict=True, load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
    if path is None:
        raise ShardedStateError(f"DeepSpeed could not load its state from {folder / DEEPSPEED_TAG}")


_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")


def find_deepspeed_state(root: Path, depth: int = 3) -> Path | None:
    """The folder holding a DeepSpeed checkpoint's ``*_model_states.pt`` files under `root` (vidctrl's
    ``engine_state/deepspeed/``, or accelerate's ``pytorch_model/`` as VideoX-Fun writes it)."""
    if not root.is_dir():
        return None
    if any(root.glob("*model_states.pt")):
        return root
    if depth == 0:
        return None
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        found = find_deepspeed_state(child, depth - 1)
        if found is not None:
            return found
    return None


def _by_rank(folder: Path, kind: str) -> list[Path]:
    files = []
    for path in folder.glob(f"*_{kind}_states.pt"):
        match = _RANK_RE.search(path.name)
        if match:
            files.append((int(match.group(1)), path))
    return [path for _, path in sorted(files)]


def read_deepspeed_full_state(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model of a DeepSpeed ZeRO checkpoint folder, in float32 where DeepSpeed kept fp32
    master weights (trainable parameters) and as stored elsewhere (frozen parameters, buffers)."""
    model_files = _by_rank(folder, "model")
    optim_files = _by_rank(folder, "optim")
    single = folder / "mp_rank_00_model_states.pt"
    if not model_files and single.is_file():
        model_files = [single]
    if not model_files or not optim_files:
        raise ShardedStateError(f"{folder} holds no DeepSpeed ZeRO checkpoint (*_model_states.pt, *_optim_states.pt)")
    model_state = load_deepspeed_file(model_files[0])
    optims = [load_deepspeed_file(path)["optimizer_state_dict"] for path in optim_files]
    stage = int(optims[0].get("zero_stage", 0))
    world = len(optims)
    param_shapes: list[dict[str, Any]] = model_state["param_shapes"]
    if isinstance(param_shapes, dict):
        param_shapes = [param_shapes]
    state: dict[str, torch.Tensor] = {}
    if stage == 3:
        for group, shapes in enumerate(param_shapes):
            flats = [optim["fp32_flat_groups"][group] for optim in optims]
            offset = 0
            for name, shape in shapes.items():
                numel = math.prod(shape)
                part = math.ceil(numel / world)
                pieces = [flat.narrow(0, offset, part) for flat in flats]
                state[name] = torch.cat(pieces)[:numel].view(tuple(shape)).clone()
                offset += part
        frozen_shapes = model_state.get("frozen_param_shapes") or {}
        if frozen_shapes:
            fragments = [load_deepspeed_file(path).get("frozen_param_fragments") or {} for path in model_files]
            for name, shape in frozen_shapes.items():
                numel = math.prod(shape)
                state[name] = torch.cat([f[name].flatten() for f in fragments])[:numel].view(tuple(shape)).clone()
    elif stage in (1, 2):
        for group, shapes in enumerate(param_shapes):
            partitions = [optim["single_partition_of_fp32_groups"][group] for optim in optims]
            mappings = [optim.get("param_slice_mappings", [{}] * (group + 1))[group] for optim in optims]
            for name, shape in shapes.items():
                pieces = [partition.narrow(0, mapping[name].start, mapping[name].numel)
                          for partition, mapping in zip(partitions, mappings, strict=True) if name in mapping]
                if not pieces:
                    raise ShardedStateError(f"{folder}: no rank holds a slice of {name}")
                state[name] = torch.cat(pieces).view(tuple(shape)).clone()
        for name, tensor in (model_state.get("frozen_param_fragments") or {}).items():
            state[name] = tensor.clone()
    else:
        raise ShardedStateError(f"{folder}: ZeRO stage {stage} checkpoints are not read by vidctrl")
    module = model_state.get("module") or {}
    for name in model_state.get("buffer_names") or []:
        if name in module:
            state[name] = module[name]
    for pair in model_state.get("shared_params") or []:
        name, source = pair[0], pair[1]
        if source in state:
            state[name] = state[source]
    return state


# --------------------------------------------------------------------------------------------
# FSDP2


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)
    return (to_local() if to_local is not None else tensor).detach()


def _placement(tensor: torch.Tensor) -> str:
    placements = getattr(tensor, "placements", None)
    if placements is None:
        return "full"
    if len(placements) != 1 or not placements[0].is_shard() or placements[0].dim != 0:
        raise ShardedStateError(f"unsupported DTensor placement {placements}; vidctrl's FSDP2 shards dim 0")
    return "shard0"


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


def save_fsdp_state(folder: Path, model: nn.Module, optimizer: Any, *, rank: int, world_size: int) -> None:
    """This rank's FSDP2 shards under ``folder/fsdp/``: ``model-rank{r}.safetensors``,
    ``optimizer-rank{r}.safetensors`` + ``.json``, and ``fsdp.json`` (from rank 0) describing every
    tensor's full shape and placement."""
    out = folder / FSDP_DIR
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    tensors = {name: _local(p).contiguous().cpu() for name, p in params.items()}
    buffers = _persistent_buffers(model)
    save_file({**tensors, **buffers}, str(out / f"model-rank{rank}.safetensors"), metadata={"format": "pt"})

    inner = _inner_optimizer(optimizer)
    names = {id(p): name for name, p in params.items()}
    optim_tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for parameter, values in inner.state.items():
        name = names[id(parameter)]
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                optim_tensors[f"{name}::{key}"] = _local(value).contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [names[id(p)] for p in group["params"]]}
              for group in inner.param_groups]
    save_file(optim_tensors, str(out / f"optimizer-rank{rank}.safetensors"), metadata={"format": "pt"})
    (out / f"optimizer-rank{rank}.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars},
                                                               indent=1, default=_json_default))
    if rank == 0:
        meta = {
            "format": FSDP_FORMAT,
            "world_size": world_size,
            "parameters": {name: {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."),
                                  "placement": _placement(p)} for name, p in params.items()},
            "buffers": sorted(buffers),
        }
        (out / FSDP_META).write_text(json.dumps(meta, indent=1))


def _persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that belong to the state dict (not the recomputed, non-persistent ones)."""
    params = {name for name, _ in model.named_parameters()}
    keys = set(model.state_dict()) - params
    return {name: b.detach().contiguous().cpu() for name, b in model.named_buffers() if name in keys}


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in an FSDP optimizer state file")


def _fsdp_meta(folder: Path) -> dict[str, Any]:
    meta_file = folder / FSDP_DIR / FSDP_META
    if not meta_file.is_file():
        raise ShardedStateError(f"{folder} has no {FSDP_DIR}/{FSDP_META} (not an FSDP2 checkpoint)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FSDP_FORMAT:
        raise ShardedStateError(f"{meta_file}: unknown format {meta.get('format')!r}")
    return meta


def load_fsdp_state(folder: Path, model: nn.Module, optimizer: Any, *, rank: int, world_size: int) -> None:
    """Restore this rank's shards written by :func:`save_fsdp_state`, in place."""
    from torch.distributed.tensor import DTensor

    meta = _fsdp_meta(folder)
    if meta["world_size"] != world_size:
        raise ShardedStateError(
            f"{folder} was saved by {meta['world_size']} FSDP processes and this run has {world_size}; "
            "resume with the same number of processes"
        )
    shards = load_file(str(folder / FSDP_DIR / f"model-rank{rank}.safetensors"), device="cpu")
    params = dict(model.named_parameters())
    buffers = {name: b for name, b in model.named_buffers() if name in _persistent_buffers(model)}
    expected = set(params) | set(buffers)
    if set(shards) != expected:
        missing, extra = sorted(expected - set(shards)), sorted(set(shards) - expected)
        raise ShardedStateError(f"{folder}: FSDP shards do not match the model (missing {missing[:5]}, unexpected {extra[:5]})")
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            local = _local(tensor)
            if tuple(local.shape) != tuple(shards[name].shape):
                raise ShardedStateError(f"{folder}: shard of {name} is {tuple(shards[name].shape)}, "
                                        f"this rank holds {tuple(local.shape)}")
            local.copy_(shards[name])
        for name, buffer in buffers.items():
            buffer.copy_(shards[name])

    inner = _inner_optimizer(optimizer)
    saved = json.loads((folder / FSDP_DIR / f"optimizer-rank{rank}.json").read_text())
    tensors = load_file(str(folder / FSDP_DIR / f"optimizer-rank{rank}.safetensors"), device="cpu")
    if len(saved["param_groups"]) != len(inner.param_groups):
        raise ShardedStateError(f"{folder}: the optimizer has {len(inner.param_groups)} groups, the checkpoint "
                                f"{len(saved['param_groups'])}")
    for group, saved_group in zip(inner.param_groups, saved["param_groups"], strict=True):
        for key, value in saved_group.items():
            if key != "params":
                group[key] = tuple(value) if key == "betas" else value
    names = {id(p): name for name, p in params.items()}
    for group in inner.param_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            state: dict[str, Any] = dict(saved["scalars"].get(name, {}))
            for key in [k.split("::", 1)[1] for k in tensors if k.split("::", 1)[0] == name]:
                value = tensors[f"{name}::{key}"]
                if isinstance(parameter, DTensor) and value.dim() > 0:
                    value = DTensor.from_local(value.to(_local(parameter).device), parameter.device_mesh,
                                               parameter.placements, shape=parameter.shape, stride=parameter.stride())
                state[key] = value
            if state:
                inner.state[parameter] = state


def read_fsdp_full_state(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model of an FSDP2 checkpoint: every parameter's shards concatenated along dim 0."""
    meta = _fsdp_meta(folder)
    world = int(meta["world_size"])
    ranks = [load_file(str(folder / FSDP_DIR / f"model-rank{r}.safetensors"), device="cpu") for r in range(world)]
    state: dict[str, torch.Tensor] = {}
    for name, info in meta["parameters"].items():
        if info["placement"] == "shard0":
            full = torch.cat([shards[name] for shards in ranks], dim=0)
        else:
            full = ranks[0][name]
        if list(full.shape) != info["shape"]:
            raise ShardedStateError(f"{folder}: shards of {name} make {list(full.shape)}, expected {info['shape']}")
        state[name] = full
    for name in meta["buffers"]:
        state[name] = ranks[0][name]
    return state

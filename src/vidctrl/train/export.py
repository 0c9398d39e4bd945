"""Export a training checkpoint as a plain model folder: bf16 safetensors in the diffusers layout.

    vidctrl export zero-to-bf16 output_dir/checkpoint-N output_dir/checkpoint-N-outputs \
        --max_shard_size 80GB --safe_serialization

(the arguments of the seeds' ``scripts/zero_to_bf16.py``). The checkpoint may be vidctrl's (full
weights, DeepSpeed ZeRO-2/3 state or FSDP2 shards) or a DeepSpeed checkpoint folder written by
accelerate's ``save_state`` (VideoX-Fun's ``checkpoint-N/``). The result loads with
``<ModelClass>.from_pretrained(OUT)`` when the checkpoint carries the model's ``config.json``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vidctrl.errors import UserError
from vidctrl.train.checkpoint import DIFFUSERS_WEIGHTS_NAME, ENGINE_STATE_DIR, MARKER_FILE, find_damage
from vidctrl.train.sharded_state import (
    FSDP_DIR,
    ShardedStateError,
    find_deepspeed_state,
    read_deepspeed_full_state,
    read_fsdp_full_state,
)

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ExportError(UserError, RuntimeError):
    """The checkpoint cannot be exported; the message says what is missing."""


def parse_size(text: str | int) -> int:
    """``"80GB"`` -> 80e9 bytes (GB = 10^9 as in transformers/diffusers, GiB = 2^30), or an int."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 80GB, 500MB or 10GiB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    return int(number * _UNITS[unit])


def shard_state(state: Mapping[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split a state dict into shards of at most `max_shard_bytes` (a tensor larger than that gets a
    shard of its own), keeping the keys in order."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_diffusers_weights(state: Mapping[str, torch.Tensor], folder: Path, *, max_shard_size: str | int = "10GB",
                            weights_name: str = DIFFUSERS_WEIGHTS_NAME) -> list[Path]:
    """Write `state` as diffusers does: one ``{weights_name}.safetensors``, or numbered shards plus
    ``{weights_name}.safetensors.index.json`` when it exceeds `max_shard_size`."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    # safetensors refuses tensors sharing storage (tied weights): store a copy of each.
    seen: dict[int, str] = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        if pointer in seen and pointer != -1:
            tensors[name] = tensor.clone()
        seen[pointer] = name
    shards = shard_state(tensors, parse_size(max_shard_size))
    if len(shards) == 1:
        path = folder / f"{weights_name}.safetensors"
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    written, weight_map = [], {}
    for index, shard in enumerate(shards, start=1):
        name = f"{weights_name}-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        written.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index_file = folder / f"{weights_name}.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return [*written, index_file]


def _component_folder(checkpoint: Path) -> Path | None:
    """The trained model's subfolder of a vidctrl checkpoint (the one listed as its weights)."""
    marker = checkpoint / MARKER_FILE
    if marker.is_file():
        for name in json.loads(marker.read_text()).get("weights", []):
            if (checkpoint / name).is_dir():
                return checkpoint / name
    for name in ("transformer", "unet", "controlnet"):
        if (checkpoint / name).is_dir():
            return checkpoint / name
    return None


def read_full_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The whole trained model of `checkpoint` and where it came from."""
    component = _component_folder(checkpoint)
    if component is not None:
        single = component / f"{DIFFUSERS_WEIGHTS_NAME}.safetensors"
        index = component / f"{DIFFUSERS_WEIGHTS_NAME}.safetensors.index.json"
        if single.is_file():
            return load_file(str(single)), "full weights"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(load_file(str(component / name)))
            return state, "full weights"
    engine_dir = checkpoint / ENGINE_STATE_DIR
    if (engine_dir / FSDP_DIR).is_dir():
        return read_fsdp_full_state(engine_dir), "FSDP2 shards"
    ds_dir = find_deepspeed_state(engine_dir if engine_dir.is_dir() else checkpoint)
    if ds_dir is not None:
        return read_deepspeed_full_state(ds_dir), "DeepSpeed ZeRO state"
    raise ExportError(
        f"{checkpoint} holds no model weights: no {DIFFUSERS_WEIGHTS_NAME}.safetensors, no FSDP2 shards and no "
        "DeepSpeed *_model_states.pt files"
    )


def export_bf16(checkpoint: str | Path, out: str | Path, *, max_shard_size: str | int = "80GB",
                dtype: torch.dtype = torch.bfloat16) -> list[Path]:
    """Consolidate `checkpoint` into `out` as `dtype` safetensors (floating tensors only are cast)
    with the model's ``config.json`` beside them; returns the files written."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise ExportError(f"checkpoint {checkpoint} does not exist")
    damage = find_damage(checkpoint)
    if damage:  # safetensors and torch errors on a truncated file name no file
        raise ExportError(f"checkpoint {checkpoint} is damaged: {damage}; export an earlier checkpoint")
    try:
        state, source = read_full_state(checkpoint)
    except ShardedStateError as err:
        raise ExportError(str(err)) from err
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose a new folder")
    written = write_diffusers_weights(state, out, max_shard_size=max_shard_size)
    component = _component_folder(checkpoint)
    config = component / "config.json" if component is not None else None
    if config is not None and config.is_file():
        shutil.copy2(config, out / "config.json")
        written.append(out / "config.json")
    else:
        log.warning("%s has no config.json of the model; %s holds the weights only", checkpoint, out)
    log.info("exported %d tensors (%s) from %s to %s", len(state), source, checkpoint, out)
    return written

"""Is a file whole? Cheap checks of safetensors framing and a digest of tensor contents.

`safetensors_damage` reads only a file's header and size, so every rank can run it on every file
of a checkpoint or a cache at any model size. `tensor_digest` is the checksum a writer stores in a
safetensors file's own metadata (`SHA256_KEY`); `digest_damage` recomputes it when a file is
reused, catching damage that keeps the size (a flipped byte, a zeroed block).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

SHA256_KEY = "sha256"


def safetensors_damage(path: Path) -> str | None:
    """What is wrong with a .safetensors file's framing (None: header and size agree), from its
    header alone: a truncated copy or an interrupted write is found without reading the tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                return f"{size} bytes, too short for a safetensors header (truncated)"
            header_len = int.from_bytes(raw, "little")
            if header_len > size - 8:
                return f"header of {header_len} bytes in a {size}-byte file (truncated)"
            header = json.loads(handle.read(header_len))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "its header is not valid JSON (damaged)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (damaged)"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return f"tensor {key} has no data offsets (damaged)"
        end = max(end, int(offsets[1]))
    expected = 8 + header_len + end
    if size < expected:
        return f"{size} bytes where its header describes {expected} (truncated)"
    return None


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def digest_damage(path: Path) -> str | None:
    """Framing, then contents against the digest stored in the file's metadata (None: whole, or
    written before digests were stored and framed correctly)."""
    framing = safetensors_damage(path)
    if framing:
        return framing
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = (handle.metadata() or {}).get(SHA256_KEY)
            if stored is None:
                return None
            actual = tensor_digest({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    except Exception as err:  # safetensors' own errors name no file; the caller names it
        return f"cannot be read ({err})"
    if actual != stored:
        return "its contents do not match the checksum written with it (damaged)"
    return None

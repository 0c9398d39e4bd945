"""Random-number state: capture and restore every stream a training step draws from, and derive
per-rank, per-purpose generators from one seed.

The captured state holds only tensors, numbers, strings, tuples, lists and dicts, so a checkpoint
that stores it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

RNG_STATE_FORMAT = 1

_SEED_MASK = (1 << 63) - 1


def derive_seed(seed: int, rank: int, purpose: str) -> int:
    """A 63-bit seed for ``(seed, rank, purpose)``, the same in every process and Python version.

    Python's ``hash`` of a string is salted per process, so it cannot be used here; blake2b of a
    canonical encoding is stable. Changing this function changes every derived stream and breaks
    exact resumes of runs started before the change.
    """
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    key = f"vidctrl-rng\x00{int(seed)}\x00{int(rank)}\x00{purpose}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK


def rank_generator(seed: int, rank: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` with its own reproducible stream for this rank and purpose
    (e.g. ``"noise"``, ``"timesteps"``), so ranks never draw identical noise and adding a new
    purpose does not shift the draws of an existing one."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, rank, purpose))
    return generator


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot Python ``random``, NumPy's global RNG, torch CPU, torch CUDA (every device, when
    available) and the named generators."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "format": RNG_STATE_FORMAT,
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            # uint32 keys as int64: a plain tensor needs no numpy allow-listing under weights_only.
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": torch.get_rng_state(),
        "generators": {
            gen_name: {"device": gen.device.type, "state": gen.get_state()}
            for gen_name, gen in (generators or {}).items()
        },
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put back a state from :func:`capture_rng_state`.

    Every generator passed must be in ``state`` (a silently unrestored noise stream would break
    the promise of an identical loss curve); generators in ``state`` that are not passed are
    ignored. A CUDA state that cannot be applied (no CUDA now, or a different device count) is
    logged, since resuming on other hardware is a deliberate choice.
    """
    fmt = state.get("format")
    if fmt != RNG_STATE_FORMAT:
        raise ValueError(f"unknown RNG state format {fmt!r}; this vidctrl reads format {RNG_STATE_FORMAT}")
    generators = generators or {}
    saved_generators: Mapping[str, Any] = state.get("generators", {})
    missing = sorted(set(generators) - set(saved_generators))
    if missing:
        raise ValueError(
            f"the saved RNG state has no generator named {', '.join(missing)} "
            f"(it has: {', '.join(sorted(saved_generators)) or 'none'})"
        )
    for gen_name, gen in generators.items():
        saved = saved_generators[gen_name]
        if saved["device"] != gen.device.type:
            raise ValueError(
                f"generator {gen_name!r} was saved on {saved['device']} and is now on {gen.device.type}; "
                "their states are not interchangeable"
            )

    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    _restore_cuda(state.get("torch_cuda"))
    for gen_name, gen in generators.items():
        gen.set_state(saved_generators[gen_name]["state"])


def _as_python_state(saved: Any) -> tuple[Any, ...]:
    # random.setstate wants tuples; be lenient if a serializer turned them into lists.
    version, internal, gauss_next = saved
    return (version, tuple(internal), gauss_next)


def _restore_cuda(saved: list[torch.Tensor] | None) -> None:
    available = torch.cuda.is_available()
    if saved is None:
        if available:
            logger.warning(
                "the saved RNG state has no CUDA state; CUDA random streams start from their current state"
            )
        return
    if not available:
        logger.warning(
            "the saved RNG state includes CUDA streams but CUDA is not available; they are not restored"
        )
        return
    count = torch.cuda.device_count()
    if len(saved) != count:
        logger.warning(
            "the saved RNG state has %d CUDA devices and this process sees %d; restoring the first %d",
            len(saved),
            count,
            min(len(saved), count),
        )
    for index, device_state in enumerate(saved[:count]):
        torch.cuda.set_rng_state(device_state, device=index)

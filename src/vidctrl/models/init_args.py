"""Constructor arguments of diffusers model subclasses.

A subclass of a diffusers model (`DynamiCtrlTransformer3DModel`, `WanFunControlTransformer3DModel`)
must spell out every constructor argument in its own signature: ``register_to_config`` and
``from_config`` read the config keys from that signature. Passing them all on to the base class by
name, one line each, repeats the base's signature a second time; `base_init_kwargs` takes them from
the subclass's parameters instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def base_init_kwargs(base: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``base.__init__`` that `values` (the subclass constructor's ``locals()``) holds,
    by name; a base argument the subclass does not take keeps the base's default."""
    names = [name for name in inspect.signature(base.__init__).parameters if name != "self"]  # type: ignore[misc]
    return {name: values[name] for name in names if name in values}

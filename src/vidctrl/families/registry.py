"""The preset -> model family registry. It knows no family: each family module registers its class
with `register` when it is imported, and the `vidctrl.families` package imports its modules, so that
importing this module (through the package) fills the registry.

The config asks this registry for a preset's family instead of importing the families, which keeps the
import graph a tree (the families import the config's field helpers and the training code).
A new family (EasyAnimate, ControlNeXt-SVD) is a module with `@register` on its class, imported in
`vidctrl/families/__init__.py`.
"""

from __future__ import annotations

from typing import Any, TypeVar

FamilyClass = TypeVar("FamilyClass", bound=type)

#: the registered family classes, in registration order (flag tables list them in this order)
FAMILIES: list[Any] = []


def register(family: FamilyClass) -> FamilyClass:
    """Class decorator: add `family` to the registry; its presets must be new."""
    taken = all_presets()
    clash = sorted(preset for preset in family.presets if preset in taken)  # type: ignore[attr-defined]
    if clash:
        raise ValueError(f"{family.__name__} registers presets {clash} that {taken[clash[0]].__name__} has already")
    if family not in FAMILIES:
        FAMILIES.append(family)
    return family


def all_presets() -> dict[str, Any]:
    """Preset name -> family class, for every registered family."""
    return {preset: family for family in FAMILIES for preset in family.presets}


def family_for_preset(preset: str) -> Any:
    """The family class that serves `preset`; an unknown preset is an error listing the known ones."""
    presets = all_presets()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(presets))}")
    return presets[preset]

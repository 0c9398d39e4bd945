"""Model families, one module per backbone, and the registry that maps presets to them."""

from __future__ import annotations

from vidctrl.families.base import ModelFamily
from vidctrl.families.cogvideox_fun import CogVideoXFun
from vidctrl.families.dynamictrl import DynamiCtrl
from vidctrl.families.wan_fun import WanFunControl

FAMILIES: list[type[ModelFamily]] = [WanFunControl, CogVideoXFun, DynamiCtrl]


def all_presets() -> dict[str, type[ModelFamily]]:
    return {preset: family for family in FAMILIES for preset in family.presets}


def family_for_preset(preset: str) -> type[ModelFamily]:
    presets = all_presets()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(presets))}")
    return presets[preset]

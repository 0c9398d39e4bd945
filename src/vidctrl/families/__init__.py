"""Model families, one module per backbone. Importing this package registers every family in
`vidctrl.families.registry` (each module decorates its class with `register`)."""

from __future__ import annotations

from vidctrl.families import cogvideox_fun, dynamictrl, wan_fun  # noqa: F401  (registers the families)
from vidctrl.families.registry import FAMILIES, all_presets, family_for_preset

__all__ = ["FAMILIES", "all_presets", "family_for_preset"]

"""Model families, one module per backbone. Importing this package registers every family in
`vidctrl.families.registry` (each module decorates its class with `register`)."""

from __future__ import annotations

# isort: off
# Registration order is the order of the flag tables (`vidctrl train --help`): Wan first, as before.
from vidctrl.families import wan_fun  # noqa: F401
from vidctrl.families import cogvideox_fun, dynamictrl  # noqa: F401
# isort: on
from vidctrl.families.registry import FAMILIES, all_presets, family_for_preset

__all__ = ["FAMILIES", "all_presets", "family_for_preset"]

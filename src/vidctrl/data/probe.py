"""Fill in the probed facts (frames, fps, size) of records, in parallel worker processes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from vidctrl.data.check import InspectSettings, inspect_records
from vidctrl.data.clips import ClipRules
from vidctrl.data.records import Record

log = logging.getLogger(__name__)


def probe_into(records: Sequence[Record], *, workers: int | None = None, force: bool = False) -> list[Record]:
    """Records with frames/fps/width/height (and the control's) filled from the files' headers.

    Records already probed are kept as they are unless `force`. A file that cannot be probed
    leaves its record unprobed and is logged (`vidctrl data check` says more).
    """
    todo = [i for i, r in enumerate(records) if force or not r.probed]
    out = list(records)
    if not todo:
        return out
    settings = InspectSettings(rules=ClipRules.permissive(), deep=False)
    for position, inspection in enumerate(inspect_records([records[i] for i in todo], settings, workers=workers)):
        index = todo[position]
        fields = inspection.probed_fields()
        if inspection.target is None:
            reasons = "; ".join(p.message for p in inspection.problems) or "unknown reason"
            log.warning("sample %d (%s) could not be probed: %s", index, records[index].media, reasons)
        out[index] = dataclasses.replace(records[index], **fields)
    return out

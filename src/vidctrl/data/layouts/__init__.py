"""Every dataset layout vidctrl reads and writes, behind two calls.

`load_dataset(config)` picks the layout from the one source flag that is set:

| flag                      | layout        | module                          |
|---------------------------|---------------|---------------------------------|
| `--train_data_meta X.json/.csv` (+ `--train_data_dir`) | `videox` | `layouts.videox` |
| `--data_root DIR` (+ `--video_column`, `--caption_column`) | `dynamictrl` | `layouts.dynamictrl` |
| `--meta_info_path X.json` | `controlnext` | `layouts.controlnext`           |
| `--manifest X.jsonl`, or `--train_data_meta X.jsonl` | `manifest` | `vidctrl.data.manifest` |

`write_layout(records, out, layout, **options)` writes any of them from records, so
`vidctrl data convert` turns any layout into any other. Importers never raise for bad data; they
return every problem with the records they could read. A flag the chosen layout cannot honour is a
`DataError`, never silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from vidctrl.data.config import DataConfig
from vidctrl.data.records import DataError, ImportResult, Problem, Record

Layout = Literal["videox", "dynamictrl", "controlnext", "manifest"]
LAYOUTS: tuple[Layout, ...] = ("videox", "dynamictrl", "controlnext", "manifest")

# write_layout's keyword options per layout (the writers' own keyword arguments)
WRITE_OPTIONS: dict[str, tuple[str, ...]] = {
    "videox": ("filename", "as_csv", "skip_unrepresentable"),
    "dynamictrl": ("copy", "skip_unrepresentable", "video_column", "caption_column"),
    "controlnext": ("filename", "skip_unrepresentable"),
    "manifest": ("filename",),
}

_SOURCE_FLAGS = {
    "train_data_meta": "--train_data_meta",
    "data_root": "--data_root",
    "meta_info_path": "--meta_info_path",
    "manifest": "--manifest",
}

_HOW_TO_PASS = (
    "pass exactly one of --train_data_meta FILE (VideoX-Fun / EasyAnimate / CogVideoX-Fun .json or .csv, "
    "or a vidctrl .jsonl manifest), --data_root FOLDER (DynamiCtrl), --meta_info_path FILE (ControlNeXt) "
    "or --manifest FILE.jsonl"
)


def source_of(config: DataConfig) -> tuple[Layout, Path]:
    """The layout and the path named by the one source flag of `config`. Raises `DataError`."""
    given = [name for name in _SOURCE_FLAGS if getattr(config, name) is not None]
    if not given:
        raise DataError(Problem(message="no dataset given", code="no_source", fix=_HOW_TO_PASS))
    if len(given) > 1:
        flags = ", ".join(_SOURCE_FLAGS[name] for name in given)
        raise DataError(
            Problem(message=f"several datasets given ({flags})", code="several_sources", fix=_HOW_TO_PASS)
        )
    name = given[0]
    path = Path(getattr(config, name))
    if name == "train_data_meta":
        return ("manifest" if path.suffix.lower() == ".jsonl" else "videox"), path
    return {"data_root": "dynamictrl", "meta_info_path": "controlnext", "manifest": "manifest"}[name], path


def _check_flags(config: DataConfig, layout: Layout) -> None:
    """Flags that only one layout honours must not be given with another."""
    from vidctrl.data.layouts import controlnext, dynamictrl

    def refuse(message: str, fix: str) -> None:
        raise DataError(Problem(message=message, code="flag_not_honoured", fix=fix))

    if config.train_data_dir is not None and layout != "videox":
        refuse(
            f"--train_data_dir joins the relative paths of --train_data_meta; the {layout} layout does not "
            "use it",
            "leave out --train_data_dir",
        )
    if layout != "dynamictrl":
        for flag, value, default in (
            ("--video_column", config.video_column, dynamictrl.DEFAULT_VIDEO_COLUMN),
            ("--caption_column", config.caption_column, dynamictrl.DEFAULT_CAPTION_COLUMN),
        ):
            if value != default:
                refuse(
                    f"{flag} names a file under DynamiCtrl's --data_root; the {layout} layout does not use it",
                    f"leave out {flag}",
                )
    if config.dataset_type is not None and config.dataset_type not in controlnext.DATASET_TYPES:
        refuse(
            f"--dataset_type {config.dataset_type!r} is not supported: vidctrl reads ControlNeXt's 'ubc' "
            "dataset (the --meta_info_path list of pose videos); 'webvid' is a depth/motion dataset of frame "
            "folders",
            "pass --dataset_type ubc with --meta_info_path, or convert the data to a layout above",
        )


def load_dataset(config: DataConfig) -> ImportResult:
    """Read the dataset named by `config`'s source flag.

    Raises `DataError` for flag mistakes (no source, several, a flag the layout ignores); bad data
    comes back as `ImportResult.problems` (call `raise_for_errors()` to stop on them).
    """
    layout, path = source_of(config)
    _check_flags(config, layout)
    if layout == "videox":
        imported = read_layout(layout, path, root=config.train_data_dir)
    elif layout == "dynamictrl":
        imported = read_layout(
            layout, path, video_column=config.video_column, caption_column=config.caption_column
        )
    else:
        imported = read_layout(layout, path)
    imported.problems += no_samples_problems(imported, path)
    return imported


def no_samples_problems(imported: ImportResult, path: Path) -> list[Problem]:
    """A dataset without a single entry is an error for `data check` and training alike.

    Only when nothing else explains it: entries that could not be read are already errors.
    """
    if imported.records or any(p.severity == "error" for p in imported.problems):
        return []
    return [
        Problem(
            message="the dataset holds no samples (an empty list)",
            file=str(path),
            code="no_samples",
            fix="add entries, or point the flag at the dataset that has them",
        )
    ]


def read_layout(layout: Layout, path: str | os.PathLike[str], **options: Any) -> ImportResult:
    """Read `path` (metadata file, or the data root for DynamiCtrl) as `layout`."""
    if layout == "videox":
        from vidctrl.data.layouts.videox import read_videox

        return read_videox(path, **options)
    if layout == "dynamictrl":
        from vidctrl.data.layouts.dynamictrl import read_dynamictrl

        return read_dynamictrl(path, **options)
    if layout == "controlnext":
        from vidctrl.data.layouts.controlnext import read_controlnext

        return read_controlnext(path, **options)
    if layout == "manifest":
        from vidctrl.data.manifest import read_manifest_records

        return read_manifest_records(path, **options)
    raise DataError(
        Problem(
            message=f"unknown layout {layout!r}",
            code="unknown_layout",
            fix=f"choose one of {', '.join(LAYOUTS)}",
        )
    )


def write_layout(
    records: Iterable[Record], out_dir: str | os.PathLike[str], layout: Layout, **options: Any
) -> Path:
    """Write `records` in `layout` under `out_dir`; returns the main metadata file's path.

    `out_dir` is the dataset folder (for `manifest`, a path ending in `.jsonl` is the file itself).
    Options per layout are listed in `WRITE_OPTIONS`; one the layout does not take is a `DataError`.
    Records a layout cannot hold (an image in DynamiCtrl, say) raise a `DataError` naming the sample,
    unless `skip_unrepresentable=True`.
    """
    if layout not in WRITE_OPTIONS:
        raise DataError(
            Problem(
                message=f"unknown layout {layout!r}",
                code="unknown_layout",
                fix=f"choose one of {', '.join(LAYOUTS)}",
            )
        )
    unknown = sorted(set(options) - set(WRITE_OPTIONS[layout]))
    if unknown:
        accepted = ", ".join(WRITE_OPTIONS[layout])
        raise DataError(
            Problem(
                message=f"the {layout} layout does not take {', '.join(unknown)}",
                code="flag_not_honoured",
                fix=f"its options are {accepted}"
                + (
                    " (copy applies to the dynamictrl layout, which holds media files)"
                    if "copy" in unknown
                    else ""
                ),
            )
        )
    records = list(records)
    if layout == "videox":
        from vidctrl.data.layouts.videox import write_videox

        return write_videox(records, out_dir, **options)
    if layout == "dynamictrl":
        from vidctrl.data.layouts.dynamictrl import write_dynamictrl

        return write_dynamictrl(records, out_dir, **options)
    if layout == "controlnext":
        from vidctrl.data.layouts.controlnext import write_controlnext

        return write_controlnext(records, out_dir, **options)
    from vidctrl.data.manifest import write_manifest

    out = Path(out_dir)
    path = out if out.suffix.lower() == ".jsonl" else out / options.get("filename", "manifest.jsonl")
    return write_manifest(records, path)


__all__ = [
    "LAYOUTS",
    "WRITE_OPTIONS",
    "Layout",
    "load_dataset",
    "no_samples_problems",
    "read_layout",
    "source_of",
    "write_layout",
]

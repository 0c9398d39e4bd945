"""`vidctrl data sample|check|plan|convert|prepare`: make a dataset, and know it before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidctrl.config.fields import add_arguments, build, given, int_at_least, parse_bool
from vidctrl.data.config import DataConfig

LAYOUT_CHOICES = ("videox", "dynamictrl", "controlnext", "manifest")


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="sample, check, plan and convert datasets")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    sample = sub.add_parser("sample", help="write the built-in synthetic dataset in any layout")
    sample.add_argument("--out", type=Path, required=True, help="folder to write the dataset into")
    sample.add_argument("--layout", choices=LAYOUT_CHOICES, default="videox")
    sample.add_argument("--num_videos", type=int_at_least(0), default=6)
    sample.add_argument("--num_images", type=int_at_least(0), default=2)
    sample.add_argument("--sample_seed", type=int_at_least(0), default=0, help="seed of the synthetic content")
    sample.set_defaults(func=run_sample)

    check = sub.add_parser(
        "check",
        help="read every sample as training will and report each problem",
        description="Exit status: 0 when every sample is sound, 1 when any is bad, 2 on a usage error.",
    )
    add_arguments(check, DataConfig, group_title="data (the same flags as training)")
    check.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    check.add_argument("--workers", type=int_at_least(1), default=None, help="processes that inspect samples")
    check.add_argument("--require_captions", type=_bool_or_auto, default="auto",
                       help="missing captions: true reports them as errors; auto (the default) as warnings, "
                       "since training trains them with an empty caption, and not at all for ControlNeXt "
                       "data, which has none")
    check.add_argument("--hand_boxes", type=parse_bool, default=False,
                       help="validate ControlNeXt meta_info (hand boxes and scores per frame), as training "
                       "does for a preset that weighs hands; no preset does yet")
    check.set_defaults(func=run_check)

    plan = sub.add_parser("plan", help="print the size -> frames -> tokens table training will use")
    add_arguments(plan, DataConfig, group_title="data and bucket flags")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=run_plan)

    convert = sub.add_parser("convert", help="write a dataset in another layout (probing every file)")
    add_arguments(convert, DataConfig, group_title="source (the same flags as training)")
    convert.add_argument("--to", dest="to_layout", choices=LAYOUT_CHOICES, required=True)
    convert.add_argument("--out", type=Path, required=True, help="output folder (or .jsonl path for --to manifest)")
    convert.add_argument("--copy", action="store_true", help="copy media instead of symlinking (DynamiCtrl layout)")
    convert.add_argument("--workers", type=int_at_least(1), default=None)
    convert.set_defaults(func=run_convert)

    from vidctrl.prepare.config import PrepareConfig

    prepare = sub.add_parser(
        "prepare",
        help="turn a folder of raw videos into a dataset: pose videos (DWPose), boxes, captions",
        description="Exit status: 0 when every video made it into the dataset, 1 when any failed, "
        "2 on a usage error (a missing model file, say). A rerun resumes: finished videos are skipped.",
    )
    add_arguments(prepare, PrepareConfig)
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=run_prepare)


def _bool_or_auto(text: str) -> str | bool:
    from vidctrl.config.fields import parse_bool

    return "auto" if text == "auto" else parse_bool(text)


def data_config(args: argparse.Namespace) -> DataConfig:
    return build(DataConfig, given(args, DataConfig))


def run_sample(args: argparse.Namespace) -> int:
    from vidctrl.data.layouts import write_layout
    from vidctrl.data.synthetic import make_sample_dataset

    records = make_sample_dataset(
        args.out, num_videos=args.num_videos, num_images=args.num_images, seed=args.sample_seed
    )
    if args.layout in ("dynamictrl", "controlnext"):
        records = [r for r in records if r.kind == "video"]  # these layouts hold videos only
    path = write_layout(records, args.out, args.layout)
    print(f"wrote {len(records)} samples ({args.layout} layout): {path}")
    print("use it with: " + " ".join(source_flags(args.layout, path, args.out)))
    return 0


def source_flags(layout: str, path: Path, root: Path) -> list[str]:
    """The training flags that read a dataset written by `write_layout`."""
    if layout == "videox":
        return ["--train_data_meta", str(path), "--train_data_dir", str(root)]
    if layout == "dynamictrl":
        return ["--data_root", str(root)]
    if layout == "controlnext":
        return ["--meta_info_path", str(path)]
    return ["--manifest", str(path)]


def run_check(args: argparse.Namespace) -> int:
    from vidctrl.data.check import InspectSettings, check_records
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.layouts import load_dataset

    config = data_config(args)
    imported = load_dataset(config)
    require_captions = args.require_captions
    if require_captions == "auto":
        require_captions = None if imported.layout != "controlnext" else False
    rules = ClipRules.from_config(config, layout=imported.layout)
    report = check_records(
        imported.records,
        InspectSettings(rules=rules, control_frame_policy=config.control_frame_policy,
                        hand_boxes=args.hand_boxes),
        import_problems=imported.problems,
        require_captions=require_captions,
        workers=args.workers,
    )
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        for problem in report.problems:
            print(problem)
        summary = report.summary()
        print(
            f"{summary['samples']} samples: {summary['good_samples']} good, {summary['bad_samples']} bad"
            + (f", {summary['metadata_errors']} metadata errors" if summary["metadata_errors"] else "")
        )
        for kind, count in summary["errors_by_kind"].items():
            print(f"  error   {kind}: {count}")
        for kind, count in summary["warnings_by_kind"].items():
            print(f"  warning {kind}: {count}")
        if report.ok:
            print("ok")
        elif report.metadata_errors:
            print("the metadata cannot be read as a whole: fix it before training")
        else:
            print("bad samples found: training in lenient mode leaves them out and counts them; strict mode stops")
    return 0 if report.ok else 1


def run_plan(args: argparse.Namespace) -> int:
    from vidctrl.data.shapes import plan_table

    config = data_config(args)
    rows = plan_table(config)
    if args.json:
        print(json.dumps({"plan": rows}))
        return 0
    print(f"{'size':>6} {'frames':>7} {'tokens':>8}")
    for row in rows:
        size = f"{row['height']}x{row['width']}" if "height" in row else str(row["size"])
        print(f"{size:>6} {row['frames']:>7} {row['tokens']:>8,}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from vidctrl.data.layouts import load_dataset, write_layout
    from vidctrl.data.probe import probe_into

    config = data_config(args)
    imported = load_dataset(config)
    imported.raise_for_errors()
    records = probe_into(imported.records, workers=args.workers)
    options = {"copy": True} if args.copy else {}
    path = write_layout(records, args.out, args.to_layout, **options)
    print(f"wrote {len(records)} samples ({imported.layout} -> {args.to_layout}): {path}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from vidctrl.prepare.config import PrepareConfig
    from vidctrl.prepare.pipeline import prepare_dataset

    config = build(PrepareConfig, given(args, PrepareConfig))
    report = prepare_dataset(config, progress=not args.quiet)
    for source, reason in report.skipped:
        print(f"skipped {source}: {reason}")
    for source, reason in report.failed:
        print(f"error: {source}: {reason}", file=sys.stderr)
    print(
        f"{len(report.records)} clips ({report.processed} made, {report.reused} already done), "
        f"{len(report.skipped)} videos skipped, {len(report.failed)} failed, in {report.seconds:.1f} s"
    )
    if report.layout_path is not None:
        print(f"wrote the {config.layout} layout: {report.layout_path}")
        print("check it with: vidctrl data check " + " ".join(source_flags(config.layout, report.layout_path,
                                                                           report.layout_path.parent)))
    return 0 if report.ok and report.records else 1

"""`vidctrl export`: turn a training checkpoint into a model folder others load.

    vidctrl export zero-to-bf16 output_dir/checkpoint-N OUT --max_shard_size 80GB --safe_serialization
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidctrl.errors import report_user_error


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a checkpoint as a model folder (bf16 safetensors)")
    sub = export.add_subparsers(dest="export_command", required=True, metavar="SUBCOMMAND")
    zero = sub.add_parser(
        "zero-to-bf16",
        help="consolidate a checkpoint (DeepSpeed ZeRO-2/3, FSDP2 or full weights) into bf16 safetensors",
        description="Consolidate a checkpoint's model -- DeepSpeed ZeRO-2/3 state, FSDP2 shards, or full weights -- "
        "into bf16 safetensors in the diffusers layout, with the model's config.json: the arguments of the seeds' "
        "scripts/zero_to_bf16.py. The output loads with from_pretrained(OUT).",
    )
    zero.add_argument("checkpoint", type=Path, help="a checkpoint folder, e.g. output_dir/checkpoint-500")
    zero.add_argument("out", type=Path, help="the model folder to write (new or empty)")
    zero.add_argument("--max_shard_size", default="80GB", help="largest safetensors file (e.g. 80GB, 5GB, 500MB)")
    zero.add_argument("--safe_serialization", action="store_true",
                      help="accepted for the seed's command; vidctrl writes safetensors only")
    zero.set_defaults(func=run_zero_to_bf16)

    config_path = commands.add_parser(
        "config-path", help="print the path of a launch file vidctrl ships (DeepSpeed JSON, accelerate YAML)",
        description="Print where vidctrl's copy of a seed command's launch file is, for launch flags that accelerate "
        "itself reads: accelerate launch --config_file \"$(vidctrl config-path accelerate_configs/deepspeed.yaml)\". "
        "(--deepspeed_config_file config/... is found by vidctrl without this.)",
    )
    config_path.add_argument("name", nargs="?", help="e.g. config/zero_stage2_config.json; omit to list them")
    config_path.set_defaults(func=run_config_path)


def run_zero_to_bf16(args: argparse.Namespace) -> int:
    import logging

    from vidctrl.train.export import ExportError, export_bf16

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = export_bf16(args.checkpoint, args.out, max_shard_size=args.max_shard_size)
    except (ExportError, ValueError) as exc:
        report_user_error(exc)
        return 1
    for path in written:
        print(path)
    return 0


def run_config_path(args: argparse.Namespace) -> int:
    from vidctrl.train.distributed import SHIPPED_LAUNCH_FILES, shipped_path

    if args.name is None:
        for name in SHIPPED_LAUNCH_FILES:
            print(f"{name}\t{shipped_path(name)}")
        return 0
    path = shipped_path(args.name)
    if path is None:
        print(f"error: vidctrl ships no {args.name}; it ships {', '.join(SHIPPED_LAUNCH_FILES)}", file=sys.stderr)
        return 1
    print(path)
    return 0

"""`vidctrl model tiny`: a tiny random model in the layout of a real checkpoint, for smoke tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidctrl.config.fields import int_at_least


def register(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="model utilities")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    tiny = sub.add_parser("tiny", help="write a tiny random model in the layout of PRESET's real checkpoint")
    from vidctrl.families import all_presets

    tiny.add_argument("--preset", required=True, choices=sorted(all_presets()))
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--layout", choices=("diffusers", "original"), default="diffusers",
                      help="diffusers, or the original layout the release ships")
    tiny.add_argument("--seed", type=int_at_least(0), default=0)
    tiny.set_defaults(func=run_tiny)


def run_tiny(args: argparse.Namespace) -> int:
    from vidctrl.families import family_for_preset

    family = family_for_preset(args.preset)
    path = family.write_tiny(args.out, args.preset, layout=args.layout, seed=args.seed)
    print(f"wrote a tiny {args.preset} model ({args.layout} layout) to {path}")
    print(f"use it with: --pretrained_model_name_or_path {path}")
    return 0

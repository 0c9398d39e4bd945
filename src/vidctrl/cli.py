"""The `vidctrl` command: one entry point, one subcommand per job.

    vidctrl demo                      a real, small run on built-in data
    vidctrl data sample|check|plan|convert
"""

from __future__ import annotations

import argparse
import sys

from vidctrl import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidctrl",
        description="Train video diffusion models to follow a control signal (pose, camera).",
    )
    parser.add_argument("--version", action="version", version=f"vidctrl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from vidctrl.commands import cache as cache_command
    from vidctrl.commands import data as data_commands
    from vidctrl.commands import demo as demo_command
    from vidctrl.commands import export as export_commands
    from vidctrl.commands import model as model_commands
    from vidctrl.commands import train as train_command

    train_command.register(commands)
    cache_command.register(commands)
    data_commands.register(commands)
    model_commands.register(commands)
    demo_command.register(commands, run_command=main)
    export_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    from vidctrl.config.fields import ConfigError
    from vidctrl.data.records import DataError

    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError) as exc:
        # A data problem is the user's to fix: say what and where, without a traceback.
        text = str(exc)
        print(text if text.startswith("error: ") else f"error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

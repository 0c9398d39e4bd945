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


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command; `parser` lets a caller that runs many (tests) build the parser once."""
    parser = parser or build_parser()
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    from vidctrl.errors import UserError, report_user_error

    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        # The user's to fix (a flag, a file, a damaged checkpoint): one line, no traceback. Any other
        # exception is a bug in vidctrl and keeps its traceback.
        report_user_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


"""`vidctrl train`: the seed systems' commands with only the script replaced.

    accelerate launch [accelerate flags] -m vidctrl train --preset wan2.1-fun-control-v1.1 [seed flags]
    vidctrl train config.yaml --learning_rate 1e-5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vidctrl.errors import report_user_error


def register(commands: argparse._SubParsersAction) -> None:
    from vidctrl.config.train import build_parser

    train = commands.add_parser("train", help="train a model (seed flags, YAML configs, presets)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from vidctrl.config.train import ConfigError, resolve
    from vidctrl.train.signals import TrainingStopped
    from vidctrl.train.trainer import TrainingError, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = resolve(args)
    except (ConfigError, ValueError) as exc:
        report_user_error(exc)
        return 2
    try:
        result = train(config)
    except TrainingStopped as stopped:  # SIGTERM/SIGINT with --save_on_signal: saved, say where to resume
        print(f"vidctrl: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except (ConfigError, TrainingError) as exc:
        report_user_error(exc)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
        print(f"trained {result.global_step} steps; output in {result.output_dir}")
        if result.skipped_samples:
            print(f"skipped {result.skipped_samples} samples that could not be loaded (see the log)")
    return 0

"""`vidctrl cache`: precompute latents and text embeddings once, then train with `--load_tensors`.

    accelerate launch [the training's accelerate flags] -m vidctrl cache --preset P [the training flags]
    accelerate launch [...] -m vidctrl train --preset P [the training flags] --load_tensors

Takes `vidctrl train`'s flags and plans the first epoch as training does (same processes, same
seed); writes OUTPUT_DIR/cache, or --cache_dir. A rerun completes an interrupted cache and reuses a
complete one; after a change of encoder, sampling or bucket settings it writes a new one.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidctrl.errors import report_user_error


def register(commands: argparse._SubParsersAction) -> None:
    from vidctrl.cache.build import DEFAULT_SHARD_MIB
    from vidctrl.config.train import build_parser

    cache = commands.add_parser("cache", help="precompute latents and text embeddings for --load_tensors",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser(cache)
    cache.add_argument("--cache_shard_mib", type=float, default=DEFAULT_SHARD_MIB,
                       help="write a shard every this many MiB of tensors (what each process holds in RAM)")
    cache.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from vidctrl.cache.build import build_cache
    from vidctrl.cache.store import CacheError
    from vidctrl.config.train import ConfigError, resolve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = resolve(args)
    except (ConfigError, ValueError) as exc:
        report_user_error(exc)
        return 2
    if args.cache_shard_mib <= 0:
        print("error: --cache_shard_mib must be positive", file=sys.stderr)
        return 2
    try:
        report = build_cache(config, shard_mib=args.cache_shard_mib)
    except CacheError as exc:
        report_user_error(exc)
        return 1
    if report.main_process:
        for problem in report.repaired:
            print(f"re-encoded damaged cache file {problem}")
        print(f"cache at {report.cache_dir}: {report.records} samples ({report.encoded} encoded now, {report.reused} "
              f"already there, {report.skipped} could not be loaded), {report.total_bytes / 2**20:.1f} MiB")
    return 0

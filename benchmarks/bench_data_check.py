"""`vidctrl data check` throughput on 720p videos, and the time it implies for 10,000 samples.

Samples are hard links to a few synthetic 1280x720 H.264 sources (10 s, 24 fps, keyframe every 60
frames), each with a control video of the same kind, so every sample is opened, probed and
decoded at its end like a distinct file. Side by side in one run: the full check (headers probed,
the last GOP of target and control decoded to catch truncation), a header-only pass (what
`data convert` does to fill a manifest), and the media part of the check done both ways: each file
opened once for its header and its end (`probe(path, verify=True)`, what the check does) and
opened twice (`probe` then `verify_decodable`, what it did before); the last line is their ratio.

    .venv/bin/python benchmarks/bench_data_check.py [--samples 300] [--workers 2] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_clip_loading import make_sources
from vidctrl.data.check import InspectSettings, check_records
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.layouts import load_dataset
from vidctrl.data.video import probe, verify_decodable


def build(root: Path, sources: list[Path], samples: int) -> Path:
    entries = []
    for i in range(samples):
        target, control = root / f"v{i:06d}.mp4", root / f"p{i:06d}.mp4"
        os.link(sources[i % len(sources)], target)
        os.link(sources[(i + 1) % len(sources)], control)
        entries.append({"file_path": target.name, "control_file_path": control.name, "text": f"clip {i}",
                        "type": "video"})
    meta = root / "metadata.json"
    meta.write_text(json.dumps(entries))
    return meta


def open_once(paths: list[str]) -> int:
    for path in paths:
        probe(path, verify=True)
    return len(paths)


def open_twice(paths: list[str]) -> int:
    for path in paths:
        verify_decodable(path, probe(path))
    return len(paths)


def media_pass(how, paths: list[str], workers: int) -> float:
    """Seconds to run `how` over `paths` in `workers` processes (pool start-up not counted)."""
    chunks = [paths[i : i + 16] for i in range(0, len(paths), 16)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(len, [[]] * workers))  # start the workers before the clock
        start = time.perf_counter()
        assert sum(pool.map(how, chunks)) == len(paths)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "vidctrl-bench-sources")
    args = parser.parse_args()
    sources = make_sources(args.cache_dir, videos=3, seconds=10.0, fps=24, gop=60)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        meta = build(Path(tmp), sources, args.samples)
        config = DataConfig(train_data_meta=meta, train_data_dir=Path(tmp), video_sample_n_frames=49,
                            video_sample_stride=2)
        records = load_dataset(config).records
        rules = ClipRules.from_config(config)
        for name, deep in (("full check", True), ("headers only", False)):
            start = time.perf_counter()
            report = check_records(records, InspectSettings(rules=rules, deep=deep), workers=args.workers)
            elapsed = time.perf_counter() - start
            assert report.ok, report.problems[:3]
            rows.append((name, elapsed))
        paths = [p for r in records for p in (r.media, r.control) if p]
        media = [(name, media_pass(how, paths, args.workers)) for name, how in
                 (("media, 1 open", open_once), ("media, 2 opens", open_twice))]
    rows += media
    print(f"\n{args.samples} samples (720p target + 720p control each), {args.workers} worker processes")
    print(f"{'pass':<14} {'samples/s':>10} {'10,000 samples':>15} {'ratio':>7}")
    base = rows[0][1]
    for name, elapsed in rows:
        rate = args.samples / elapsed
        print(f"{name:<14} {rate:>10.1f} {10_000 / rate / 60:>12.1f} min {elapsed / base:>7.2f}")
    (_, once), (_, twice) = media
    print(f"opening each file once instead of twice: {twice / once:.2f}x as fast ({once:.2f} s vs {twice:.2f} s)")


if __name__ == "__main__":
    main()

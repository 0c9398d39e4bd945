"""Scale: a 1,000,000-record manifest loads and plans its buckets in seconds and under 1 GiB.

Side by side in one run, each in a fresh process (so peak memory is its own):
  columnar  vidctrl's `Manifest.read` (pyarrow) + bucket keys + one epoch's batch schedule
  dicts     the seeds' way: `json.loads` of every line into a list of dicts, then the same plan

    .venv/bin/python benchmarks/bench_manifest_scale.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
start = time.perf_counter()
mode, path = sys.argv[1], sys.argv[2]
from vidctrl.data.buckets import closest_ratio_index
from vidctrl.data.sampler import BatchShape, BucketBatchSampler
if mode == "columnar":
    # what training runs: the real shaper (buckets, token-length sizes, clip lengths) on the manifest
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.config import DataConfig
    from vidctrl.data.manifest import Manifest
    from vidctrl.data.shapes import BucketShaper
    manifest = Manifest.read(path)
    config = DataConfig(enable_bucket=True, random_hw_adapt=True, training_with_video_token_length=True,
                        video_sample_size=256, image_sample_size=1024, video_sample_stride=2)
    shaper = BucketShaper(manifest, config, ClipRules.from_config(config))
else:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    heights = np.array([r["height"] for r in rows]); widths = np.array([r["width"] for r in rows])
    is_video = np.array([r["kind"] == "video" for r in rows])
    keys = is_video.astype(np.int64) * 1024 + np.asarray(closest_ratio_index(heights, widths), dtype=np.int64)
    class Shaper:
        def bucket_keys(self): return keys
        def batch_shape(self, key, members, rng): return BatchShape(512, 512, 49)
    shaper = Shaper()
sampler = BucketBatchSampler(shaper, np.arange(len(shaper.bucket_keys())), batch_size=8, seed=0, num_replicas=8,
                             rank=3)
batches = len(sampler)
first = next(iter(sampler))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "batches": batches}))
"""


def write_manifest(path: Path, records: int) -> None:
    rng = random.Random(0)
    sizes = [(720, 1280), (1080, 1920), (1280, 720), (512, 512), (480, 848), (1024, 768)]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            h, w = rng.choice(sizes)
            kind = "video" if rng.random() < 0.9 else "image"
            handle.write(json.dumps({
                "media": f"videos/{i:08d}.mp4", "control": f"poses/{i:08d}.mp4", "kind": kind,
                "caption": f"A person in a {rng.choice(['red', 'blue', 'green'])} shirt dances in clip {i}.",
                "frames": rng.randint(49, 600) if kind == "video" else 1, "fps": 24.0, "width": w, "height": h,
            }) + "\n")


def run(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        start = time.perf_counter()
        write_manifest(path, args.records)
        print(f"wrote {args.records:,} records ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        columnar, dicts = run("columnar", path), run("dicts", path)
    print(f"\nload + bucket plan + epoch schedule of {args.records:,} records (fresh process each)")
    print(f"{'reader':<10} {'seconds':>8} {'peak GiB':>9} {'time ratio':>11} {'memory ratio':>13}")
    for name, row in (("columnar", columnar), ("dicts", dicts)):
        print(f"{name:<10} {row['seconds']:>8.2f} {row['peak_gib']:>9.2f} "
              f"{row['seconds'] / columnar['seconds']:>11.2f} {row['peak_gib'] / columnar['peak_gib']:>13.2f}")
    print(f"(this process peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()

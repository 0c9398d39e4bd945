"""Latent caching: training steps/s with cached latents (`--load_tensors`) against on-the-fly encoding.

Both runs train the same tiny model (random weights in the release layout, `vidctrl model tiny`) on
the same built-in sample data with the same flags and seed; the cached run first writes its cache
with `vidctrl cache` (timed separately: a one-off cost that later runs reuse). Step time is measured
between the first and the last optimizer step (set-up excluded) from `metrics.jsonl`, as wall time and
as CPU time of the process, which a shared machine's load inflates less. The on-the-fly run decodes
each clip and runs the VAE, the text encoder (and, for Wan, CLIP) every step; the cached run reads
safetensors. Epoch 0 of both runs trains on the same samples (the check at the end).

    .venv/bin/python benchmarks/bench_cache.py [--preset wan2.1-fun-control-v1.1] [--steps 40] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vidctrl.cli import main as vidctrl


def step_times(out: Path) -> tuple[float, float, float]:
    """(wall s/step, CPU s/step, mean encode-phase s/step) between the first and the last step."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = len(rows) - 1
    return ((rows[-1]["time"] - rows[0]["time"]) / steps, (rows[-1]["cpu_time"] - rows[0]["cpu_time"]) / steps,
            statistics.mean(r.get("time/encode", 0.0) for r in rows[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="wan2.1-fun-control-v1.1")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=64, help="training side in pixels")
    parser.add_argument("--frames", type=int, default=None, help="9 (DynamiCtrl: 5, an even latent count)")
    parser.add_argument("--videos", type=int, default=8)
    args = parser.parse_args()
    args.frames = args.frames or (5 if args.preset == "dynamictrl" else 9)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, model = root / "data", root / "model"
        layout = "dynamictrl" if args.preset == "dynamictrl" else "videox"
        assert vidctrl(["data", "sample", "--out", str(data), "--layout", layout, "--num_videos", str(args.videos),
                        "--num_images", "0"]) == 0
        assert vidctrl(["model", "tiny", "--preset", args.preset, "--out", str(model)]) == 0
        if layout == "dynamictrl":
            sizes = ["--data_root", str(data), "--height_buckets", str(args.size), "--width_buckets", str(args.size),
                     "--frame_buckets", str(args.frames), "--max_num_frames", str(args.frames), "--lr_warmup_steps", "0"]
        else:
            sizes = ["--train_data_meta", str(data / "metadata.json"), "--train_data_dir", str(data),
                     "--video_sample_size", str(args.size), "--image_sample_size", str(args.size),
                     "--token_sample_size", str(args.size), "--video_sample_n_frames", str(args.frames),
                     "--video_sample_stride", "1"]
        common = ["--preset", args.preset, "--pretrained_model_name_or_path", str(model), *sizes, "--seed", "3",
                  "--max_train_steps", str(args.steps), "--checkpointing_steps", str(10 * args.steps),
                  "--report_to", "none", "--learning_rate", "1e-4", "--dataloader_num_workers", "0"]

        assert vidctrl(["train", *common, "--output_dir", str(root / "on_the_fly")]) == 0
        start = time.perf_counter()
        assert vidctrl(["cache", *common, "--output_dir", str(root / "cached")]) == 0
        cache_seconds = time.perf_counter() - start
        assert vidctrl(["train", *common, "--output_dir", str(root / "cached"), "--load_tensors"]) == 0

        fly, cached = step_times(root / "on_the_fly"), step_times(root / "cached")
        index = json.loads((root / "cached" / "cache" / "index.json").read_text())
        records, batch = len(index["records"]), index["global_batch_size"]
        losses = [[json.loads(line)["loss"] for line in (root / run / "metrics.jsonl").read_text().splitlines()]
                  for run in ("on_the_fly", "cached")]
    print(f"\nlatent cache, tiny {args.preset}, {args.size}x{args.size}x{args.frames}, batch 1, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'run':<12} {'steps/s':>8} {'wall s/step':>12} {'CPU s/step':>11} {'encode s/step':>14}")
    for name, (wall, cpu, encode) in (("on the fly", fly), ("cached", cached)):
        print(f"{name:<12} {1 / wall:>8.2f} {wall:>12.4f} {cpu:>11.4f} {encode:>14.4f}")
    print(f"speed-up (steps/s cached / on the fly): wall {fly[0] / cached[0]:.2f}x, CPU {fly[1] / cached[1]:.2f}x")
    saved = fly[0] - cached[0]
    print(f"`vidctrl cache`: {cache_seconds:.1f} s for {records} samples ({index['bytes'] / 2**20:.2f} MiB); "
          f"pays for itself after {cache_seconds / saved:.0f} steps" if saved > 0 else "")
    epoch_0 = records // batch
    same = losses[0][:epoch_0] == losses[1][:epoch_0]
    print(f"epoch 0 ({epoch_0} steps): losses {'identical' if same else 'DIFFER'} between the two runs")


if __name__ == "__main__":
    main()

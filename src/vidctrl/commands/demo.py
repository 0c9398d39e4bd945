"""`vidctrl demo`: the main job on built-in data, end to end, in a couple of minutes on a CPU.

Until the training engine lands this runs the whole data pipeline: write the synthetic pose
dataset, check it, plan its buckets, load an epoch of same-shape batches in worker processes,
and resume the sampler mid-epoch to show that the remaining batches come back exactly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="run the main job on built-in synthetic data")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for everything the demo writes")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    demo.set_defaults(func=run_demo)


def _describe(batch: dict) -> str:
    pixels = batch["pixels"]
    names = ", ".join(Path(m).name for m in batch["media"])
    control = "control" if "control" in batch else "no control"
    return f"{tuple(pixels.shape)} {pixels.dtype} + {control}: {names}"


def run_demo(args: argparse.Namespace) -> int:
    from vidctrl.data.check import InspectSettings, check_records
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.config import DataConfig
    from vidctrl.data.layouts import load_dataset, write_layout
    from vidctrl.data.loader import build_loader, load_manifest
    from vidctrl.data.shapes import plan_table
    from vidctrl.data.synthetic import make_sample_dataset

    out: Path = args.out
    data_dir = out / "data"
    started = time.perf_counter()
    print(f"[1/5] writing the built-in pose dataset to {data_dir}")
    records = make_sample_dataset(data_dir, num_videos=8, num_images=4, seed=0)
    meta = write_layout(records, data_dir, "videox")
    print(f"      {len(records)} samples (VideoX-Fun layout): {meta}")

    config = DataConfig(
        train_data_meta=meta,
        train_data_dir=data_dir,
        video_sample_n_frames=13,
        video_sample_stride=1,
        video_sample_size=64,
        image_sample_size=96,
        token_sample_size=64,
        enable_bucket=True,
        random_hw_adapt=True,
        training_with_video_token_length=True,
        train_batch_size=2,
        dataloader_num_workers=args.workers,
        seed=42,
    )
    print("[2/5] vidctrl data check")
    imported = load_dataset(config)
    report = check_records(
        imported.records,
        InspectSettings(rules=ClipRules.from_config(config, layout=imported.layout)),
        import_problems=imported.problems,
    )
    for problem in report.problems:
        print(f"      {problem}")
    summary = report.summary()
    print(f"      {summary['samples']} samples: {summary['good_samples']} good, {summary['bad_samples']} bad")
    if not report.ok:
        return 1

    print("[3/5] vidctrl data plan (size -> frames -> tokens)")
    for row in plan_table(config):
        print(f"      {row['size']:>5} {row['frames']:>4} {row['tokens']:>6}")

    print(f"[4/5] one epoch of bucketed batches, decoded in {args.workers} worker processes")
    loaded = load_manifest(config)
    loader = build_loader(config, loaded=loaded)
    batches = []
    decode_start = time.perf_counter()
    for batch in loader:
        batches.append(batch)
        print(f"      step {len(batches) - 1}: {_describe(batch)}")
    decode_time = time.perf_counter() - decode_start
    clips = sum(b["size"] for b in batches)
    print(f"      {clips} clips in {decode_time:.2f} s ({clips / decode_time:.1f} clips/s)")

    print("[5/5] resume mid-epoch: a fresh loader restored from the state after 2 batches")
    loader = build_loader(config, loaded=loaded)
    for taken, _ in enumerate(loader, start=1):
        if taken == 2:
            break
    state = loader.state_dict()
    resumed = build_loader(config, loaded=loaded)
    resumed.load_state_dict(state)
    rest = list(resumed)
    same = len(rest) == len(batches) - 2 and all(
        a["index"] == b["index"] and torch.equal(a["pixels"], b["pixels"]) for a, b in zip(rest, batches[2:], strict=True)
    )
    print(f"      state {state}: {len(rest)} remaining batches, identical to the uninterrupted epoch: {same}")
    print(f"done in {time.perf_counter() - started:.1f} s; dataset at {data_dir}")
    return 0 if same else 1

"""`vidctrl demo`: the main job, for real, on built-in data, in a few minutes on a CPU.

It writes the synthetic pose dataset (a procedurally animated figure and its OpenPose-style
skeleton video), checks it, builds a tiny Wan2.1-Fun V1.1 Control model in the layout of the real
checkpoint, trains it with the seed system's flags, stops half-way, resumes from the checkpoint,
validates (reference image + pose video -> generated video) and draws the loss curve.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from vidctrl.config.fields import int_at_least

PRESET = "wan2.1-fun-control-v1.1"


def register(commands: argparse._SubParsersAction, run_command: Callable[[list[str]], int]) -> None:
    """Add `vidctrl demo`; `run_command` runs one vidctrl command line (the CLI's `main`, passed in so
    that this module does not import the CLI that imports it)."""
    demo = commands.add_parser("demo", help="train a tiny pose-control model on built-in data, end to end")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for everything the demo writes")
    demo.add_argument("--steps", type=int_at_least(2), default=100, help="optimizer steps (half before the resume, half after)")
    demo.add_argument("--workers", type=int_at_least(0), default=1, help="DataLoader worker processes")
    demo.set_defaults(func=run_demo, run_command=run_command)


def _say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def _first_frame(video: Path, image: Path) -> None:
    """The validation reference: the person as the first frame of a training video shows them."""
    import numpy as np

    from vidctrl.data.video import read_frames, write_image

    write_image(image, read_frames(video, np.array([0]))[0])


def run_demo(args: argparse.Namespace) -> int:
    vidctrl: Callable[[list[str]], int] = args.run_command
    out: Path = args.out.resolve()
    data, model, run = out / "data", out / "model", out / "run"
    started = time.perf_counter()

    _say("1/6", f"vidctrl data sample --out {data}")
    if vidctrl(["data", "sample", "--out", str(data), "--layout", "videox", "--num_videos", "6", "--num_images", "0"]):
        return 1
    meta = data / "metadata.json"
    data_flags = ["--train_data_meta", str(meta), "--train_data_dir", str(data)]
    sampling = ["--video_sample_size", "64", "--image_sample_size", "64", "--token_sample_size", "64",
                "--video_sample_n_frames", "9", "--video_sample_stride", "2", "--enable_bucket"]

    _say("2/6", "vidctrl data check (the same data flags as training)")
    if vidctrl(["data", "check", *data_flags, *sampling, "--workers", "1"]):
        return 1

    _say("3/6", f"vidctrl model tiny --preset {PRESET} (random weights, the real checkpoint's layout)")
    if vidctrl(["model", "tiny", "--preset", PRESET, "--out", str(model)]):
        return 1

    entries = json.loads(meta.read_text())
    reference = data / "validation_reference.png"
    _first_frame(data / entries[0]["file_path"], reference)
    validation = [
        "--validation_steps", str(args.steps), "--validation_prompts", entries[0]["text"],
        "--validation_control_videos", str(data / entries[0]["control_file_path"]),
        "--validation_images", str(reference),
        "--validation_num_inference_steps", "8", "--validation_frames", "9", "--validation_guidance_scale", "1",
    ]
    # The Wan2.1-Fun V1.1 seed command's flags, at a size a CPU trains in minutes.
    train = [
        "train", "--preset", PRESET, "--pretrained_model_name_or_path", str(model), *data_flags, *sampling,
        "--train_batch_size", "1", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", str(args.workers),
        "--learning_rate", "2e-3", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "5",
        "--adam_weight_decay", "3e-2", "--adam_epsilon", "1e-10", "--max_grad_norm", "1.0", "--seed", "42",
        "--train_mode", "control_ref", "--control_ref_image", "random", "--add_full_ref_image_in_self_attention",
        "--uniform_sampling", "--trainable_modules", ".", "--checkpointing_steps", str(args.steps // 2),
        "--report_to", "tensorboard", "--output_dir", str(run),
    ]
    half = args.steps // 2
    _say("4/6", f"vidctrl train ... --max_train_steps {half}  (then the run stops)")
    if vidctrl([*train, "--max_train_steps", str(half)]):
        return 1
    _say("5/6", f"vidctrl train ... --max_train_steps {args.steps} --resume_from_checkpoint latest (+ validation)")
    if vidctrl([*train, "--max_train_steps", str(args.steps), "--resume_from_checkpoint", "latest", *validation]):
        return 1

    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    _say("6/6", f"loss {first:.3f} (first {tenth} steps) -> {last:.3f} (last {tenth} steps)")
    validation_dir = run / "validation" / f"step-{args.steps}"
    print(f"checkpoint:     {run / f'checkpoint-{args.steps}'}")
    print(f"validation mp4: {validation_dir / 'sample-0.mp4'}")
    print(f"contact sheet:  {validation_dir / 'sample-0.png'}  (reference | pose | generated)")
    print(f"loss curve:     {run / 'loss_curve.png'}")
    print(f"tensorboard:    tensorboard --logdir {run / 'logs'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0 if last < first else 1

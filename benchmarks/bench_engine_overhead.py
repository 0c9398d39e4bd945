"""Engine overhead: vidctrl's training step against a bare hand-written loop, side by side.

Both loops train the same tiny Wan2.1-Fun Control model on the same batches of the built-in sample
data, with the same family encoding, objective and AdamW. The bare loop is what one would write by
hand (no accelerate, no checkpoints, no trackers, no timers); vidctrl runs `vidctrl train`. Step time
is measured between the first and the last optimizer step (setup excluded), as wall time and as
CPU time of the process (the latter is what a shared machine's load does not inflate), in rounds
that alternate the two loops.

    .venv/bin/python benchmarks/bench_engine_overhead.py [--steps 40] [--rounds 3]
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

PRESET = "wan2.1-fun-control-v1.0"
SIZES = ["--video_sample_size", "64", "--image_sample_size", "64", "--token_sample_size", "64",
         "--video_sample_n_frames", "9", "--video_sample_stride", "1", "--enable_bucket", "--seed", "3"]


def vidctrl_step_time(model: Path, data: Path, out: Path, steps: int) -> tuple[float, float]:
    code = vidctrl(["train", "--preset", PRESET, "--pretrained_model_name_or_path", str(model), "--train_data_meta",
                    str(data / "metadata.json"), "--train_data_dir", str(data), "--output_dir", str(out), *SIZES,
                    "--max_train_steps", str(steps), "--checkpointing_steps", str(10 * steps), "--report_to", "none",
                    "--learning_rate", "1e-4", "--trainable_modules", "."])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the last step writes the final checkpoint after logging: not in the window
    return ((rows[-1]["time"] - rows[0]["time"]) / (len(rows) - 1),
            (rows[-1]["cpu_time"] - rows[0]["cpu_time"]) / (len(rows) - 1))


def bare_step_time(model: Path, data: Path, steps: int) -> tuple[float, float]:
    from vidctrl.config.train import parse_train_config
    from vidctrl.data.loader import build_loader
    from vidctrl.families.wan_fun import WanFunControl

    config = parse_train_config(["--preset", PRESET, "--pretrained_model_name_or_path", str(model),
                                 "--train_data_meta", str(data / "metadata.json"), "--train_data_dir", str(data),
                                 *SIZES])
    torch.manual_seed(3)
    family = WanFunControl.from_config(config)
    family.load(model, dtype=torch.float32, device=torch.device("cpu"))
    net = family.denoiser
    net.train()
    objective = family.build_objective(config.objective, rank=0, world_size=1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, eps=1e-10)
    loader = build_loader(config.data)
    generator = torch.Generator().manual_seed(3)
    stamps = []
    step = 0
    while step < steps:
        for batch in loader:
            encoded = family.encode(batch, generator=generator)
            noised = objective.prepare(encoded.latents, generator)
            loss = objective.loss(family.predict(net, encoded, noised.noisy, noised.timestep).float(), noised)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            stamps.append((time.time(), time.process_time()))
            if step == steps:
                break
    return ((stamps[-1][0] - stamps[0][0]) / (len(stamps) - 1), (stamps[-1][1] - stamps[0][1]) / (len(stamps) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assert vidctrl(["data", "sample", "--out", str(root / "data"), "--num_videos", "6", "--num_images", "0"]) == 0
        assert vidctrl(["model", "tiny", "--preset", PRESET, "--out", str(root / "model")]) == 0
        bare, ours = [], []
        for r in range(args.rounds):
            bare.append(bare_step_time(root / "model", root / "data", args.steps))
            ours.append(vidctrl_step_time(root / "model", root / "data", root / f"run{r}", args.steps))
    bw, bc = (statistics.median(x[i] for x in bare) for i in (0, 1))
    ow, oc = (statistics.median(x[i] for x in ours) for i in (0, 1))
    print(f"\nengine overhead, tiny {PRESET}, 64x64x9, batch 1, {args.steps} steps x {args.rounds} rounds (median)")
    print(f"{'loop':<10} {'wall s/step':>12} {'ratio':>7} {'CPU s/step':>11} {'ratio':>7}")
    print(f"{'bare':<10} {bw:>12.4f} {1.0:>7.3f} {bc:>11.4f} {1.0:>7.3f}")
    print(f"{'vidctrl':<10} {ow:>12.4f} {ow / bw:>7.3f} {oc:>11.4f} {oc / bc:>7.3f}")


if __name__ == "__main__":
    main()

"""What a run tells the person watching it: trackers (tensorboard, wandb), a progress bar with
loss and ETA, `metrics.jsonl` (one line per optimizer step), and a loss-curve PNG at the end."""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vidctrl.config.train import TrainConfig

log = logging.getLogger(__name__)


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak resident memory on a CPU run."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def gif_bytes(frames: Any, fps: float) -> bytes:
    """(F, H, W, 3) uint8 frames as an endlessly looping animated GIF."""
    import io

    from PIL import Image

    pictures = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=max(1, round(1000 / fps)), loop=0)
    return buffer.getvalue()


class Tracker:
    """Logs each optimizer step to the trackers, the progress bar and `metrics.jsonl`."""

    def __init__(self, accelerator: Accelerator, config: TrainConfig, *, output_dir: Path, total_steps: int,
                 initial_step: int = 0) -> None:
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        if accelerator.log_with:
            flat = {f"{section}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for section, values in config.to_dict().items() if isinstance(values, dict)
                    for k, v in values.items()}
            accelerator.init_trackers(config.run.tracker_project_name, config=flat)
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", disable=not self.main,
                        dynamic_ncols=True, file=sys.stderr)
        if self.main:
            output_dir.mkdir(parents=True, exist_ok=True)

    def log_step(self, step: int, *, loss: float, lr: float, grad_norm: float | None, samples_per_s: float,
                 tokens_per_s: float, epoch: int, phases: dict[str, float], skipped: int) -> None:
        values: dict[str, Any] = {
            "loss": loss,
            "lr": lr,
            "samples_per_s": samples_per_s,
            "tokens_per_s": tokens_per_s,
            "peak_memory_gib": peak_memory_gib(self.accelerator.device),
            "epoch": epoch,
            "skipped_samples": skipped,
        }
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        values.update({f"time/{name}": seconds for name, seconds in phases.items()})
        self.accelerator.log(values, step=step)
        if self.main:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "time": time.time(), "cpu_time": time.process_time(),
                                         **values}) + "\n")
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)

    def event(self, text: str) -> None:
        if self.main:
            self.bar.write(text, file=sys.stderr)

    def log_validation(self, step: int, name: str, *, video: torch.Tensor, fps: float, mp4: Path,
                       sheet: Path) -> None:
        """A validation video and its contact sheet to the trackers: tensorboard gets the sheet as an
        image and the video as an animated GIF image summary (what its `add_video` writes, without
        the moviepy it needs), wandb the mp4 and the PNG as written. `video` is (F, 3, H, W) uint8."""
        import numpy as np
        from PIL import Image

        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                from tensorboard.compat.proto.summary_pb2 import Summary

                with Image.open(sheet) as image:
                    tracker.writer.add_image(f"validation/{name}/contact_sheet", np.asarray(image.convert("RGB")),
                                             step, dataformats="HWC")
                frames = video.permute(0, 2, 3, 1).cpu().numpy()
                _, height, width, _ = frames.shape
                summary = Summary(value=[Summary.Value(tag=f"validation/{name}/video", image=Summary.Image(
                    height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps)))])
                tracker.writer._get_file_writer().add_summary(summary, step)
                tracker.writer.flush()
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{name}/video": wandb.Video(str(mp4), fps=fps, format="mp4"),
                             f"validation/{name}/contact_sheet": wandb.Image(str(sheet))}, step=step)

    def close(self, result: Any) -> None:
        self.bar.close()
        if not (self.main and self.metrics_path.exists()):
            return
        from vidctrl.train.media import loss_curve_png

        # The whole run, across resumes: the latest value logged for each step up to this one.
        by_step: dict[int, float] = {}
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["step"] <= result.global_step:
                by_step[row["step"]] = row["loss"]
        if by_step:
            steps = sorted(by_step)
            loss_curve_png(self.output_dir / "loss_curve.png", steps, [by_step[s] for s in steps],
                           title="training loss")

"""The settings of `vidctrl data prepare`: one typed field per flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vidctrl.config.fields import option

Layout = Literal["videox", "dynamictrl", "controlnext", "manifest"]
Device = Literal["auto", "cpu", "cuda"]
MediaMode = Literal["copy", "symlink"]


@dataclass
class PrepareConfig:
    """From a folder of raw videos to a dataset: pose videos, per-frame boxes, captions, one layout."""

    # --- in and out --------------------------------------------------------------------------
    videos: Path | None = option(None, help="folder of raw videos (searched recursively)")
    out: Path | None = option(None, help="dataset folder to write (a rerun resumes in it)")
    layout: Layout = option("videox", help="dataset layout to write")
    media: MediaMode = option(
        "copy",
        help="how a video that needs no re-encoding gets into OUT/videos: a copy or a symlink "
        "(cut, resampled, cropped and non-mp4 videos are always re-encoded)",
    )
    crf: int = option(18, help="x264 quality of re-encoded videos (lower is better)", min=0, max=51)
    overwrite: bool = option(False, help="redo every video, even when OUT holds a finished one")
    output_dir_lock_timeout: float = option(
        600.0, help="seconds without a heartbeat after which another run's lock on OUT counts as left by a "
        "dead run and is taken over", gt=0,
    )
    force_output_dir_lock: bool = option(False, help="take over OUT's lock even when its owner looks alive")

    # --- pose --------------------------------------------------------------------------------
    pose_model_dir: Path | None = option(
        None, help="folder with DWPose's yolox_l.onnx and dw-ll_ucoco_384.onnx (huggingface.co/yzd-v/DWPose)"
    )
    det_model: Path | None = option(
        None, help="the YOLOX person detector .onnx (instead of --pose_model_dir)"
    )
    pose_model: Path | None = option(None, help="the DWPose whole-body .onnx (instead of --pose_model_dir)")
    pose_device: Device = option("auto", help="where ONNX Runtime runs (auto: CUDA when available)")
    pose_batch_size: int = option(8, help="frames per detector call and person crops per pose call", min=1)
    draw_face: bool = option(True, help="draw the 68 face points in the pose videos, as DWPose does")
    workers: int = option(1, help="processes that estimate poses, one video each at a time", min=1)
    threads: int | None = option(
        None, help="ONNX Runtime threads per worker (default: the CPU cores divided by --workers)",
        min=1,
    )

    # --- captions ----------------------------------------------------------------------------
    caption_model: Path | None = option(
        None, help="local Qwen2-VL or Qwen2.5-VL folder that writes the captions"
    )
    caption_from: Path | None = option(
        None, help="text file of NAME#####caption (or NAME<TAB>caption) lines, NAME the video's file name"
    )
    caption: str | None = option(None, help="one caption for every video")
    caption_prompt: str | None = option(
        None,
        help="question put to the caption model (default: the action, the person's appearance, the background)",
    )
    caption_frames: int = option(1, help="frames of each clip shown to the caption model", min=1)
    caption_batch_size: int = option(4, help="clips captioned per model call", min=1)
    caption_max_new_tokens: int = option(160, help="longest caption, in tokens", min=1)
    caption_device: Device = option("auto", help="where the caption model runs")

    # --- clips -------------------------------------------------------------------------------
    fps: float | None = option(None, help="resample every video to this frame rate", gt=0)
    clip_min_frames: int = option(1, help="leave out videos (and cut clips) shorter than this", min=1)
    clip_max_frames: int | None = option(
        None, help="cut longer videos into consecutive clips of this many frames",
        min=1,
    )


__all__ = ["Device", "Layout", "MediaMode", "PrepareConfig"]

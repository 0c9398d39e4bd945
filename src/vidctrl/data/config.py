"""The data section of the config: every data flag of the seed systems, one typed field each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vidctrl.config.fields import option

FrameSampling = Literal["videox", "dynamictrl", "controlnext"]
ControlFramePolicy = Literal["error", "resample"]
BadSamplePolicy = Literal["lenient", "strict"]
SizeWeighting = Literal["closest", "uniform"]


@dataclass
class DataConfig:
    """Where the data is, how clips are cut from it, and how batches are shaped."""

    # --- where the data is (exactly one source) -------------------------------------------
    train_data_meta: Path | None = option(
        None,
        help="VideoX-Fun/EasyAnimate/CogVideoX-Fun metadata (JSON list or CSV), or a vidctrl manifest (.jsonl)",
    )
    train_data_dir: Path | None = option(
        None, help="folder that relative paths in --train_data_meta are joined to"
    )
    data_root: Path | None = option(
        None, help="DynamiCtrl dataset folder (videos/, poses/, video.txt, prompts.txt)"
    )
    video_column: str = option("video.txt", help="DynamiCtrl: file under --data_root listing the videos")
    caption_column: str = option(
        "prompts.txt", help="DynamiCtrl: file under --data_root with `NAME#####caption` lines"
    )
    meta_info_path: Path | None = option(
        None, help="ControlNeXt meta_info.json (video_path, guide_path, meta_info per entry)"
    )
    manifest: Path | None = option(None, help="vidctrl manifest (.jsonl) with probed metadata")
    dataset_type: str | None = option(
        None, help="ControlNeXt spelling of the dataset kind ('ubc' = pose-video folder dataset)"
    )

    # --- frame sampling ---------------------------------------------------------------------
    frame_sampling: FrameSampling | None = option(
        None,
        help="clip sampling rule: videox (stride + drop start/end), dynamictrl (contiguous window), "
        "controlnext (interval_frame); default follows the data source",
    )
    video_sample_n_frames: int = option(
        49, help="frames per training clip", flags=["--sample_n_frames", "--max_num_frames"],
        min=1,
    )
    video_sample_stride: int = option(4, help="step between sampled frames", min=1)
    interval_frame: int | None = option(
        None, help="ControlNeXt: step between sampled frames, 0 = random 2-7 per clip (default 1; controlnext "
        "frame sampling only: elsewhere --video_sample_stride is the step)", min=0,
    )
    # VideoX-Fun's ImageVideoControlDataset default since 3403651 (2026-04-16); docs/data-semantics.md
    video_length_drop_start: float = option(
        0.0, help="fraction of each video skipped at the start", min=0, lt=1
    )
    video_length_drop_end: float = option(
        1.0, help="fraction of each video after which frames are skipped", gt=0, max=1
    )
    random_frame_crop: bool = option(
        False, help="randomly shorten clips to simulate videos of different lengths"
    )
    video_repeat: int = option(
        0, help="repeat every video record this many times per epoch (0 = once)", min=0
    )
    control_frame_policy: ControlFramePolicy = option(
        "error",
        help="a control whose frame count or fps differs from the target: error, or resample it by time",
    )

    # --- sizes and buckets ------------------------------------------------------------------
    image_sample_size: int = option(
        512, help="largest side of training images (and token-length sizes)", min=16
    )
    video_sample_size: int = option(512, help="side of training videos (smallest token-length size)", min=16)
    token_sample_size: int = option(
        512, help="side whose square times n_frames sets the token budget", min=16
    )
    fix_sample_size: list[int] | None = option(
        None, help="train at exactly HEIGHT WIDTH, no buckets",
        min=16,
    )
    height: int | None = option(
        None, help="fixed training height (ControlNeXt); with DynamiCtrl's size buckets, the validation height",
        min=16,
    )
    width: int | None = option(
        None, help="fixed training width (ControlNeXt); with DynamiCtrl's size buckets, the validation width",
        min=16,
    )
    height_buckets: list[int] | None = option(
        None, help="DynamiCtrl: training heights; each video is stretched to the (height, width) bucket pair "
        "nearest its size in |dh| + |dw| (dynamictrl frame sampling only)",
        min=16,
    )
    width_buckets: list[int] | None = option(
        None, help="DynamiCtrl: training widths (see --height_buckets)",
        min=16,
    )
    frame_buckets: list[int] | None = option(
        None, help="DynamiCtrl: clip lengths; each video gives the bucket nearest min(its length, "
        "--max_num_frames) (dynamictrl frame sampling only; default: --max_num_frames)",
        min=1,
    )
    enable_bucket: bool = option(False, help="group samples into aspect-ratio buckets instead of cropping")
    random_hw_adapt: bool = option(False, help="draw each batch's size between the sample sizes")
    training_with_video_token_length: bool = option(
        False, help="trade frames for resolution at a constant token budget"
    )
    # Each family's own draws (docs/data-semantics.md): VideoX-Fun Wan 0.90/closest, CogVideoX-Fun 0.75/uniform.
    downsample_first_prob: float = option(
        0.90, help="--random_hw_adapt: probability of keeping the full size; the smaller sizes share the rest",
        min=0, max=1,
    )
    size_weighting: SizeWeighting = option(
        "closest", help="--training_with_video_token_length: 'closest' gives the size nearest "
        "--token_sample_size probability 0.5 and the others the rest; 'uniform' draws every size alike"
    )

    # --- batches ----------------------------------------------------------------------------
    train_batch_size: int = option(
        1, help="samples per batch per process", flags=["--per_gpu_batch_size"], min=1
    )
    dataloader_num_workers: int = option(0, help="DataLoader worker processes that decode clips", min=0)
    seed: int | None = option(None, help="seed for sampling, shuffling and noise", min=0, max=2**32 - 1)
    bad_sample_policy: BadSamplePolicy = option(
        "lenient",
        help="a sample that fails to load: lenient skips it and counts it in the log, strict stops training",
    )

"""The typed sections of a training config. Each field names every seed flag that spells it.

`vidctrl train` parses these (plus `DataConfig` and the chosen family's options) from flags,
a YAML file and a preset, in that order of precedence (flags win).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vidctrl.config.fields import option

MixedPrecision = Literal["no", "fp16", "bf16"]
Optimizer = Literal["adamw", "adamw8bit", "came"]


@dataclass
class ModelConfig:
    """Which model, from where, trained how."""

    preset: str | None = option(None, help="model family and version, e.g. wan2.1-fun-control-v1.1")
    pretrained_model_name_or_path: Path | None = option(
        None, help="local folder with the base model (diffusers or original layout); nothing is downloaded"
    )
    config_path: str | None = option(
        None, help="a seed system's model YAML (e.g. config/wan2.1/wan_civitai.yaml) or a preset name"
    )
    transformer_path: Path | None = option(
        None, help="weights to load into the trainable model after the base model (a checkpoint or .safetensors)"
    )
    train_mode: str | None = option(None, help="how the control enters the model; the preset's default if unset")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass to save memory")
    trainable_modules: list[str] | None = option(
        None, help="train parameters whose name contains any of these substrings ('.' = all)"
    )
    trainable_modules_low_learning_rate: list[str] = option(
        help="of the trainable parameters, those matching these substrings train at a lower learning rate",
        default_factory=list,
    )
    low_vram: bool = option(False, help="keep frozen encoders off the accelerator between uses")
    vae_mini_batch: int = option(1, help="videos encoded by the VAE at a time", min=1)
    enable_slicing: bool = option(False, help="VAE slicing (decode batch elements one at a time)")
    enable_tiling: bool = option(False, help="VAE tiling (encode/decode in spatial tiles)")
    load_tensors: bool = option(
        False, help="train on the latents and text embeddings `vidctrl cache` wrote (same flags) instead of "
        "encoding every step; the VAE and the text/image encoders are not loaded"
    )
    cache_dir: Path | None = option(
        None, help="where `vidctrl cache` writes and --load_tensors reads the latent cache (default: "
        "OUTPUT_DIR/cache)"
    )
    # LoRA: an alternative to full fine-tuning (peft)
    use_lora: bool = option(False, help="train LoRA adapters instead of the full model")
    rank: int = option(64, help="LoRA rank", flags=["--lora_rank"], min=1)
    network_alpha: float = option(
        32.0, help="LoRA alpha (scale = alpha / rank)", flags=["--lora_alpha"], gt=0
    )
    lora_target_modules: list[str] | None = option(
        None, help="module name substrings that get LoRA adapters (the family's attention/FFN layers if unset)"
    )


@dataclass
class OptimConfig:
    """Optimizer, learning rate schedule and gradient handling."""

    learning_rate: float = option(1e-4, help="peak learning rate", gt=0)
    optimizer: Optimizer | None = option(
        None, help="adamw (the default), adamw8bit (bitsandbytes, CUDA) or came; --use_8bit_adam/--use_came are "
        "VideoX-Fun's spellings, and two spellings naming different optimizers are an error"
    )
    use_8bit_adam: bool = option(False, help="VideoX-Fun spelling of --optimizer adamw8bit")
    use_came: bool = option(False, help="VideoX-Fun spelling of --optimizer came")
    adam_beta1: float = option(0.9, help="Adam beta1", flags=["--beta1"], min=0, lt=1)
    adam_beta2: float = option(0.999, help="Adam beta2", flags=["--beta2"], min=0, lt=1)
    adam_weight_decay: float = option(1e-2, help="decoupled weight decay", flags=["--weight_decay"], min=0)
    adam_epsilon: float = option(1e-10, help="Adam epsilon", flags=["--epsilon"], gt=0)
    max_grad_norm: float = option(1.0, help="clip the global gradient norm to this (0 = off)", min=0)
    initial_grad_norm_ratio: float = option(
        1.0, help="VideoX-Fun: the clip limit starts at this multiple of max_grad_norm and decays to it",
        gt=0,
    )
    abnormal_norm_clip_start: int = option(
        1000, help="VideoX-Fun: steps of that decay; after them, gradients over 5x the limit are clipped harder",
        min=0,
    )
    lr_scheduler: str = option("constant", help="diffusers schedule: constant, constant_with_warmup, linear, "
                               "cosine, cosine_with_restarts, polynomial")
    lr_warmup_steps: int = option(0, help="optimizer steps of linear warmup", min=0)
    lr_num_cycles: int = option(1, help="cosine_with_restarts: number of restarts", min=1)
    lr_power: float = option(1.0, help="polynomial schedule power", gt=0)
    gradient_accumulation_steps: int = option(1, help="micro-batches per optimizer step", min=1)
    scale_lr: bool = option(False, help="multiply the learning rate by batch size, accumulation and processes")
    use_ema: bool = option(False, help="ControlNeXt-SVD: keep an EMA of the trained weights (refused until a preset "
                           "honours it)")


@dataclass
class RunConfig:
    """Length of the run, precision, checkpoints, logging."""

    output_dir: Path = option(Path("output_dir"), help="checkpoints, logs and validation videos go here")
    num_train_epochs: int = option(100, help="epochs to train (max_train_steps wins when set)", min=1)
    max_train_steps: int | None = option(None, help="optimizer steps to train", min=1)
    mixed_precision: MixedPrecision = option("no", help="no, fp16 or bf16")
    allow_tf32: bool = option(False, help="allow TF32 matmuls on Ampere+ GPUs")
    checkpointing_steps: int = option(500, help="save a checkpoint every N optimizer steps", min=1)
    checkpoints_total_limit: int | None = option(None, help="keep at most N checkpoints (the newest)", min=1)
    resume_from_checkpoint: str | None = option(None, help="a checkpoint folder, or 'latest'")
    resume_fallback: bool = option(
        False, help="with --resume_from_checkpoint latest: when the newest checkpoint has a damaged file, "
        "resume from the previous sound one (with a warning) instead of stopping"
    )
    report_to: str = option("tensorboard", help="tensorboard, wandb, all or none")
    tracker_project_name: str = option("vidctrl", help="project name for the trackers")
    logging_dir: str = option("logs", help="tracker folder under output_dir")
    use_deepspeed: bool = option(False, help="the seeds pass this to the script too; launch with accelerate's "
                                 "DeepSpeed flags")
    nccl_timeout: int = option(600, help="seconds a collective may wait before the run fails", min=1)
    pin_memory: bool = option(False, help="pin DataLoader memory (faster host-to-GPU copies)")
    nan_policy: Literal["stop", "skip"] = option(
        "stop", help="a NaN/inf loss or gradient: stop naming the step and samples, or skip the step"
    )
    # One run owns output_dir (vidctrl.run_lock): a second run into it is refused, a dead run's lock
    # is taken over.
    output_dir_lock_timeout: float = option(
        600.0, help="seconds without a heartbeat after which another run's lock on output_dir counts as "
        "left by a dead run and is taken over (the owner refreshes it every 30 s)", gt=0,
    )
    force_output_dir_lock: bool = option(
        False, help="take over output_dir's lock even when its owner looks alive (say so in the log); only "
        "for a run you know is dead"
    )
    save_on_signal: bool = option(
        True, help="on SIGTERM/SIGINT finish the optimizer step, save a checkpoint on every rank and exit "
        "non-zero (a second signal exits at once); false: Python's default (the run dies where it is)"
    )


@dataclass
class ValidationConfig:
    """Generate videos with the model being trained, from a reference image and a control video."""

    validation_steps: int | None = option(None, help="validate every N optimizer steps", min=1)
    validation_epochs: int | None = option(None, help="validate every N epochs", min=1)
    validation_prompts: list[str] | None = option(None, help="prompts", flags=["--validation_prompt"])
    validation_prompt_separator: str | None = option(None, help="split --validation_prompt on this (DynamiCtrl)")
    validation_images: list[str] | None = option(
        None, help="reference images, one per prompt", flags=["--validation_image"]
    )
    validation_control_videos: list[str] | None = option(
        None, help="control (pose) videos, one per prompt (Control-Camera: camera trajectory .txt files)",
        flags=["--validation_driving_videos"],
    )
    validation_image_folder: Path | None = option(None, help="ControlNeXt: ground-truth frames folder")
    validation_control_folder: Path | None = option(None, help="ControlNeXt: pose frames folder")
    num_validation_videos: int = option(1, help="videos per prompt", min=1)
    validation_num_inference_steps: int = option(25, help="sampling steps per validation video", min=1)
    validation_guidance_scale: float = option(6.0, help="classifier-free guidance scale", min=0)
    validation_height: int | None = option(
        None, help="validation height (the training size if unset)", min=16
    )
    validation_width: int | None = option(None, help="validation width", min=16)
    validation_frames: int | None = option(
        None, help="validation frames (video_sample_n_frames if unset)", min=1
    )
    validation_timeout: float = option(
        4 * 3600.0, help="seconds the other ranks wait while rank 0 validates alone (DDP, ZeRO-2); training "
        "collectives keep --nccl_timeout", gt=0,
    )


@dataclass
class ObjectiveConfig:
    """Noise, timesteps and loss (the family picks flow matching, DDPM, ...; these tune it)."""

    uniform_sampling: bool = option(False, help="rank-stratified timesteps: each process draws from its own "
                                    "slice of the schedule, so every step covers it evenly")
    weighting_scheme: Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"] = option(
        "none", help="timestep density / loss weighting (SD3 names)"
    )
    logit_mean: float = option(0.0, help="logit_normal: mean", min=None)
    logit_std: float = option(1.0, help="logit_normal: standard deviation", gt=0)
    mode_scale: float = option(1.29, help="mode: scale", min=0)
    train_sampling_steps: int = option(1000, help="timestep indices to draw from", min=1)
    motion_sub_loss: bool = option(False, help="add a loss on frame differences")
    motion_sub_loss_ratio: float = option(0.25, help="weight of the frame-difference loss", min=0)
    loss_type: Literal["flow", "ddpm"] | None = option(
        None, help="EasyAnimate: ddpm (V5) or flow (V5.1); other families have one objective"
    )

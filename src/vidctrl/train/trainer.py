"""The one training loop. It knows no model family: a `ModelFamily` encodes and predicts, an
objective noises and scores, and everything else (optimizer, checkpoints, data order, logging,
validation) is the same for every family.

    batch -> family.encode -> objective.prepare -> family.predict -> objective.loss
          -> agree -> backward -> clip -> step -> log -> checkpoint -> validate

It knows no engine either: `engines.py` hides what DDP, DeepSpeed ZeRO and FSDP2 do differently,
and `distributed.agree` makes every rank take the same decision at every step (`distributed.py`);
each sample draws its random numbers from its own streams (`microbatch.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidctrl.cache.loader import open_cache
from vidctrl.config.checks import check_input_files
from vidctrl.config.refusals import optimizer_name
from vidctrl.config.train import ConfigError, TrainConfig
from vidctrl.data.loader import build_loader, load_manifest
from vidctrl.errors import UserError
from vidctrl.families import family_for_preset
from vidctrl.families.base import ModelFamily
from vidctrl.run_lock import hold_folder, main_process_value
from vidctrl.train import distributed
from vidctrl.train.checkpoint import (
    SAMPLER_FILE,
    CheckpointManager,
    TrainingCheckpointError,
    estimate_checkpoint_bytes,
    preflight,
)
from vidctrl.train.clipping import grad_clip_limit
from vidctrl.train.engines import build_engine
from vidctrl.train.microbatch import StandIn, encode_samples, noise_samples, sample_seeds
from vidctrl.train.optim import build_optimizer, build_scheduler, param_groups, scaled_learning_rate
from vidctrl.train.resume_changes import (
    apply_hyperparameters,
    optimizer_hyperparameters,
    refuse_unresumable_changes,
    report_changes,
)
from vidctrl.train.rng import rank_generator
from vidctrl.train.signals import StopRequest, TrainingStopped
from vidctrl.train.tracking import Tracker

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """The run cannot go on; the message names the step and the samples involved."""

    exit_code = 1


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    validation_dirs: list[Path] = field(default_factory=list)
    skipped_samples: int = 0  # sample occurrences that could not be decoded, over all ranks
    excluded_samples: int = 0  # records left out when the dataset was loaded


class PhaseTimer:
    """Wall time per phase of a step (encode, forward, backward, ...), for the log."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


def config_hash(config: TrainConfig) -> str:
    """What a resume must not change (the run length, logging and validation may change)."""
    values = {k: v for k, v in config.to_dict().items() if k not in ("run", "validation")}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def train(config: TrainConfig, *, family: ModelFamily | None = None) -> TrainResult:
    """Run training as configured; returns where everything went. Raises on any failure."""
    from accelerate.state import AcceleratorState

    stop = StopRequest(enabled=config.run.save_on_signal)
    try:
        with ExitStack() as held:  # what the run holds until it ends, however it ends (output_dir's lock)
            return _train(config, family, held, stop)
    finally:
        stop.restore()
        # accelerate keeps process-wide state; a second run in the same process (tests, notebooks)
        # may use another precision.
        AcceleratorState._reset_state(reset_partial_state=True)


def _train(config: TrainConfig, family: ModelFamily | None, held: ExitStack, stop: StopRequest) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    run, optim, model_config = config.run, config.optim, config.model
    check_input_files(config)  # validation inputs exist now, not at the first validation hours in
    output_dir = Path(run.output_dir)
    log_with = None if run.report_to == "none" else run.report_to
    plan = distributed.read_launch()
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / run.logging_dir)),
        **distributed.accelerator_options(plan, timeout_s=run.nccl_timeout),
    )
    # One run owns output_dir: a second run into it stops here, before any model loads.
    hold = held.enter_context(hold_folder(output_dir, is_main_process=accelerator.is_main_process, what="vidctrl train",
                                          stale_after_s=run.output_dir_lock_timeout, force=run.force_output_dir_lock))
    engine = build_engine(accelerator, plan, config)
    if run.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = config.data.seed if config.data.seed is not None else 0
    set_seed(seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    log.info("engine %s, process %d of %d on %s", engine.name, rank, world, accelerator.device)
    # Noise, timesteps and condition dropout come from per-sample streams (microbatch.py); the
    # validation stream is rank 0's on every rank, so that sharded engines generate one video.
    validation_generator = rank_generator(seed, 0, "validation")

    # --- model ----------------------------------------------------------------------------------
    family_cls = family_for_preset(config.preset)
    family = family or family_cls.from_config(config)
    weight_dtype = _weight_dtype(run.mixed_precision)
    if model_config.pretrained_model_name_or_path is None:
        raise ConfigError("--pretrained_model_name_or_path is required (a local folder; `vidctrl model tiny` writes one)")
    # --load_tensors: a stale cache is refused before the model loads; the encoders load only for validation.
    cache = open_cache(config, family, world_size=world) if model_config.load_tensors else None
    validates = bool(config.validation.validation_steps or config.validation.validation_epochs)
    with engine.load_context():
        family.load(Path(model_config.pretrained_model_name_or_path), dtype=weight_dtype, device=accelerator.device,
                    encoders=cache is None or validates)
    model = family.denoiser
    if model_config.low_vram:
        family.move_frozen("cpu")  # off the accelerator until the first encoding
    lr = scaled_learning_rate(optim.learning_rate, scale_lr=optim.scale_lr,
                              gradient_accumulation_steps=optim.gradient_accumulation_steps,
                              train_batch_size=config.data.train_batch_size, num_processes=world)
    if model_config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if model_config.use_lora:
        groups = family.add_lora(model, rank=model_config.rank, alpha=model_config.network_alpha,
                                 target_modules=model_config.lora_target_modules, lr=lr)
    else:
        groups = param_groups(
            model,
            trainable_modules=model_config.trainable_modules,
            trainable_modules_low_learning_rate=model_config.trainable_modules_low_learning_rate,
            lr=lr,
            name_for_matching=family.name_for_matching,
        )
        log.info("trainable parameters:\n%s", groups.describe())
        groups = groups.groups
    # Trainable weights stay in float32 (mixed precision runs the forward in weight_dtype).
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("no parameter is trainable: check --trainable_modules")
    checkpoint_bytes = estimate_checkpoint_bytes([p for p in model.parameters() if p.requires_grad])
    groups = engine.shard(model, groups)
    trainable = [p for p in model.parameters() if p.requires_grad]

    if cache is not None:
        loader = cache.loader(config, family, rank=rank, world_size=world, pin_memory=run.pin_memory)
        excluded = cache.index.excluded
    else:
        # A family that weighs hands (ControlNeXt) sets `uses_hand_boxes`; others never read meta_info.
        hand_boxes = bool(getattr(family, "uses_hand_boxes", False))
        loaded = load_manifest(config.data, hand_boxes=hand_boxes)
        loader = build_loader(config.data, rank=rank, world_size=world, frame_multiple=family.frame_multiple,
                              loaded=loaded, pin_memory=run.pin_memory, hand_boxes=hand_boxes)
        excluded = len(loaded.excluded)
    updates_per_epoch = math.ceil(len(loader) / optim.gradient_accumulation_steps)
    # 0 is refused when the config is built; None (not given) trains --num_train_epochs epochs.
    max_steps = run.max_train_steps if run.max_train_steps is not None else run.num_train_epochs * updates_per_epoch

    optimizer = build_optimizer(
        groups,
        name=optimizer_name(optim),
        lr=lr,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_epsilon,
        weight_decay=optim.adam_weight_decay,
    )
    scheduler = build_scheduler(
        optimizer, optim.lr_scheduler, warmup_steps=optim.lr_warmup_steps, total_steps=max_steps,
        num_cycles=optim.lr_num_cycles, power=optim.lr_power, steps_per_optimizer_step=world,
    )
    model, optimizer, scheduler = engine.prepare(model, optimizer, scheduler)
    objective = family.build_objective(config.objective, rank=rank, world_size=world)

    # --- checkpoints and resume ----------------------------------------------------------------
    parts = engine.checkpoint_parts(model, optimizer, scheduler, component=family.trainable_component,
                                    use_lora=model_config.use_lora)
    checkpoints = CheckpointManager(
        output_dir,
        total_limit=run.checkpoints_total_limit,
        weights=parts.weights,
        stateful=parts.stateful,
        generators={"validation": validation_generator},
        state_writer=parts.state_writer,
        state_reader=parts.state_reader,
        is_main_process=accelerator.is_main_process,
        process_index=rank,
        num_processes=world,
        barrier=accelerator.wait_for_everyone,
        config_hash=config_hash(config),
        broadcast=main_process_value,
        lock=hold.lock,
        run_token=hold.token,
    )
    if accelerator.is_main_process:
        limit = run.checkpoints_total_limit or 1
        try:
            preflight(output_dir, (limit + 1) * checkpoint_bytes)
        except TrainingCheckpointError as err:
            raise TrainingError(str(err)) from err
    accelerator.wait_for_everyone()
    global_step = 0
    fresh_hyperparameters = optimizer_hyperparameters(optimizer)
    current = config.to_dict()
    resumed = checkpoints.resume(run.resume_from_checkpoint, fallback=run.resume_fallback,
                                 check=lambda state: refuse_unresumable_changes(state, current))
    if resumed is not None:
        # Changed flags: logged with what each does; optimizer hyper-parameters follow the flags.
        report_changes(resumed.trainer_state.get("extra", {}).get("config"), current, step=resumed.step,
                       main_process=accelerator.is_main_process)
        apply_hyperparameters(optimizer, scheduler, fresh_hyperparameters)
        try:
            loader.load_state_dict(resumed.sampler_state)
        except ValueError as err:  # the data order the checkpoint continues cannot be rebuilt
            raise TrainingCheckpointError(f"{resumed.path / SAMPLER_FILE}: {err}") from err
        global_step = resumed.step
        log.info("resumed from %s at step %d (epoch %d)", resumed.path, resumed.step, resumed.epoch)

    tracker = Tracker(accelerator, config, output_dir=output_dir, total_steps=max_steps, initial_step=global_step)
    validation = family.validation_runner(config, output_dir=output_dir)
    if validation is not None:
        validation.tracker = tracker  # validation videos and contact sheets to tensorboard / wandb
    result = TrainResult(output_dir=output_dir, global_step=global_step, excluded_samples=excluded)
    timer = PhaseTimer()
    stand_in = StandIn()

    def encoders_on() -> AbstractContextManager[None]:
        # --low_vram: the frozen encoders come to the accelerator only to encode and to validate.
        return family.encoders_on(accelerator.device) if model_config.low_vram else nullcontext()

    # Where rank 0 validates alone, the others wait for it in a barrier bounded by --validation_timeout.
    wait_for_validation = (accelerator.wait_for_everyone if engine.validates_on_all_ranks or validation is None else
                           distributed.solo_work_barrier(accelerator, timeout_s=config.validation.validation_timeout))

    def validate(step: int) -> None:
        if engine.validates_on_all_ranks or accelerator.is_main_process:
            with encoders_on():
                paths = validation.run(accelerator.unwrap_model(model), step, generator=validation_generator,
                                       write=accelerator.is_main_process)
            result.validation_dirs.extend(paths)
        try:
            wait_for_validation()
        except RuntimeError as err:  # the barrier timed out (or a rank died meanwhile)
            raise TrainingError(f"step {step}: the ranks waited for validation longer than --validation_timeout "
                                f"({config.validation.validation_timeout:g} s) allows, or a rank left: {err}") from err

    def save_checkpoint(step: int) -> None:
        try:
            path = checkpoints.save(step, epoch=loader.epoch, sampler_state=loader.state_dict(),
                                    extra={**parts.extra, "world_size": world, "config": config.to_dict()})
        except TrainingCheckpointError as err:
            raise TrainingError(f"step {step}: {err}") from err
        result.checkpoints.append(path)
        tracker.event(f"saved {path}")

    # --- the loop ------------------------------------------------------------------------------
    model.train()
    window = _Window()
    drop_update = False
    stop_agreed = False  # some rank got SIGTERM/SIGINT: every rank saves after this optimizer step
    stop.install()  # from here on a signal ends the run at a step boundary (before: as Python does)
    step_start = time.perf_counter()
    while global_step < max_steps:
        epoch = loader.epoch
        for batch in loader:
            requests = loader.sampler.requests(batch["epoch"], batch["step_in_epoch"])
            for skipped in batch["skipped"]:
                log.warning("skipped sample %d (%s): %s", skipped.index, skipped.media, skipped.reason)
            if batch["size"]:
                stand_in.remember(batch)
                work, seeds = batch, sample_seeds(requests, batch)
            else:  # every sample of this rank was skipped: a zero-weighted step keeps it in the collectives
                work, seeds = stand_in.get(loader, requests, batch["epoch"], batch["step_in_epoch"]), [0]
            with accelerator.accumulate(model):
                with timer("encode"), encoders_on():
                    encoded = encode_samples(family, work, seeds)
                with timer("forward"):
                    noised = noise_samples(objective, encoded.latents, seeds, accelerator.device)
                    with engine.autocast():
                        prediction = family.predict(model, encoded, noised.noisy, noised.timestep)
                    loss = objective.loss(prediction.float(), noised, weight=encoded.loss_weight)
                shape = (requests[0].height, requests[0].width, requests[0].frames)
                report = distributed.agree(accelerator, valid=batch["size"], planned=len(requests), loss=loss,
                                           shape=shape, stop=stop.requested)
                stop_agreed = stop_agreed or report.stop
                result.skipped_samples += report.skipped
                media = encoded.media if batch["size"] else []
                if report.nonfinite_ranks:
                    own = media if rank in report.nonfinite_ranks else []
                    _bad_step(run.nan_policy, global_step, "loss is not finite",
                              distributed.gather_media(accelerator, own))
                    drop_update = True
                elif report.valid == 0:
                    log.warning("step %d: every sample of the global batch was skipped; no update", global_step + 1)
                    drop_update = True
                if not drop_update:  # all ranks agree on it; DeepSpeed steps inside backward at a sync step
                    with timer("backward"):
                        accelerator.backward(loss * report.weight if report.weight != 1.0 else loss)
                grad_norm = None
                if accelerator.sync_gradients and not drop_update and (optim.max_grad_norm > 0
                                                                       or engine.clips_internally):
                    grad_norm = engine.clip(trainable, lambda norm, step=global_step: grad_clip_limit(
                        step, norm, max_grad_norm=optim.max_grad_norm, initial_ratio=optim.initial_grad_norm_ratio,
                        abnormal_start=optim.abnormal_norm_clip_start))
                    if grad_norm is not None and not math.isfinite(grad_norm):
                        _bad_step(run.nan_policy, global_step, f"gradient norm is {grad_norm}",
                                  distributed.gather_media(accelerator, media))
                        drop_update = True
                with timer("step"):
                    if drop_update:
                        if accelerator.sync_gradients:
                            engine.discard_gradients(optimizer)
                    else:
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
            window.add(report, tokens=encoded.tokens if batch["size"] else 0)
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            elapsed = time.perf_counter() - step_start
            step_loss = window.loss()
            result.losses.append((global_step, step_loss))
            tracker.log_step(
                global_step,
                loss=step_loss,
                lr=scheduler.get_last_lr()[0],
                grad_norm=None if grad_norm is None else float(grad_norm),
                samples_per_s=window.samples / elapsed,
                tokens_per_s=window.tokens * world / elapsed,
                epoch=epoch,
                phases=timer.pop(),
                skipped=result.skipped_samples,
            )
            window = _Window()
            drop_update = False

            if global_step % run.checkpointing_steps == 0 or global_step == max_steps:
                save_checkpoint(global_step)
            if stop_agreed and global_step < max_steps:
                if global_step % run.checkpointing_steps != 0:
                    save_checkpoint(global_step)
                stopped = _stopped(stop, global_step, result.checkpoints[-1])  # before the launcher signals us
                tracker.bar.close()
                accelerator.end_training()
                raise stopped
            if validation is not None and validation.due(global_step=global_step, epoch_end=False):
                validate(global_step)
            step_start = time.perf_counter()
            if global_step >= max_steps:
                # the last step may also end an epoch: --validation_epochs is due then too
                if (loader.epoch != epoch and validation is not None
                        and validation.due(global_step=global_step, epoch_end=True, epoch=epoch)
                        and not validation.due(global_step=global_step, epoch_end=False)):
                    validate(global_step)
                break
        else:
            if validation is not None and validation.due(global_step=global_step, epoch_end=True, epoch=epoch):
                validate(global_step)
            continue

    result.global_step = global_step
    if result.skipped_samples or result.excluded_samples:
        log.warning("left out %d samples with problems when loading the dataset and skipped %d samples that "
                    "could not be decoded (run `vidctrl data check` with the same flags)",
                    result.excluded_samples, result.skipped_samples)
    tracker.close(result)
    accelerator.end_training()
    return result


class _Window:
    """Global loss, samples and tokens of the micro-steps of one optimizer step."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.samples = 0
        self.tokens = 0

    def add(self, report: distributed.StepReport, *, tokens: int) -> None:
        if report.valid and not report.nonfinite_ranks:
            self.loss_sum += report.loss * report.valid
            self.samples += report.valid
        self.tokens += tokens

    def loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else float("nan")


def _stopped(stop: StopRequest, step: int, checkpoint: Path) -> TrainingStopped:
    cause = f"on {stop.signal_name}" if stop.requested else "because another rank got SIGTERM/SIGINT"
    return TrainingStopped(
        f"stopped {cause} after step {step}; checkpoint saved in {checkpoint}. Resume with "
        f"--resume_from_checkpoint {checkpoint} (or --resume_from_checkpoint latest)",
        signum=stop.signum or signal.SIGTERM,
    )


def _bad_step(policy: str, step: int, what: str, media: list[str]) -> None:
    """NaN/inf: stop naming the step and the samples, or (policy skip) log and drop the update."""
    files = ", ".join(media[:8]) + (f" and {len(media) - 8} more" if len(media) > 8 else "")
    message = f"step {step + 1}: {what} on samples {files}"
    if policy == "stop":
        raise TrainingError(
            f"{message}. Check these samples with `vidctrl data check`, lower the learning rate, or pass "
            "--nan_policy skip to drop such updates"
        )
    log.warning("%s; update skipped (--nan_policy skip)", message)

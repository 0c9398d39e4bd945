"""The engine a run trains under (one process, DDP, DeepSpeed ZeRO, FSDP2), behind one small
interface, so that the training loop has no engine-specific branches.

What differs between engines, and what each does:

=============  ==================  ====================  ===========================  ============
engine         wraps the model     gradient clipping     checkpoint                   validation
=============  ==================  ====================  ===========================  ============
single / DDP   accelerate (DDP)    vidctrl, decaying     full weights + optimizer     main rank
DeepSpeed      accelerate + DS     DeepSpeed, at         ZeRO-2: full weights;        ZeRO-2: main
               ZeRO-2 / ZeRO-3     ``--max_grad_norm``   ZeRO-3: config (+ 16-bit     ZeRO-3: all
                                                         weights if asked); both:
                                                         DeepSpeed's own state
FSDP2          vidctrl             vidctrl, decaying     config + per-rank shards     all ranks
=============  ==================  ====================  ===========================  ============

VideoX-Fun's decaying clip limit (``initial_grad_norm_ratio``) needs the gradient norm before the
clip, which DeepSpeed does not expose; under DeepSpeed the limit is ``--max_grad_norm`` from the
first step, as VideoX-Fun itself does there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vidctrl.config.train import ConfigError
from vidctrl.train import distributed
from vidctrl.train.checkpoint import Stateful, WeightsIO, diffusers_weights, lora_weights
from vidctrl.train.clipping import clip_gradients
from vidctrl.train.sharded_state import (
    load_deepspeed_state,
    load_fsdp_state,
    save_deepspeed_state,
    save_fsdp_state,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vidctrl.config.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class CheckpointParts:
    """What `CheckpointManager` is given under this engine."""

    weights: dict[str, WeightsIO]
    stateful: dict[str, Stateful]
    state_writer: Callable[[Path], None] | None = None
    state_reader: Callable[[Path], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """One process or DDP: accelerate wraps the model; vidctrl clips (with the decaying limit)."""

    def __init__(self, accelerator: Accelerator, plan: distributed.LaunchPlan, config: TrainConfig) -> None:
        self.accelerator = accelerator
        self.plan = plan
        self.config = config
        self.kind = plan.engine

    @property
    def name(self) -> str:
        """For logs and the checkpoint's trainer_state.json."""
        return self.kind

    def load_context(self) -> AbstractContextManager[Any]:
        """Entered while the model family loads its components."""
        return nullcontext()

    def shard(self, model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Shard `model` before the optimizer is built (FSDP2); returns the optimizer groups."""
        return groups

    def prepare(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        return self.accelerator.prepare(model, optimizer, scheduler)

    def autocast(self) -> AbstractContextManager[Any]:
        return self.accelerator.autocast()

    def clip(self, trainable: Sequence[nn.Parameter], limit_for: Callable[[float], float]) -> float | None:
        """Clip at a gradient-sync step; returns the global norm before clipping (NaN/inf possible,
        None when the engine does not report it)."""
        return clip_gradients(lambda: self.accelerator.clip_grad_norm_(trainable, float("inf")), trainable, limit_for)

    def discard_gradients(self, optimizer: Any) -> None:
        """Drop the gradients of an update that will not be applied."""
        optimizer.zero_grad(set_to_none=True)

    @property
    def validates_on_all_ranks(self) -> bool:
        """Whether a forward pass needs every rank (sharded parameters)."""
        return False

    @property
    def clips_internally(self) -> bool:
        """Whether the engine clips (and reports the norm) inside its own step, whatever the limit."""
        return False

    def checkpoint_parts(self, model: nn.Module, optimizer: Any, scheduler: Any, *, component: str,
                         use_lora: bool) -> CheckpointParts:
        unwrapped = self.accelerator.unwrap_model(model)
        weights = lora_weights(unwrapped) if use_lora else diffusers_weights(unwrapped)
        return CheckpointParts(weights={component: weights},
                               stateful={"optimizer": optimizer, "lr_scheduler": scheduler},
                               extra={"engine": self.name})


def _save_config_only(model: nn.Module) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_config = getattr(model, "save_config", None)
        if save_config is not None:
            save_config(folder)

    return save


def _restored_by_engine(folder: Path) -> None:
    """Weights come back with the engine's state (read first); nothing to load here."""


class DeepSpeedEngine(Engine):
    """accelerate's DeepSpeed plugin; vidctrl fills the config's "auto" values from the flags."""

    def __init__(self, accelerator: Accelerator, plan: distributed.LaunchPlan, config: TrainConfig) -> None:
        super().__init__(accelerator, plan, config)
        plugin = accelerator.state.deepspeed_plugin
        self.ds_config: dict[str, Any] = plugin.deepspeed_config
        self.stage = distributed.zero_stage(self.ds_config)
        self.save_16bit = bool(getattr(plugin, "zero3_save_16bit_model", False))
        optim = config.optim
        distributed.configure_deepspeed(
            self.ds_config, micro_batch_size=config.data.train_batch_size,
            gradient_accumulation_steps=optim.gradient_accumulation_steps, max_grad_norm=optim.max_grad_norm,
        )
        if optim.initial_grad_norm_ratio != 1.0:
            log.info("DeepSpeed clips at --max_grad_norm %s from the first step (VideoX-Fun's decaying limit "
                     "needs the norm before DeepSpeed's own clip)", optim.max_grad_norm)
        if self.stage == 3 and config.model.use_lora:
            raise ConfigError("LoRA under ZeRO-3 is not supported: LoRA adapters are small, train them with DDP "
                              "or ZeRO-2 (config/zero_stage2_config.json)")
        self._gathered: dict[str, torch.Tensor] | None = None
        precision = config.run.mixed_precision
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @property
    def name(self) -> str:
        offload = (self.ds_config.get("zero_optimization") or {}).get("offload_optimizer", {}).get("device", "none")
        return f"deepspeed-zero{self.stage}" + ("-offload" if offload not in (None, "none") else "")

    def load_context(self) -> AbstractContextManager[Any]:
        return distributed.deepspeed_load_context(self.accelerator)

    def autocast(self) -> AbstractContextManager[Any]:
        # DeepSpeed holds the model in bf16/fp16 and accelerate's autocast is off under DeepSpeed;
        # inputs built in float32 (latents, embeddings) must still meet the weights' dtype.
        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=self._autocast_dtype)

    def clip(self, trainable: Sequence[nn.Parameter], limit_for: Callable[[float], float]) -> float | None:
        # DeepSpeed has clipped and stepped inside accelerator.backward; it skips a step whose
        # gradients are not finite and reports that step's norm as inf.
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        norm = engine.get_global_grad_norm()
        if not engine.was_step_applied():
            return float("inf")
        return None if norm is None else float(norm)

    @property
    def clips_internally(self) -> bool:
        return True

    def discard_gradients(self, optimizer: Any) -> None:
        engine = self.accelerator.deepspeed_engine_wrapped
        if engine is not None:
            engine.engine.optimizer.zero_grad(set_to_none=True)

    @property
    def validates_on_all_ranks(self) -> bool:
        return self.stage == 3

    def checkpoint_parts(self, model: nn.Module, optimizer: Any, scheduler: Any, *, component: str,
                         use_lora: bool) -> CheckpointParts:
        unwrapped = self.accelerator.unwrap_model(model)

        def writer(folder: Path) -> None:
            save_deepspeed_state(model, folder)
            if self.stage == 3 and self.save_16bit:
                self._gathered = self.accelerator.get_state_dict(model)  # collective; full on main

        def reader(folder: Path) -> None:
            load_deepspeed_state(model, folder)

        if self.stage == 3:
            save_config = _save_config_only(unwrapped)

            def save(folder: Path) -> None:
                save_config(folder)
                if self._gathered is not None:
                    from vidctrl.train.export import write_diffusers_weights

                    write_diffusers_weights(self._gathered, folder)
                    self._gathered = None

            weights = WeightsIO(save=save, load=_restored_by_engine)
        else:
            full = lora_weights(unwrapped) if use_lora else diffusers_weights(unwrapped)
            weights = WeightsIO(save=full.save, load=_restored_by_engine)
        return CheckpointParts(weights={component: weights}, stateful={"lr_scheduler": scheduler},
                               state_writer=writer, state_reader=reader,
                               extra={"engine": self.name, "zero_stage": self.stage})


class Fsdp2Engine(Engine):
    """vidctrl's FSDP2: ``fully_shard`` per transformer block and on the root; accelerate prepares
    only the optimizer and the schedule."""

    def __init__(self, accelerator: Accelerator, plan: distributed.LaunchPlan, config: TrainConfig) -> None:
        super().__init__(accelerator, plan, config)
        if config.run.mixed_precision == "fp16":
            raise ConfigError("FSDP2 in vidctrl trains in bf16 or fp32: pass --mixed_precision bf16")
        if config.model.use_lora:
            raise ConfigError("LoRA under FSDP is not supported: LoRA adapters are small, train them with DDP")
        self.options = plan.fsdp or distributed.FsdpOptions()
        self._model: nn.Module | None = None

    @property
    def name(self) -> str:
        return "fsdp2" + ("-offload" if self.options.offload_params else "")

    def shard(self, model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = {id(p): name for name, p in model.named_parameters()}
        dtype = {"bf16": torch.bfloat16}.get(self.config.run.mixed_precision, torch.float32)
        distributed.shard_fsdp2(model, self.options, compute_dtype=dtype)
        self._model = model
        return distributed.remap_param_groups(groups, names, model)

    def prepare(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        optimizer, scheduler = self.accelerator.prepare(optimizer, scheduler)
        return model, optimizer, scheduler

    def clip(self, trainable: Sequence[nn.Parameter], limit_for: Callable[[float], float]) -> float:
        return clip_gradients(lambda: distributed.grad_norm(trainable), trainable, limit_for)

    @property
    def validates_on_all_ranks(self) -> bool:
        return True

    def checkpoint_parts(self, model: nn.Module, optimizer: Any, scheduler: Any, *, component: str,
                         use_lora: bool) -> CheckpointParts:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes

        def writer(folder: Path) -> None:
            save_fsdp_state(folder, model, optimizer, rank=rank, world_size=world)

        def reader(folder: Path) -> None:
            load_fsdp_state(folder, model, optimizer, rank=rank, world_size=world)

        return CheckpointParts(
            weights={component: WeightsIO(save=_save_config_only(model), load=_restored_by_engine)},
            stateful={"lr_scheduler": scheduler}, state_writer=writer, state_reader=reader,
            extra={"engine": self.name},
        )


def build_engine(accelerator: Accelerator, plan: distributed.LaunchPlan, config: TrainConfig) -> Engine:
    distributed.check_engine(plan, accelerator, use_deepspeed_flag=config.run.use_deepspeed)
    if plan.engine == "deepspeed":
        return DeepSpeedEngine(accelerator, plan, config)
    if plan.engine == "fsdp":
        return Fsdp2Engine(accelerator, plan, config)
    return Engine(accelerator, plan, config)

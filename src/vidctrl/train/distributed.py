"""Many processes, one loop: which engine runs the model, and how the ranks stay in step.

The engine is chosen by the launcher, never by a vidctrl flag, so a seed command's launch line
keeps its meaning:

    accelerate launch ... -m vidctrl train                     one process, or DDP with --multi_gpu
    accelerate launch --use_deepspeed --deepspeed_config_file config/zero_stage2_config.json ...
    accelerate launch --use_fsdp --fsdp_version 2 ...          FSDP2, vidctrl shards per block

DeepSpeed runs through accelerate's DeepSpeed plugin. FSDP2 is applied by vidctrl itself
(`fully_shard` on every transformer block, then on the root), the same way on GPUs and on a CPU
with gloo; accelerate then only prepares the optimizer and the schedule. On a machine without an
accelerator, vidctrl gives accelerate what it needs to form a gloo process group (accelerate alone
starts every process as a lone rank 0 under DeepSpeed there).

Every optimizer step, the ranks exchange one small tensor (:func:`agree`): how many samples each
really has (a rank whose samples were all skipped trains on a stand-in with weight 0, so that it
still joins every collective), whether its loss is finite, and the shape the sampler planned. So
all ranks take the same decision (update, skip, stop) and the loss weights make the update the
mean over the samples that loaded, whatever their split over ranks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from vidctrl.config.train import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

EngineKind = Literal["single", "ddp", "deepspeed", "fsdp"]

#: launch-line files the seed commands name, shipped with vidctrl under ``vidctrl/resources/``
SHIPPED_LAUNCH_FILES = (
    "config/zero_stage2_config.json",
    "config/zero_stage3_config.json",
    "config/zero_stage3_config_cpu_offload.json",
    "accelerate_configs/deepspeed.yaml",
)


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------------------------
# Shipped launch files


def resources_root() -> Path:
    from importlib.resources import files

    return Path(str(files("vidctrl") / "resources"))


def shipped_path(name: str | Path) -> Path | None:
    """vidctrl's copy of a launch file a seed command names (``config/zero_stage2_config.json``,
    ``accelerate_configs/deepspeed.yaml``), or None when vidctrl ships no such file."""
    relative = Path(os.path.normpath(str(name)))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        return None
    candidate = resources_root() / relative
    return candidate if candidate.is_file() else None


def resolve_deepspeed_config_file(environ: MutableMapping[str, str] = os.environ) -> None:
    """Point accelerate at vidctrl's copy of ``--deepspeed_config_file`` when the named file does
    not exist here: a seed command run outside its own checkout (``config/zero_stage2_config.json``)
    then finds the file it names. accelerate reads this file in each training process, so setting
    the variable before the `Accelerator` exists is enough."""
    value = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not value or value == "none" or Path(value).exists():
        return
    packaged = shipped_path(value)
    if packaged is None:
        raise ConfigError(
            f"--deepspeed_config_file {value} does not exist, and vidctrl ships no file of that name "
            f"(it ships {', '.join(p for p in SHIPPED_LAUNCH_FILES if p.endswith('.json'))})"
        )
    log.info("--deepspeed_config_file %s: using vidctrl's copy %s", value, packaged)
    environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(packaged)


# --------------------------------------------------------------------------------------------
# The launch plan


@dataclass(frozen=True)
class FsdpOptions:
    """accelerate's FSDP launch flags that vidctrl's FSDP2 honours."""

    offload_params: bool = False
    reshard_after_forward: bool = True
    block_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchPlan:
    engine: EngineKind
    world_size: int
    fsdp: FsdpOptions | None = None


def read_launch(environ: MutableMapping[str, str] = os.environ) -> LaunchPlan:
    """The engine the launcher asked for, from the environment `accelerate launch` sets.

    FSDP is taken over from accelerate (its variable is removed so that accelerate does not wrap
    the model a second time); the FSDP flags vidctrl cannot honour are refused here.
    """
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if _true(environ.get("ACCELERATE_USE_DEEPSPEED")):
        resolve_deepspeed_config_file(environ)
        return LaunchPlan("deepspeed", world)
    if _true(environ.get("ACCELERATE_USE_FSDP")):
        version = environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ConfigError(
                f"--fsdp_version {version}: vidctrl trains with FSDP2 (per-block fully_shard) only; "
                "launch with --use_fsdp --fsdp_version 2"
            )
        policy = (environ.get("FSDP_AUTO_WRAP_POLICY") or "TRANSFORMER_BASED_WRAP").upper()
        if policy != "TRANSFORMER_BASED_WRAP":
            raise ConfigError(
                f"--fsdp_auto_wrap_policy {policy}: vidctrl shards the model per transformer block "
                "(TRANSFORMER_BASED_WRAP); name other block classes with --fsdp_transformer_layer_cls_to_wrap"
            )
        if _true(environ.get("FSDP_ACTIVATION_CHECKPOINTING")):
            raise ConfigError(
                "--fsdp_activation_checkpointing: pass --gradient_checkpointing to `vidctrl train` instead "
                "(the model's own checkpointing, the same under every engine)"
            )
        state_type = (environ.get("FSDP_STATE_DICT_TYPE") or "SHARDED_STATE_DICT").upper()
        if state_type != "SHARDED_STATE_DICT":
            raise ConfigError(
                f"--fsdp_state_dict_type {state_type}: vidctrl's FSDP checkpoints are sharded; "
                "`vidctrl export zero-to-bf16 CHECKPOINT OUT` writes the full model"
            )
        classes = tuple(c.strip() for c in (environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or "").split(",") if c.strip())
        options = FsdpOptions(
            offload_params=_true(environ.get("FSDP_OFFLOAD_PARAMS")),
            reshard_after_forward=environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false",
            block_classes=classes,
        )
        environ.pop("ACCELERATE_USE_FSDP")
        environ["VIDCTRL_FSDP2"] = "true"  # a second Accelerator in this process (tests) sees it too
        return LaunchPlan("fsdp", world, options)
    if _true(environ.get("VIDCTRL_FSDP2")):
        return LaunchPlan("fsdp", world, FsdpOptions())
    return LaunchPlan("ddp" if world > 1 else "single", world)


def _accelerator_present() -> bool:
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def accelerator_options(plan: LaunchPlan, *, timeout_s: int,
                        environ: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for `Accelerator` so that `plan` forms a process group on this machine.

    Without an accelerator: DDP and FSDP2 run as accelerate's multi-CPU type (gloo); DeepSpeed
    needs accelerate's DeepSpeed type, which accelerate forms only when told the gloo backend and
    not told "cpu" (its CPU switch turns DeepSpeed off silently).
    """
    from accelerate.utils import InitProcessGroupKwargs

    handler = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))
    options: dict[str, Any] = {"kwargs_handlers": [handler]}
    if _accelerator_present():
        return options
    if plan.engine == "deepspeed" and "LOCAL_RANK" in environ:  # started by a launcher, even alone
        environ.pop("ACCELERATE_USE_CPU", None)
        handler.backend = "gloo"
    elif plan.world_size > 1:
        options["cpu"] = True
    return options


def check_engine(plan: LaunchPlan, accelerator: Accelerator, *, use_deepspeed_flag: bool) -> None:
    """Refuse a run whose engine is not the one launched (accelerate falls back silently)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if plan.engine == "deepspeed" and kind != DistributedType.DEEPSPEED:
        raise ConfigError(
            f"accelerate was launched with DeepSpeed but set up {kind.value}; start the run with "
            "`accelerate launch --use_deepspeed ...` (not `python -m vidctrl`), or launch without --use_deepspeed"
        )
    if use_deepspeed_flag and plan.engine != "deepspeed":
        raise ConfigError(
            "--use_deepspeed was given to the script but accelerate was not launched with DeepSpeed; "
            "launch with `accelerate launch --use_deepspeed --deepspeed_config_file config/zero_stage2_config.json ...`"
        )
    if plan.world_size > 1 and accelerator.num_processes != plan.world_size:
        raise ConfigError(
            f"the launcher started {plan.world_size} processes but accelerate formed a group of "
            f"{accelerator.num_processes}; launch with `accelerate launch --multi_gpu --num_processes N` "
            "(accelerate's --cpu starts a single process)"
        )


# --------------------------------------------------------------------------------------------
# DeepSpeed configuration


def configure_deepspeed(ds_config: dict[str, Any], *, micro_batch_size: int, gradient_accumulation_steps: int,
                        max_grad_norm: float) -> None:
    """Fill the "auto" values of a DeepSpeed config from the training flags, and refuse values that
    contradict them.

    ``gradient_clipping`` in particular: DeepSpeed clips inside its own step and ignores
    ``clip_grad_norm_`` calls, and accelerate fills "auto" with 1.0 -- so without this, the
    seeds' ``--max_grad_norm 0.05`` is silently replaced by 1.0 (or by no clipping when the key is
    missing). Here ``--max_grad_norm`` is what DeepSpeed clips at.
    """

    def fill(key: str, value: float | int, flag: str) -> None:
        current = ds_config.get(key, "auto")
        if current == "auto":
            ds_config[key] = value
        elif float(current) != float(value):
            raise ConfigError(
                f"the DeepSpeed config sets {key} to {current} but {flag} is {value}; set it to \"auto\" "
                f"in the DeepSpeed config (vidctrl fills it from {flag}) or make the two agree"
            )

    fill("train_micro_batch_size_per_gpu", micro_batch_size, "--train_batch_size")
    fill("gradient_accumulation_steps", gradient_accumulation_steps, "--gradient_accumulation_steps")
    if max_grad_norm > 0:
        fill("gradient_clipping", float(max_grad_norm), "--max_grad_norm")
    else:
        fill("gradient_clipping", 0.0, "--max_grad_norm")


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0) or 0)


# --------------------------------------------------------------------------------------------
# FSDP2


def block_modules(model: nn.Module, class_names: Sequence[str] = ()) -> list[nn.Module]:
    """The repeated transformer blocks FSDP2 shards one by one: modules whose class is named in
    `class_names`, else in the model's ``_repeated_blocks`` / ``_no_split_modules`` (diffusers
    declares them for its transformers)."""
    names = set(class_names) or set(getattr(model, "_repeated_blocks", None) or []) or set(
        getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(
            f"{type(model).__name__} declares no transformer block classes; name them with "
            "--fsdp_transformer_layer_cls_to_wrap"
        )
    blocks = [module for module in model.modules() if type(module).__name__ in names and module is not model]
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no module of class {', '.join(sorted(names))} to shard")
    # A block nested in another listed block is sharded with its parent.
    inside = {id(child) for block in blocks for child in block.modules() if child is not block}
    return [block for block in blocks if id(block) not in inside]


def shard_fsdp2(model: nn.Module, options: FsdpOptions, *, compute_dtype: torch.dtype) -> None:
    """Shard `model` in place: ``fully_shard`` on every block, then on the root.

    Every parameter is kept in float32 (FSDP2 gathers one dtype per group); the forward runs in
    `compute_dtype` through FSDP2's mixed-precision policy, gradients are reduced in float32.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    for parameter in model.parameters():
        parameter.data = parameter.data.float()
    precision = MixedPrecisionPolicy(
        param_dtype=None if compute_dtype == torch.float32 else compute_dtype, reduce_dtype=torch.float32
    )
    offload = CPUOffloadPolicy() if options.offload_params else OffloadPolicy()
    for block in block_modules(model, options.block_classes):
        fully_shard(block, mp_policy=precision, offload_policy=offload,
                    reshard_after_forward=options.reshard_after_forward)
    fully_shard(model, mp_policy=precision, offload_policy=offload, reshard_after_forward=False)


def remap_param_groups(groups: Iterable[dict[str, Any]], names: dict[int, str], model: nn.Module) -> list[dict[str, Any]]:
    """Optimizer groups built before sharding, pointed at the sharded parameters of the same name
    (`names` maps ``id(old parameter)`` to its name)."""
    current = dict(model.named_parameters())
    out = []
    for group in groups:
        params = [current[names[id(p)]] for p in group["params"]]
        out.append({**group, "params": params})
    return out


def grad_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, for plain and DTensor (FSDP2) parameters alike."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), float("inf"))
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


# --------------------------------------------------------------------------------------------
# Agreement per step


@dataclass(frozen=True)
class StepReport:
    """What every rank knows after one micro-step's forward pass."""

    valid: int  # samples that loaded, over all ranks
    planned: int  # samples the sampler planned, over all ranks
    loss: float  # mean loss over the samples that loaded, on ranks whose loss is finite (else NaN)
    weight: float  # this rank's loss multiplier (see `agree`)
    nonfinite_ranks: tuple[int, ...]  # ranks whose loss is NaN/inf
    stop: bool = False  # some rank was asked to stop (a signal, `signals.py`): all stop after this step

    @property
    def skipped(self) -> int:
        return self.planned - self.valid


def agree(accelerator: Accelerator, *, valid: int, planned: int, loss: torch.Tensor,
          shape: tuple[int, int, int], stop: bool = False) -> StepReport:
    """One all-gather per micro-step: sample counts, loss, finiteness, the planned shape and whether
    this rank was asked to stop (a signal may reach one rank only, or the ranks at different steps).

    The loss multiplier of rank r is ``valid_r * world / valid_total``: DDP (and ZeRO, FSDP) average
    gradients over ranks, so the update is then the mean over every sample that loaded -- equal to
    a single process training the whole global batch, skipped samples included. A rank with no
    sample has weight 0 (its stand-in forward only keeps it in the collectives).
    """
    value = float(loss.detach().float().item())
    finite = math.isfinite(value)
    row = torch.tensor([valid, planned, value * valid if finite and valid else 0.0,
                        0.0 if finite or not valid else 1.0, *shape, float(stop)], dtype=torch.float64)
    world = accelerator.num_processes
    table = accelerator.gather(row.to(accelerator.device)[None]).cpu() if world > 1 else row[None]
    shapes = {tuple(int(v) for v in r[4:7].tolist()) for r in table}
    if len(shapes) > 1:
        raise RuntimeError(f"ranks disagree on the shape of this step: {sorted(shapes)}; this is a vidctrl bug")
    valid_total = int(table[:, 0].sum().item())
    nonfinite = tuple(int(i) for i in torch.nonzero(table[:, 3]).flatten().tolist())
    finite_valid = float(table[table[:, 3] == 0, 0].sum().item())
    return StepReport(
        valid=valid_total,
        planned=int(table[:, 1].sum().item()),
        loss=float(table[:, 2].sum().item()) / finite_valid if finite_valid else float("nan"),
        weight=valid * world / valid_total if valid_total else 0.0,
        nonfinite_ranks=nonfinite,
        stop=bool(table[:, 7].any().item()),
    )


def gather_media(accelerator: Accelerator, media: list[str]) -> list[str]:
    """Every rank's sample files, on every rank (for error messages that name them all)."""
    if accelerator.num_processes == 1:
        return list(media)
    from accelerate.utils import gather_object

    return list(gather_object(list(media)))


@contextmanager
def deepspeed_load_context(accelerator: Accelerator) -> Iterator[None]:
    """Load the model family with ZeRO-3's partitioned construction off: only the trained model is
    partitioned, by DeepSpeed itself; the frozen encoders stay whole on every rank.

    transformers builds models under ``deepspeed.zero.Init`` while accelerate's DeepSpeed config is
    registered with it (``--zero3_init_flag true``), which would partition the text and image
    encoders that never pass through DeepSpeed; the registration is lifted while loading.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or not plugin.is_zero3_init_enabled():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def solo_work_barrier(accelerator: Accelerator, *, timeout_s: float) -> Callable[[], None]:
    """A barrier for the ranks that wait while the main process works alone (validation under DDP and
    ZeRO-2): a gloo group of its own whose timeout is `timeout_s`, not `--nccl_timeout`, which bounds
    every training collective and is far shorter than 50 sampling steps of a 14B model. Gloo waits on
    the CPU, so the waiting ranks' GPUs hold no collective open meanwhile. Built once, on every rank
    together (creating a group is collective)."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or not dist.is_initialized():
        return lambda: None
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return lambda: dist.barrier(group=group)

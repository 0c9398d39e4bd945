"""The model-family contract: everything the training loop needs from a backbone, and nothing more.

A family (one module per backbone: Wan2.1-Fun, CogVideoX, ...) says how to load its components
from a local folder, how to turn a batch of pixels into latents and conditions, how to call its
denoiser for a train mode, how to sample a validation video, and how to save the trained part.
The loop (`vidctrl.train.loop`) calls these and never asks which family it runs. Objectives
(flow, ddpm, ...) and control adapters are separate pieces a family composes.

Encoding has two halves, so that a latent cache (`vidctrl cache`, `--load_tensors`) and on-the-fly
encoding run the same random code: `encode_deterministic` turns one batch into per-sample tensors
that depend only on the sample (what the frozen encoders compute: posterior mean and std, control
and reference latents, CLIP features, text embeddings), and `encode_from` makes the per-step random
draws on them (posterior samples, condition dropout). Draws that must happen before an encoder
(which clip frame is the reference, an inpaint mask, noise added to pixels) are fixed per sample by
the sample's own seed (`fixed_draw_generators`), so a cache can store their result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vidctrl.families.encoding import (
    configure_vae,
    model_options,
    open_transformer_path,
    posterior_moments,
    video_pixels,
)
from vidctrl.families.samples import (
    EncodedBatch,
    ValidationSample,
    fixed_draw_generators,
    posterior_sample,
    stack_samples,
)
from vidctrl.models.loading import CheckpointReader, KeyMap, identity_key_map

__all__ = [
    "EncodedBatch",
    "ModelFamily",
    "ValidationSample",
    "fixed_draw_generators",
    "posterior_sample",
    "stack_samples",
]


class ModelFamily(ABC):
    """One backbone and the ways it can be trained. Subclasses say only what differs."""

    #: preset names this family serves, each with its default settings
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: dataclass of family-specific options (flags only this family honours)
    options_class: ClassVar[type | None] = None
    #: train modes this family implements
    train_modes: ClassVar[tuple[str, ...]] = ()
    #: frame counts must be (n - 1) % frame_multiple == 0 (VAE temporal compression)
    frame_multiple: ClassVar[int] = 4
    #: name of the trainable component (its diffusers subfolder in checkpoints)
    trainable_component: ClassVar[str] = "transformer"
    #: the components that never train (attributes of `components`: VAE, text and image encoders)
    frozen_components: ClassVar[tuple[str, ...]] = ("vae", "text_encoder")
    #: family options that change what `encode_deterministic` computes (part of a cache's fingerprint)
    cache_options: ClassVar[tuple[str, ...]] = ()

    # --- configuration ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any) -> ModelFamily:
        """The family for a resolved `TrainConfig` (preset, options, train mode)."""
        train_mode = config.model.train_mode or cls.presets[config.preset].get("train_mode") or cls.train_modes[0]
        return cls(config.preset, config.family, train_mode=train_mode, config=config)

    @classmethod
    def read_seed_yaml(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Config values from a seed system's model YAML (`--config_path`); keys it does not use are
        ignored. Families that have such a YAML override this."""
        return {}

    @classmethod
    def validate_config(cls, config: Any) -> None:
        """Refuse settings this family cannot honour, saying why (called after parsing)."""
        return None

    def name_for_matching(self, name: str) -> str:
        """The parameter name `--trainable_modules` substrings are matched against (the seed
        system's own naming, so that its substrings select the same parameters)."""
        return name

    def __init__(self, preset: str, options: Any, *, train_mode: str, config: Any = None) -> None:
        if train_mode not in self.train_modes:
            raise ValueError(
                f"preset {preset} trains in modes {', '.join(self.train_modes)}; --train_mode {train_mode} is not one"
            )
        self.preset = preset
        # Without options (tools, tests), the family's defaults.
        self.options = options if options is not None or self.options_class is None else self.options_class()
        self.train_mode = train_mode
        self.config = config
        self._constants: dict[str, torch.Tensor] | None = None
        self.components: Any = None  # what `load` loaded: a dataclass with the family's parts as attributes
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    # --- components ------------------------------------------------------------------------
    @abstractmethod
    def load(self, path: Path, *, dtype: torch.dtype, device: torch.device, encoders: bool = True) -> None:
        """Load every component from a local folder (frozen encoders in `dtype` on `device`).
        `encoders=False` (training from a latent cache) leaves out the VAE and the text and image
        encoders; `encode_from` and the denoiser then work from cached tensors and constants."""

    def encoder_files(self, path: Path) -> list[Path]:
        """The files that decide what `encode_deterministic` computes, for a cache's fingerprint: by
        default every file of the model folder except the trainable component's weights."""
        root = Path(path)
        component = root / self.trainable_component
        files = []
        for file in sorted(root.rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            if component in file.parents and file.name != "config.json":
                continue
            files.append(file)
        return files

    def use_components(self, components: Any, *, dtype: torch.dtype, device: torch.device | str) -> None:
        """Keep what `load` loaded (on `device`, encoders in `dtype`), with the encoders frozen in eval mode."""
        self.components = components
        self.device, self.dtype = torch.device(device), dtype
        for module in self.frozen_modules().values():
            module.requires_grad_(False).eval()

    @property
    def denoiser(self) -> nn.Module:
        """The model being trained (wrapped by accelerate/peft by the loop)."""
        return getattr(self.components, self.trainable_component)

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Encoders that never train (`frozen_components` that were loaded), by name."""
        modules = {name: getattr(self.components, name, None) for name in self.frozen_components}
        return {name: module for name, module in modules.items() if module is not None}

    def move_frozen(self, device: torch.device | str) -> None:
        """`low_vram`: move the frozen encoders (to the CPU between steps, back for encoding)."""
        for module in self.frozen_modules().values():
            module.to(device)

    @contextmanager
    def encoders_on(self, device: torch.device | str) -> Iterator[None]:
        """`low_vram`: the frozen encoders on `device` for the block (encoding, validation), then back
        on the CPU, however the block ends."""
        self.move_frozen(device)
        try:
            yield
        finally:
            self.move_frozen("cpu")

    # --- the encoding and loading seam (`vidctrl.families.encoding`) ------------------------
    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 (the loader's layout) -> (B, 3, F, H, W) in [-1, 1], on the device."""
        return video_pixels(frames, self.device, self.dtype)

    @property
    def vae_mini_batch(self) -> int:
        """`--vae_mini_batch`: samples the VAE encodes at a time (1 without a run config)."""
        model = model_options(self.config)
        return 1 if model is None else int(model.vae_mini_batch)

    @torch.no_grad()
    def vae_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and std of batch-first pixels in [-1, 1], unscaled, in the VAE's
        dtype, encoded `vae_mini_batch` samples at a time."""
        return posterior_moments(self.components.vae, video, mini_batch=self.vae_mini_batch)

    @staticmethod
    def _draw(probability: float, size: int, generator: torch.Generator) -> torch.Tensor:
        """Per-sample Bernoulli draws from the condition stream (True = drop)."""
        return torch.rand(size, generator=generator) < probability

    def apply_model_options(self) -> None:
        """The model flags every family honours the same way: `--transformer_path` (weights loaded
        strictly into the trainable model, over the base's) and `--enable_slicing` / `--enable_tiling`
        (the VAE's modes). A family's `load` calls this once the trainable model has its final shape."""
        model = model_options(self.config)
        if model is None:
            return
        if model.transformer_path is not None:
            self.load_trainable_weights(open_transformer_path(model.transformer_path, self.trainable_component),
                                        source=f"--transformer_path {model.transformer_path}")
        vae = getattr(self.components, "vae", None)
        if vae is not None:
            configure_vae(vae, slicing=model.enable_slicing, tiling=model.enable_tiling, preset=self.preset)

    def trainable_key_maps(self) -> list[KeyMap]:
        """The key layouts a `--transformer_path` file may use (vidctrl's own saves: the model's names)."""
        return [identity_key_map(f"{type(self.denoiser).__name__} (diffusers layout)")]

    def load_trainable_weights(self, reader: CheckpointReader, *, source: str) -> None:
        """Fill the trainable model strictly from `reader`, through whichever `trainable_key_maps` entry
        maps the most of its keys onto the model (every key must then load)."""
        from vidctrl.models.loading import load_component

        model = self.denoiser
        names = set(model.state_dict().keys())
        keys = list(reader.shapes())
        key_map = max(self.trainable_key_maps(), key=lambda m: len(names & set(m.plan(keys).assignments)))
        load_component(model, reader, key_map, dtype=self.dtype, device=self.device, what=f"{source} -> {key_map.name}")

    # --- training --------------------------------------------------------------------------
    def encode(self, batch: dict[str, Any], *, generator: torch.Generator) -> EncodedBatch:
        """Pixels, controls and captions to latents and conditions (no gradients): the two halves
        below. A batch read from a latent cache carries its deterministic half as `batch["encoded"]`.
        `generator` is the sample's stream for posterior samples and condition dropout."""
        samples = batch.get("encoded")
        if samples is None:
            if "seed" not in batch:
                # A batch built by hand (tests, tools) has no sampler seeds: fix the draws from the stream.
                size = len(batch["media"])
                batch = {**batch, "seed": torch.randint(0, 2**62, (size,), generator=generator).tolist()}
            samples = self.encode_deterministic(batch)
        return self.encode_from(samples, generator=generator, media=batch["media"])

    @abstractmethod
    def encode_deterministic(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """The frozen encoders' outputs for each sample of `batch`, one dict per sample, tensors without
        a batch dimension and in the encoders' dtype (a cache stores them as they are). They depend
        only on the sample: its pixels, controls, caption and seed (`fixed_draw_generators`)."""

    @abstractmethod
    def encode_from(self, samples: list[dict[str, torch.Tensor]], *, generator: torch.Generator,
                    media: Sequence[str] = ()) -> EncodedBatch:
        """The batch the denoiser trains on, from `encode_deterministic`'s samples (computed now or
        read from a cache) and `constants`: posterior samples, condition dropout and every other
        per-step draw, from `generator`. Uses no encoder."""

    def encode_constants(self) -> dict[str, torch.Tensor]:
        """Tensors `encode_from` needs besides the samples, computed once per run from the encoders
        (the empty prompt's embedding for text dropout, the VAE's latent normalisation)."""
        return {}

    @property
    def constants(self) -> dict[str, torch.Tensor]:
        """`encode_constants`, computed on first use, or as given to `use_constants` (a cache's)."""
        if self._constants is None:
            self._constants = self.encode_constants()
        return self._constants

    def use_constants(self, constants: dict[str, torch.Tensor]) -> None:
        self._constants = dict(constants)

    @abstractmethod
    def predict(self, model: nn.Module, encoded: EncodedBatch, noisy: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Run the denoiser on noisy latents with the batch's conditions; same shape as latents."""

    @abstractmethod
    def build_objective(self, config: Any, *, rank: int, world_size: int) -> Any:
        """The objective (flow matching, DDPM, ...) this family trains with, tuned by `config`
        (the `objective` section)."""

    def add_lora(self, model: nn.Module, *, rank: int, alpha: float, target_modules: list[str] | None,
                 lr: float) -> list[dict[str, Any]]:
        """Add peft LoRA adapters to `model` (everything else frozen); returns optimizer groups."""
        from peft import LoraConfig

        model.requires_grad_(False)
        targets = target_modules or list(self.lora_target_modules)
        from vidctrl.config.fields import ConfigError

        try:
            model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True))  # type: ignore[operator]
        except ValueError as exc:  # peft: "Target modules ... not found in the base model"
            raise ConfigError(f"--lora_target_modules {' '.join(targets)}: {exc}") from None
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"--lora_target_modules {' '.join(targets)}: no module of the model matches")
        return [{"params": params, "lr": lr}]

    #: module names that get LoRA adapters by default
    lora_target_modules: ClassVar[tuple[str, ...]] = ()

    # --- validation ------------------------------------------------------------------------
    def validation_runner(self, config: Any, *, output_dir: Path) -> Any:
        """A `ValidationRunner` when validation is configured, else None."""
        return None

    @abstractmethod
    def generate(self, model: nn.Module, sample: ValidationSample, *, height: int, width: int, frames: int,
                 steps: int, guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
        """A video (F, 3, H, W) uint8 generated by `model` for one validation sample."""

    # --- saving ----------------------------------------------------------------------------
    def save_trainable(self, model: nn.Module, folder: Path) -> None:
        """Write the trained model in its diffusers layout under `folder/<trainable_component>/`."""
        model.save_pretrained(folder / self.trainable_component, safe_serialization=True)  # type: ignore[operator]

    def load_trainable(self, model: nn.Module, folder: Path) -> None:
        """Load weights written by `save_trainable` into `model`, strictly."""
        from vidctrl.models.loading import load_state_dict_strict, read_state_dict

        state = read_state_dict(folder / self.trainable_component)
        load_state_dict_strict(model, state, source=str(folder / self.trainable_component))

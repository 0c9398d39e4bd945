"""Load CogVideoX components (1.0 and 1.5, any transformer class) from a local diffusers folder.

A CogVideoX release (THUDM/CogVideoX-2b, -5b, CogVideoX1.5-5B-I2V, alibaba-pai/CogVideoX-Fun-V1.1-*)
is a diffusers pipeline folder::

    model_index.json
    transformer/   config.json + diffusion_pytorch_model.safetensors (or shards + .index.json)
    vae/           AutoencoderKLCogVideoX
    text_encoder/  T5 v1.1 XXL encoder (transformers T5EncoderModel), model*.safetensors
    tokenizer/     T5 tokenizer (226 tokens in every CogVideoX pipeline)
    scheduler/     scheduler_config.json (CogVideoXDDIMScheduler: v-prediction, zero terminal SNR)

Every weight file goes through the strict loader (`vidctrl.models.loading`): the model is built on
the meta device from its config, every missing / unexpected / mis-shaped key is named before any
weight is read, and nothing is fetched from a hub. The transformer class is a parameter so that a
family with its own subclass (extra layers, PadaLN, ...) loads through the same code; keys such a
class adds to a base checkpoint are supplied explicitly by ``initialize_missing``, never skipped.

Layout facts (diffusers 0.42.1, `CogVideoXTransformer3DModel`):

- hidden states are ``(B, F, C, H, W)``; condition latents are concatenated on ``dim=2``.
- 1.0 (``patch_size_t`` None): ``patch_embed.proj`` is a ``Conv2d(in_channels, dim, 2, 2)``.
  1.5 (``patch_size_t`` 2): a ``Linear(in_channels * p_t * p * p, dim)`` whose input is ordered
  (channel, t, y, x), so widening it inserts zero columns per channel block.
- 5B models use 3D rotary embeddings that the caller passes (`rotary_embedding`); 2B models add a
  sinusoidal table that diffusers recomputes for any size other than the config's sample size.
- Repacked CogVideoX-Fun files may carry a stray top-level ``pos_embedding`` (the old CogVideoX-Fun
  transformer kept the sinusoidal table as a module-level buffer); it is ignored by that exact name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5EncoderModel

from vidctrl.errors import UserError
from vidctrl.models.loading import (
    CheckpointReader,
    ExpectedTensors,
    KeyMap,
    LoadReport,
    Shape,
    TemplateRule,
    empty_weights,
    find_weight_files,
    hub_offline,
    identity_key_map,
    load_component,
    open_checkpoint,
    read_json,
)

ALL_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTS_STEM = "diffusion_pytorch_model"
TEXT_ENCODER_STEM = "model"
# The one key a repacked CogVideoX-Fun transformer file may carry that no model has.
STRAY_POS_EMBEDDING = "pos_embedding"
WHERE_TO_GET = (
    "CogVideoX-Fun releases are diffusers folders on Hugging Face: alibaba-pai/CogVideoX-Fun-V1.1-2b-InP, "
    "-V1.1-5b-InP, -V1.1-2b-Control, -V1.1-5b-Control (ModelScope: PAI/<same name>); download the whole "
    "repository, e.g. `huggingface-cli download alibaba-pai/CogVideoX-Fun-V1.1-5b-InP --local-dir <folder>`. "
    "vidctrl never downloads at run time"
)

InitializeMissing = Callable[[nn.Module, Sequence[str]], Mapping[str, Tensor]]


class CogVideoXModelFilesError(UserError, FileNotFoundError):
    """A CogVideoX model folder that lacks a file a component needs."""


@dataclass
class CogVideoXComponents:
    """What `load_cogvideox_components` loaded (parts not asked for stay ``None``).

    ``transformer_config`` is the raw ``transformer/config.json``, including keys the diffusers
    class does not take (VideoX-Fun's ``add_noise_in_inpaint_model``).
    """

    root: Path
    transformer: nn.Module | None = None
    vae: AutoencoderKLCogVideoX | None = None
    text_encoder: T5EncoderModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    scheduler_config: dict[str, Any] | None = None
    transformer_config: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, LoadReport] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _missing(root: Path, what: str, expected: str) -> CogVideoXModelFilesError:
    return CogVideoXModelFilesError(f"{root}: missing {expected} ({what}). {WHERE_TO_GET}.")


def _require(path: Path, root: Path, what: str) -> Path:
    if not path.exists():
        raise _missing(root, what, str(path.relative_to(root)))
    return path


def check_model_folder(root: str | Path) -> Path:
    """The folder, after checking that it is a diffusers pipeline folder (not one component)."""
    root = Path(root)
    if not root.is_dir():
        raise CogVideoXModelFilesError(f"CogVideoX model folder not found: {root}. {WHERE_TO_GET}.")
    if (root / "config.json").is_file() and not (root / "transformer").is_dir():
        raise CogVideoXModelFilesError(
            f"{root} holds one component (a config.json at its top); pass the folder that contains "
            "transformer/, vae/, text_encoder/, tokenizer/ and scheduler/ instead"
        )
    return root


def find_weights(folder: Path, stem: str, root: Path, what: str) -> Path | list[Path]:
    """The weight file (or shards) of one model (`vidctrl.models.loading.find_weight_files`), or a
    message naming the file that is missing."""
    files = find_weight_files(folder, stem)
    if not files:
        rel = folder.relative_to(root) / f"{stem}.safetensors"
        raise _missing(root, what, f"{rel} (or sharded {stem}-*-of-*.safetensors with their .index.json)")
    return files[0] if len(files) == 1 else files


class _WithFreshTensors(CheckpointReader):
    """A checkpoint plus tensors that code created for keys the checkpoint lacks (new layers)."""

    def __init__(self, base: CheckpointReader, fresh: Mapping[str, Tensor]) -> None:
        clash = sorted(set(fresh) & set(base.shapes()))
        if clash:
            raise ValueError(f"{base.description}: initialize_missing returned keys the checkpoint has: {clash}")
        self.base, self.fresh = base, dict(fresh)
        self.description = f"{base.description} + {len(fresh)} newly initialised tensors"

    def shapes(self) -> dict[str, Shape]:
        return {**self.base.shapes(), **{k: tuple(v.shape) for k, v in self.fresh.items()}}

    def load(self, key: str) -> Tensor:
        return self.fresh[key] if key in self.fresh else self.base.load(key)

    def close(self) -> None:
        self.base.close()


# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------


def transformer_key_map(ignore: Sequence[tuple[str, str]] = ()) -> KeyMap:
    """Diffusers names are model names; the stray top-level ``pos_embedding`` is ignored by name."""
    tolerated = (STRAY_POS_EMBEDDING, "a stray positional table of old CogVideoX-Fun files (recomputed, not stored)")
    return KeyMap([TemplateRule("{any}", "{any}")], ignore=[tolerated, *ignore],
                  name="CogVideoX transformer (diffusers layout)")


def build_transformer(config: Mapping[str, Any],
                      transformer_class: type[nn.Module] = CogVideoXTransformer3DModel) -> nn.Module:
    """The transformer of ``config`` with its parameters on the meta device (keys it does not take are
    dropped by diffusers' ``from_config``, e.g. ``add_noise_in_inpaint_model``)."""
    parameters = inspect.signature(transformer_class.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        config = {k: v for k, v in config.items() if k in parameters or k.startswith("_")}
    with empty_weights():
        return transformer_class.from_config(dict(config))  # type: ignore[attr-defined]


def load_transformer_weights(model: nn.Module, reader: CheckpointReader, *, dtype: torch.dtype | None = None,
                             device: torch.device | str = "cpu", strict: bool = True,
                             initialize_missing: InitializeMissing | None = None,
                             key_map: KeyMap | None = None, what: str | None = None) -> LoadReport:
    """Fill ``model`` from ``reader`` strictly; keys only ``initialize_missing`` may supply (layers the
    model adds to its base) come from that callback, which gets the model and the missing keys."""
    key_map = key_map or transformer_key_map()
    if initialize_missing is not None:
        plan = key_map.plan(reader.shapes())
        expected = ExpectedTensors.of(model)
        provided = {expected.canonical.get(k) for k in plan.assignments}
        missing = [k for k in expected.shapes if k not in provided]
        if missing:
            reader = _WithFreshTensors(reader, initialize_missing(model, missing))
    return load_component(model, reader, key_map, dtype=dtype, device=device, strict=strict,
                 what=what or f"{type(model).__name__} <- {reader.description}")


def load_cogvideox_transformer(
    root: str | Path,
    *,
    transformer_class: type[nn.Module] = CogVideoXTransformer3DModel,
    config_overrides: Mapping[str, Any] | None = None,
    initialize_missing: InitializeMissing | None = None,
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[nn.Module, LoadReport, dict[str, Any]]:
    """The transformer of a model folder, built from its config (plus ``config_overrides``) as
    ``transformer_class`` and filled strictly. Returns the model, its load report and the raw config."""
    root = Path(root)
    folder = root / "transformer"
    raw = read_json(_require(folder / "config.json", root, "transformer config"))
    reader = open_checkpoint(find_weights(folder, WEIGHTS_STEM, root, "transformer weights"))
    model = build_transformer({**raw, **(config_overrides or {})}, transformer_class)
    report = load_transformer_weights(model, reader, dtype=dtype, device=device, strict=strict,
                                      initialize_missing=initialize_missing, key_map=key_map,
                                      what=f"CogVideoX transformer <- {reader.description}")
    return model, report, raw


def widen_patch_embedding(model: nn.Module, in_channels: int) -> bool:
    """Give the patch embedding ``in_channels`` input channels, the new ones zero (1.0 and 1.5).

    Returns False when it has them already; raises when it has more (the checkpoint was trained for
    another train mode). The new ``in_channels`` is written to the model's config so it reloads.
    """
    from vidctrl.models.widen import widen_input_channels

    proj = model.patch_embed.proj  # type: ignore[union-attr]
    if isinstance(proj, nn.Conv2d):
        changed = widen_input_channels(model.patch_embed, "proj", in_channels)  # type: ignore[arg-type]
    else:
        changed = _widen_linear_patch(model, proj, in_channels)
    if changed:
        model.register_to_config(in_channels=in_channels)  # type: ignore[operator]
    return changed


@torch.no_grad()
def _widen_linear_patch(model: nn.Module, proj: nn.Linear, in_channels: int) -> bool:
    """CogVideoX 1.5: the Linear's inputs are (channel, t, y, x) blocks of p_t * p * p features."""
    config = model.config  # type: ignore[attr-defined]
    block = config.patch_size_t * config.patch_size**2
    old_channels = proj.in_features // block
    if old_channels == in_channels:
        return False
    if old_channels > in_channels:
        raise ValueError(
            f"patch_embed.proj takes {old_channels} input channels, more than the {in_channels} this train mode "
            "feeds; choose the train mode the checkpoint was trained for"
        )
    new = nn.Linear(in_channels * block, proj.out_features, bias=proj.bias is not None,
                    device=proj.weight.device, dtype=proj.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old_channels * block] = proj.weight
    if proj.bias is not None:
        new.bias.copy_(proj.bias)
    model.patch_embed.proj = new  # type: ignore[union-attr]
    return True


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def resize_crop_region_for_grid(grid: tuple[int, int], base_width: int, base_height: int
                                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a ``grid`` (h, w) of patches sits, resized to cover and centred, in the base grid.

    CogVideoX 1.0 places the rotary frequencies of any training size inside the grid of its
    sample size (60x90 latents -> 30x45 patches), so a smaller video uses the central region.
    """
    height, width = grid
    if height / width > base_height / base_width:
        resize_height, resize_width = base_height, round(base_height / height * width)
    else:
        resize_width, resize_height = base_width, round(base_width / width * height)
    top = round((base_height - resize_height) / 2.0)
    left = round((base_width - resize_width) / 2.0)
    return (top, left), (top + resize_height, left + resize_width)


def rotary_embedding(config: Any, *, latent_frames: int, latent_height: int, latent_width: int,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor] | None:
    """The 3D rotary (cos, sin) tables for a latent video of this size, or None (2B: sinusoidal).

    1.0: ``linspace`` grid over the crop region of the sample-size grid, one temporal position per
    latent frame. 1.5: ``slice`` grid up to the sample size, one position per ``patch_size_t``
    latent frames. As the CogVideoX pipelines and the CogVideoX-Fun trainers compute them.
    """
    if not config.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p, p_t = config.patch_size, config.patch_size_t
    grid = (latent_height // p, latent_width // p)
    base_height, base_width = config.sample_height // p, config.sample_width // p
    if p_t is None:
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=resize_crop_region_for_grid(grid, base_width, base_height),
            grid_size=grid, temporal_size=latent_frames, device=device,
        )
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid,
        temporal_size=(latent_frames + p_t - 1) // p_t, grid_type="slice", max_size=(base_height, base_width),
        device=device,
    )


# --------------------------------------------------------------------------------------------
# VAE, text encoder, tokenizer, scheduler
# --------------------------------------------------------------------------------------------


def load_cogvideox_vae(root: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
                       strict: bool = True) -> tuple[AutoencoderKLCogVideoX, LoadReport]:
    """The 3D causal VAE as diffusers' ``AutoencoderKLCogVideoX``."""
    root = Path(root)
    folder = root / "vae"
    config = read_json(_require(folder / "config.json", root, "VAE config"))
    reader = open_checkpoint(find_weights(folder, WEIGHTS_STEM, root, "VAE weights"))
    with empty_weights():
        model = AutoencoderKLCogVideoX.from_config(config)
    report = load_component(model, reader, identity_key_map("CogVideoX VAE (diffusers layout)"), dtype=dtype,
                   device=device, strict=strict, what=f"CogVideoX VAE <- {reader.description}")
    return model, report


def load_cogvideox_text_encoder(root: str | Path, *, dtype: torch.dtype | None = None,
                                device: torch.device | str = "cpu", strict: bool = True
                                ) -> tuple[T5EncoderModel, LoadReport]:
    """The T5 v1.1 encoder as transformers' ``T5EncoderModel`` (``shared`` and ``encoder.embed_tokens``
    are one tied tensor; a file may hold either name or both)."""
    root = Path(root)
    folder = root / "text_encoder"
    config = T5Config.from_dict(read_json(_require(folder / "config.json", root, "text encoder config")))
    reader = open_checkpoint(find_weights(folder, TEXT_ENCODER_STEM, root, "text encoder weights"))
    with empty_weights():
        model = T5EncoderModel(config)
    report = load_component(model, reader, identity_key_map("CogVideoX T5 encoder (transformers layout)"), dtype=dtype,
                   device=device, strict=strict, what=f"CogVideoX T5 encoder <- {reader.description}")
    return model, report


def load_cogvideox_tokenizer(root: str | Path) -> PreTrainedTokenizerBase:
    root = Path(root)
    folder = _require(root / "tokenizer", root, "T5 tokenizer folder")
    with hub_offline():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_scheduler_config(root: str | Path) -> dict[str, Any]:
    """``scheduler/scheduler_config.json``: the beta schedule, prediction type and SNR shift."""
    root = Path(root)
    return read_json(_require(root / "scheduler" / "scheduler_config.json", root, "scheduler config"))


def load_cogvideox_components(
    path: str | Path,
    *,
    parts: Sequence[str] = ALL_PARTS,
    dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
    transformer_class: type[nn.Module] = CogVideoXTransformer3DModel,
    transformer_overrides: Mapping[str, Any] | None = None,
    initialize_missing: InitializeMissing | None = None,
) -> CogVideoXComponents:
    """Load the asked-for components of a CogVideoX diffusers folder, strictly, without network.

    ``dtype`` may be one dtype or one per part (``{"vae": torch.float32, ...}``).
    ``transformer_class``, ``transformer_overrides`` and ``initialize_missing`` let a family load
    the transformer as its own subclass (see `load_cogvideox_transformer`).
    """
    root = check_model_folder(path)
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown:
        raise ValueError(f"unknown CogVideoX component(s) {unknown}; choose from {list(ALL_PARTS)}")

    def dtype_of(part: str) -> torch.dtype | None:
        return dtype.get(part) if isinstance(dtype, Mapping) else dtype

    out = CogVideoXComponents(root=root)
    with hub_offline():
        if "transformer" in parts:
            out.transformer, out.reports["transformer"], out.transformer_config = load_cogvideox_transformer(
                root, transformer_class=transformer_class, config_overrides=transformer_overrides,
                initialize_missing=initialize_missing, dtype=dtype_of("transformer"), device=device, strict=strict,
            )
        if "vae" in parts:
            out.vae, out.reports["vae"] = load_cogvideox_vae(root, dtype=dtype_of("vae"), device=device,
                                                             strict=strict)
        if "text_encoder" in parts:
            out.text_encoder, out.reports["text_encoder"] = load_cogvideox_text_encoder(
                root, dtype=dtype_of("text_encoder"), device=device, strict=strict)
        if "tokenizer" in parts:
            out.tokenizer = load_cogvideox_tokenizer(root)
        if "scheduler" in parts:
            out.scheduler_config = load_scheduler_config(root)
    return out

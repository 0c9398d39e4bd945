"""Load Wan2.1-Fun Control components from a local folder, in either of its two layouts.

Layouts (detected from the folder, or named with ``layout=``):

``original`` - a Wan2.1-Fun release as published on Hugging Face / ModelScope and read by
VideoX-Fun with ``config/wan2.1/wan_civitai.yaml``::

    config.json                                              transformer config (VideoX-Fun names)
    diffusion_pytorch_model.safetensors                      transformer (or -0000k-of-0000n shards
                                                             + diffusion_pytorch_model.safetensors.index.json)
    Wan2.1_VAE.pth                                           VAE
    models_t5_umt5-xxl-enc-bf16.pth                          UMT5-XXL encoder
    google/umt5-xxl/                                         its tokenizer
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth  CLIP (vision tower used)
    xlm-roberta-large/                                       CLIP text tokenizer (unused by Wan)

``diffusers`` - one subfolder per component, as ``save_pretrained`` writes them::

    model_index.json, transformer/, vae/, text_encoder/, tokenizer/, image_encoder/ (+ image_processor/, scheduler/)

Every weight file goes through the strict loader (``vidctrl.models.loading``); nothing is fetched
from a hub (tokenizers load with ``local_files_only`` under ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKLWan
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerBase,
    UMT5Config,
    UMT5EncoderModel,
)

from vidctrl.errors import UserError
from vidctrl.models.loading import (
    CheckpointReader,
    KeyMap,
    LoadReport,
    empty_weights,
    fp32_module_names,
    hub_offline,
    identity_key_map,
    load_checkpoint,
    open_checkpoint,
    read_json,
)
from vidctrl.models.wan.keymap import (
    clip_config_from_original,
    clip_key_map,
    fun_module_config,
    transformer_config_from_original,
    transformer_key_map,
    umt5_config_from_original,
    umt5_key_map,
    vae_config_from_original,
    vae_key_map,
)
from vidctrl.models.wan.transformer import WanFunControlTransformer3DModel

Layout = Literal["diffusers", "original"]
ALL_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder")

# File and folder names of an original Wan2.1-Fun release (VideoX-Fun config/wan2.1/wan_civitai.yaml).
ORIGINAL_FILES: dict[str, str] = {
    "transformer": "config.json",
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
}
TRANSFORMER_WEIGHTS_STEM = "diffusion_pytorch_model"
WHERE_TO_GET = (
    "Wan2.1-Fun releases are published on Hugging Face as alibaba-pai/Wan2.1-Fun-V1.1-1.3B-Control, "
    "-V1.1-14B-Control, -V1.1-1.3B-Control-Camera, -V1.1-14B-Control-Camera, alibaba-pai/Wan2.1-Fun-1.3B-Control "
    "and -14B-Control (ModelScope: PAI/<same name>); download a whole repository, e.g. "
    "`huggingface-cli download alibaba-pai/Wan2.1-Fun-V1.1-1.3B-Control --local-dir <folder>`. "
    "vidctrl never downloads at run time"
)

ModelDType = torch.dtype | Mapping[str, torch.dtype] | None


class WanModelFilesError(UserError, FileNotFoundError):
    """A Wan model folder that lacks a file its layout needs."""


@dataclass
class WanComponents:
    """What ``load_wan_components`` loaded (parts not asked for stay ``None``)."""

    root: Path
    layout: Layout
    transformer: WanFunControlTransformer3DModel | None = None
    vae: AutoencoderKLWan | None = None
    text_encoder: UMT5EncoderModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    image_encoder: CLIPVisionModel | CLIPVisionModelWithProjection | None = None
    reports: dict[str, LoadReport] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Layout detection and file lookup
# --------------------------------------------------------------------------------------------


def detect_layout(root: str | Path) -> Layout:
    """``diffusers`` if the folder has ``model_index.json`` or ``transformer/config.json``, else ``original``."""
    root = Path(root)
    if not root.is_dir():
        raise WanModelFilesError(f"Wan model folder not found: {root}. {WHERE_TO_GET}.")
    if (root / "model_index.json").is_file() or (root / "transformer" / "config.json").is_file():
        return "diffusers"
    if (root / "config.json").is_file() and "num_attention_heads" in read_json(root / "config.json"):
        raise WanModelFilesError(
            f"{root} holds one diffusers component (its config.json uses diffusers names); "
            f"pass the folder that contains transformer/, vae/, text_encoder/, ... instead"
        )
    if (root / "config.json").is_file() or any((root / name).exists() for name in ORIGINAL_FILES.values()):
        return "original"
    raise WanModelFilesError(
        f"{root} is neither a diffusers-layout Wan folder (model_index.json, transformer/config.json) nor an "
        f"original Wan2.1-Fun release (config.json, {TRANSFORMER_WEIGHTS_STEM}*.safetensors, "
        f"{ORIGINAL_FILES['vae']}, ...). {WHERE_TO_GET}."
    )


def _missing(root: Path, layout: Layout, what: str, expected: str) -> WanModelFilesError:
    return WanModelFilesError(f"{root} ({layout} layout): missing {expected} ({what}). {WHERE_TO_GET}.")


def _require(path: Path, root: Path, layout: Layout, what: str) -> Path:
    if not path.exists():
        raise _missing(root, layout, what, str(path.relative_to(root)))
    return path


def find_weights(folder: Path, stem: str, root: Path, layout: Layout, what: str) -> list[Path]:
    """The weight files of one model: ``<stem>.safetensors.index.json`` shards, one ``<stem>.safetensors``,
    index-less ``<stem>-*-of-*.safetensors`` shards, or ``<stem>.bin``/``.pth``, in that order."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        return [index]
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(folder.glob(f"{stem}-*-of-*.safetensors"))
    if shards:
        return shards
    for suffix in (".bin", ".pth"):
        if (folder / f"{stem}{suffix}").is_file():
            return [folder / f"{stem}{suffix}"]
    rel = folder.relative_to(root) / f"{stem}.safetensors"
    raise _missing(root, layout, what, f"{rel} (or sharded {stem}-*-of-*.safetensors with their .index.json)")


def _one_or_many(files: Sequence[Path]) -> Path | Sequence[Path]:
    return files[0] if len(files) == 1 else files






def _dtype_for(dtype: ModelDType, part: str) -> torch.dtype | None:
    if isinstance(dtype, Mapping):
        return dtype.get(part)
    return dtype


def _load(
    model: nn.Module,
    reader: CheckpointReader,
    key_map: KeyMap,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str,
    strict: bool,
    what: str,
) -> LoadReport:
    with reader:
        report = load_checkpoint(
            model,
            reader,
            key_map,
            dtype=dtype,
            device=device,
            keep_in_fp32=fp32_module_names(model, dtype),
            strict=strict,
            what=what,
        )
    model.eval()  # as from_pretrained returns them; trainers call .train() on what they train
    return report


# --------------------------------------------------------------------------------------------
# One loader per component
# --------------------------------------------------------------------------------------------


def load_wan_transformer(
    root: str | Path,
    layout: Layout,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[WanFunControlTransformer3DModel, LoadReport]:
    """The transformer, built on the meta device from its config and filled from its weights."""
    root = Path(root)
    folder = root if layout == "original" else root / "transformer"
    config_file = _require(folder / "config.json", root, layout, "transformer config")
    files = find_weights(folder, TRANSFORMER_WEIGHTS_STEM, root, layout, "transformer weights")
    reader = open_checkpoint(_one_or_many(files))
    shapes = reader.shapes()
    raw = read_json(config_file)
    if layout == "original":
        config = transformer_config_from_original(raw, shapes, source=str(config_file))
        key_map = transformer_key_map()
    else:
        config = {**raw, **fun_module_config(raw, shapes)}
        key_map = identity_key_map("Wan transformer (diffusers layout)")
    with empty_weights():
        model = WanFunControlTransformer3DModel.from_config(config)
    what = f"Wan transformer <- {reader.description}"
    report = _load(model, reader, key_map, dtype=dtype, device=device, strict=strict, what=what)
    return model, report


def load_wan_vae(
    root: str | Path,
    layout: Layout,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[AutoencoderKLWan, LoadReport]:
    """The Wan2.1 VAE as diffusers' ``AutoencoderKLWan`` (original: config read off the file's shapes)."""
    root = Path(root)
    if layout == "original":
        path = _require(root / ORIGINAL_FILES["vae"], root, layout, "Wan2.1 VAE")
        reader = open_checkpoint(path)
        config = vae_config_from_original(reader.shapes(), source=str(path))
        key_map = vae_key_map(config["num_res_blocks"])
    else:
        folder = root / "vae"
        config = read_json(_require(folder / "config.json", root, layout, "VAE config"))
        reader = open_checkpoint(
            _one_or_many(find_weights(folder, TRANSFORMER_WEIGHTS_STEM, root, layout, "VAE weights"))
        )
        key_map = identity_key_map("Wan VAE (diffusers layout)")
    with empty_weights():
        model = AutoencoderKLWan.from_config(config)
    report = _load(
        model,
        reader,
        key_map,
        dtype=dtype,
        device=device,
        strict=strict,
        what=f"Wan VAE <- {reader.description}",
    )
    return model, report


def load_wan_text_encoder(
    root: str | Path,
    layout: Layout,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[UMT5EncoderModel, LoadReport]:
    """The UMT5 encoder as transformers' ``UMT5EncoderModel``."""
    root = Path(root)
    if layout == "original":
        path = _require(root / ORIGINAL_FILES["text_encoder"], root, layout, "UMT5-XXL text encoder")
        reader = open_checkpoint(path)
        config = UMT5Config(**umt5_config_from_original(reader.shapes(), source=str(path)))
        key_map = umt5_key_map()
    else:
        folder = root / "text_encoder"
        config = UMT5Config.from_dict(
            read_json(_require(folder / "config.json", root, layout, "text encoder config"))
        )
        reader = open_checkpoint(
            _one_or_many(find_weights(folder, "model", root, layout, "text encoder weights"))
        )
        key_map = identity_key_map("Wan UMT5 encoder (diffusers layout)")
    with empty_weights():
        model = UMT5EncoderModel(config)
    report = _load(
        model,
        reader,
        key_map,
        dtype=dtype,
        device=device,
        strict=strict,
        what=f"Wan UMT5 encoder <- {reader.description}",
    )
    return model, report


def load_wan_image_encoder(
    root: str | Path,
    layout: Layout,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[CLIPVisionModel | CLIPVisionModelWithProjection, LoadReport]:
    """The CLIP ViT-H/14 vision tower as transformers' ``CLIPVisionModelWithProjection``.

    Wan feeds the transformer the output of the penultimate block (``hidden_states[-2]`` with
    ``output_hidden_states=True``), ``(B, 257, 1280)`` for 224x224 inputs.
    """
    root = Path(root)
    model_cls: type[CLIPVisionModel] | type[CLIPVisionModelWithProjection]
    if layout == "original":
        path = _require(root / ORIGINAL_FILES["image_encoder"], root, layout, "CLIP image encoder")
        reader = open_checkpoint(path)
        config = CLIPVisionConfig(**clip_config_from_original(reader.shapes(), source=str(path)))
        key_map = clip_key_map()
        model_cls = CLIPVisionModelWithProjection
    else:
        folder = root / "image_encoder"
        raw = read_json(_require(folder / "config.json", root, layout, "image encoder config"))
        config = CLIPVisionConfig.from_dict(raw)
        reader = open_checkpoint(
            _one_or_many(find_weights(folder, "model", root, layout, "image encoder weights"))
        )
        key_map = identity_key_map("Wan CLIP image encoder (diffusers layout)")
        with_projection = "CLIPVisionModelWithProjection" in (raw.get("architectures") or [])
        model_cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    with empty_weights():
        model = model_cls(config)
    report = _load(
        model,
        reader,
        key_map,
        dtype=dtype,
        device=device,
        strict=strict,
        what=f"Wan CLIP image encoder <- {reader.description}",
    )
    return model, report


def load_wan_tokenizer(root: str | Path, layout: Layout) -> PreTrainedTokenizerBase:
    """The UMT5 tokenizer (``google/umt5-xxl/`` in a release, ``tokenizer/`` in diffusers layout)."""
    root = Path(root)
    folder = root / (ORIGINAL_FILES["tokenizer"] if layout == "original" else "tokenizer")
    _require(folder, root, layout, "UMT5 tokenizer folder")
    with hub_offline():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_wan_components(
    path: str | Path,
    *,
    parts: Sequence[str] = ALL_PARTS,
    layout: Layout | Literal["auto"] = "auto",
    dtype: ModelDType = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> WanComponents:
    """Load the asked-for Wan2.1-Fun components from a local folder, strictly, without network.

    Args:
        path: a Wan2.1-Fun release folder (original layout) or a diffusers-layout folder.
        parts: any of ``transformer``, ``vae``, ``text_encoder``, ``tokenizer``, ``image_encoder``.
        layout: ``auto`` (detect), ``original`` or ``diffusers``.
        dtype: one dtype for every model, a ``{part: dtype}`` mapping (parts not named keep their
            stored dtype), or ``None`` to keep stored dtypes. Tensors are cast one at a time.
        device: where the tensors go.
        strict: unexpected checkpoint keys are an error (missing or mis-shaped keys always are).
    """
    root = Path(path)
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown:
        raise ValueError(f"unknown Wan component(s) {unknown}; choose from {list(ALL_PARTS)}")
    chosen: Layout = detect_layout(root) if layout == "auto" else layout
    if chosen not in ("original", "diffusers"):
        raise ValueError(f"layout must be 'auto', 'original' or 'diffusers', not {layout!r}")
    out = WanComponents(root=root, layout=chosen)
    loaders = {
        "transformer": load_wan_transformer,
        "vae": load_wan_vae,
        "text_encoder": load_wan_text_encoder,
        "image_encoder": load_wan_image_encoder,
    }
    with hub_offline():
        for part in ALL_PARTS:
            if part not in parts:
                continue
            if part == "tokenizer":
                out.tokenizer = load_wan_tokenizer(root, chosen)
                continue
            model, report = loaders[part](
                root, chosen, dtype=_dtype_for(dtype, part), device=device, strict=strict
            )
            setattr(out, part, model)
            out.reports[part] = report
    return out

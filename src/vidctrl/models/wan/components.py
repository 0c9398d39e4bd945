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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
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
    KeyMap,
    LoadReport,
    Shape,
    empty_weights,
    find_weight_files,
    hub_offline,
    identity_key_map,
    load_component,
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
    """The weight files of one model (`vidctrl.models.loading.find_weight_files`), or a message naming
    the file that is missing."""
    files = find_weight_files(folder, stem)
    if not files:
        rel = folder.relative_to(root) / f"{stem}.safetensors"
        raise _missing(root, layout, what, f"{rel} (or sharded {stem}-*-of-*.safetensors with their .index.json)")
    return files


def _one_or_many(files: Sequence[Path]) -> Path | Sequence[Path]:
    return files[0] if len(files) == 1 else files






def _dtype_for(dtype: ModelDType, part: str) -> torch.dtype | None:
    if isinstance(dtype, Mapping):
        return dtype.get(part)
    return dtype


# --------------------------------------------------------------------------------------------
# One table of components
# --------------------------------------------------------------------------------------------

ModelFactory = Callable[[], nn.Module]


def _transformer(raw: dict | None, shapes: Mapping[str, Shape], source: str, layout: Layout
                 ) -> tuple[ModelFactory, KeyMap]:
    if layout == "original":
        config = transformer_config_from_original(raw or {}, shapes, source=source)
        key_map = transformer_key_map()
    else:
        config = {**(raw or {}), **fun_module_config(raw or {}, shapes)}
        key_map = identity_key_map("Wan transformer (diffusers layout)")
    return partial(WanFunControlTransformer3DModel.from_config, config), key_map


def _vae(raw: dict | None, shapes: Mapping[str, Shape], source: str, layout: Layout) -> tuple[ModelFactory, KeyMap]:
    if layout == "original":
        config = vae_config_from_original(shapes, source=source)
        return partial(AutoencoderKLWan.from_config, config), vae_key_map(config["num_res_blocks"])
    return partial(AutoencoderKLWan.from_config, raw), identity_key_map("Wan VAE (diffusers layout)")


def _text_encoder(raw: dict | None, shapes: Mapping[str, Shape], source: str, layout: Layout
                  ) -> tuple[ModelFactory, KeyMap]:
    if layout == "original":
        config = UMT5Config(**umt5_config_from_original(shapes, source=source))
        return partial(UMT5EncoderModel, config), umt5_key_map()
    return partial(UMT5EncoderModel, UMT5Config.from_dict(raw)), identity_key_map("Wan UMT5 encoder (diffusers layout)")


def _image_encoder(raw: dict | None, shapes: Mapping[str, Shape], source: str, layout: Layout
                   ) -> tuple[ModelFactory, KeyMap]:
    """Wan feeds the transformer the CLIP ViT-H/14 penultimate block's output (``hidden_states[-2]``),
    ``(B, 257, 1280)`` for 224x224 inputs."""
    if layout == "original":
        config = CLIPVisionConfig(**clip_config_from_original(shapes, source=source))
        return partial(CLIPVisionModelWithProjection, config), clip_key_map()
    with_projection = "CLIPVisionModelWithProjection" in ((raw or {}).get("architectures") or [])
    model_cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    return (partial(model_cls, CLIPVisionConfig.from_dict(raw)),
            identity_key_map("Wan CLIP image encoder (diffusers layout)"))


@dataclass(frozen=True)
class ComponentSpec:
    """Where one model component lives in each layout and how it is built from its config and shapes.

    ``original_file``: the weights file of an original release (None: the transformer, whose
    ``config.json`` and ``diffusion_pytorch_model*`` shards sit at the top of the folder).
    ``folder``/``stem``: its diffusers subfolder and weights file stem.
    """

    what: str
    folder: str
    stem: str
    original_file: str | None
    build: Callable[[dict | None, Mapping[str, Shape], str, Layout], tuple[ModelFactory, KeyMap]]


COMPONENTS: dict[str, ComponentSpec] = {
    "transformer": ComponentSpec("Wan transformer", "transformer", TRANSFORMER_WEIGHTS_STEM, None, _transformer),
    "vae": ComponentSpec("Wan VAE", "vae", TRANSFORMER_WEIGHTS_STEM, ORIGINAL_FILES["vae"], _vae),
    "text_encoder": ComponentSpec("Wan UMT5 encoder", "text_encoder", "model", ORIGINAL_FILES["text_encoder"],
                                  _text_encoder),
    "image_encoder": ComponentSpec("Wan CLIP image encoder", "image_encoder", "model",
                                   ORIGINAL_FILES["image_encoder"], _image_encoder),
}


def load_wan_component(
    root: str | Path,
    layout: Layout,
    part: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> tuple[nn.Module, LoadReport]:
    """One model component (`COMPONENTS`), built on the meta device from its config (original layout:
    read off the file's shapes) and filled strictly from its weights."""
    root = Path(root)
    spec = COMPONENTS[part]
    raw: dict | None = None
    if layout == "original" and spec.original_file is not None:
        path = _require(root / spec.original_file, root, layout, spec.what)
        reader, source = open_checkpoint(path), str(path)
    else:
        folder = root if layout == "original" else root / spec.folder
        config_file = _require(folder / "config.json", root, layout, f"{spec.what} config")
        raw, source = read_json(config_file), str(config_file)
        reader = open_checkpoint(_one_or_many(find_weights(folder, spec.stem, root, layout, f"{spec.what} weights")))
    factory, key_map = spec.build(raw, reader.shapes(), source, layout)
    with empty_weights():
        model = factory()
    return model, load_component(model, reader, key_map, dtype=dtype, device=device, strict=strict,
                        what=f"{spec.what} <- {reader.description}")


def original_encoder_files(root: str | Path) -> list[Path]:
    """The files of an original-layout release that decide what the frozen encoders compute: all but
    the transformer's weights (they sit side by side with the VAE, UMT5 and CLIP files in one folder)."""
    return [f for f in sorted(Path(root).rglob("*")) if f.is_file() and not f.name.startswith(".")
            and not (f.name.startswith(TRANSFORMER_WEIGHTS_STEM) and f.suffix in (".safetensors", ".bin"))]


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
    with hub_offline():
        for part in ALL_PARTS:
            if part not in parts:
                continue
            if part == "tokenizer":
                out.tokenizer = load_wan_tokenizer(root, chosen)
                continue
            model, report = load_wan_component(
                root, chosen, part, dtype=_dtype_for(dtype, part), device=device, strict=strict
            )
            setattr(out, part, model)
            out.reports[part] = report
    return out

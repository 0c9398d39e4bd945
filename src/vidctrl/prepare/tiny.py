"""Tiny random stand-ins for the data-preparation models, to try the pipeline without their weights.

- `tiny_dwpose(dir)` writes `yolox_l.onnx` and `dw-ll_ucoco_384.onnx` with the real files' input and
  output names and shapes (`images` 1x3x640x640 -> `output` 1x8400x85; `input` 1x3x384x288 ->
  `simcc_x` 1x133x576, `simcc_y` 1x133x768) whose outputs are a random function of the mean colour of
  the input: they exercise every step of `DWPose` in milliseconds and find one or two people anywhere.
- `tiny_qwen2_vl(dir)` writes a Qwen2-VL (or Qwen2.5-VL) of about 100k parameters in the layout of
  the released folders (config, safetensors, tokenizer.json, preprocessor_config.json), with a
  character-level tokenizer over printable ASCII so that its random captions are readable text.

Building the ONNX files needs the `onnx` package (in the dev extra); nothing is downloaded.
"""

from __future__ import annotations

import os
import string
import types
from pathlib import Path
from typing import Any

import numpy as np

from vidctrl.prepare.dwpose import DETECTOR_FILE, DETECTOR_SIZE, DETECTOR_STRIDES, POSE_FILE, POSE_SIZE

NUM_CLASSES = 80
PEOPLE = 2  # anchors of the tiny detector that find a person
NUM_KEYPOINTS = 133
OPSET = 17
IR_VERSION = 8  # readable by every ONNX Runtime release that supports opset 17


def _onnx() -> types.ModuleType:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "building tiny ONNX models needs the onnx package: pip install 'vidctrl[dev]'"
        ) from None
    return onnx


def _save(graph: Any, path: Path) -> None:
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    onnx.save(model, os.fspath(tmp))
    os.replace(tmp, path)


def _pooled(
    onnx: types.ModuleType, input_name: str, nodes: list, inits: list, rng: np.random.Generator, width: int
) -> str:
    """Nodes computing (B, width) = mean colour of the input (B, 3, H, W) / 255 @ a random matrix."""
    h = onnx.helper
    inits.append(h.make_tensor("scale", onnx.TensorProto.FLOAT, [], [1 / 255]))
    weights = rng.normal(0, 0.5, (3, width)).astype(np.float32)
    inits.append(onnx.numpy_helper.from_array(weights, "colour_weights"))
    nodes += [
        h.make_node("ReduceMean", [input_name], ["mean"], axes=[2, 3], keepdims=0),
        h.make_node("Mul", ["mean", "scale"], ["mean01"]),
        h.make_node("MatMul", ["mean01", "colour_weights"], ["pooled"]),
    ]
    return "pooled"


def tiny_detector(path: str | os.PathLike[str], *, seed: int = 0, dynamic_batch: bool = False) -> Path:
    """A random YOLOX-shaped detector: `images` (1, 3, 640, 640) -> `output` (1, 8400, 85), the last
    81 columns through a sigmoid as in the exported YOLOX."""
    onnx = _onnx()
    h = onnx.helper
    rng = np.random.default_rng(seed)
    anchors = sum((DETECTOR_SIZE[0] // s) * (DETECTOR_SIZE[1] // s) for s in DETECTOR_STRIDES)
    columns = 5 + NUM_CLASSES
    batch: int | str = "batch" if dynamic_batch else 1
    nodes: list = []
    inits: list = []
    pooled = _pooled(onnx, "images", nodes, inits, rng, columns)
    # Nearly every anchor is confidently empty; a few coarse anchors hold a large box that is a person
    # with a score between about 0.5 and 0.9, depending on the input's colour.
    bias = np.concatenate(
        [rng.normal(0, 0.3, (anchors, 4)), np.full((anchors, 1 + NUM_CLASSES), -8.0)], axis=1
    ).astype(np.float32)
    coarse = (DETECTOR_SIZE[0] // DETECTOR_STRIDES[-1]) * (DETECTOR_SIZE[1] // DETECTOR_STRIDES[-1])
    people = rng.choice(np.arange(anchors - coarse, anchors), size=PEOPLE, replace=False)
    bias[people, 2:4] = np.log(rng.uniform(4, 10, (PEOPLE, 2)))  # 128..320 input pixels
    bias[people, 4:6] = 2.0
    inits += [
        onnx.numpy_helper.from_array(bias, "anchor_bias"),
        onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "start_reg"),
        onnx.numpy_helper.from_array(np.array([4], dtype=np.int64), "end_reg"),
        onnx.numpy_helper.from_array(np.array([columns], dtype=np.int64), "end_all"),
        onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
    ]
    nodes += [
        h.make_node("Unsqueeze", [pooled, "axis1"], ["pooled3"]),
        h.make_node("Add", ["pooled3", "anchor_bias"], ["logits"]),
        h.make_node("Slice", ["logits", "start_reg", "end_reg", "axis2"], ["reg"]),
        h.make_node("Slice", ["logits", "end_reg", "end_all", "axis2"], ["conf_logits"]),
        h.make_node("Sigmoid", ["conf_logits"], ["conf"]),
        h.make_node("Concat", ["reg", "conf"], ["output"], axis=2),
    ]
    graph = h.make_graph(
        nodes,
        "tiny_yolox",
        [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [batch, 3, *DETECTOR_SIZE])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [batch, anchors, columns])],
        inits,
    )
    _save(graph, Path(path))
    return Path(path)


def tiny_pose_model(path: str | os.PathLike[str], *, seed: int = 1, dynamic_batch: bool = False) -> Path:
    """A random DWPose-shaped whole-body model: `input` (1, 3, 384, 288) -> `simcc_x` (1, 133, 576),
    `simcc_y` (1, 133, 768)."""
    onnx = _onnx()
    h = onnx.helper
    rng = np.random.default_rng(seed)
    batch: int | str = "batch" if dynamic_batch else 1
    bins = {"x": POSE_SIZE[1] * 2, "y": POSE_SIZE[0] * 2}
    nodes: list = []
    inits: list = [onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")]
    pooled = _pooled(onnx, "input", nodes, inits, rng, NUM_KEYPOINTS)
    nodes.append(h.make_node("Unsqueeze", [pooled, "axis2"], ["per_keypoint"]))
    outputs = []
    for axis, count in bins.items():
        inits += [
            onnx.numpy_helper.from_array(
                rng.normal(0, 1, (1, 1, count)).astype(np.float32), f"profile_{axis}"
            ),
            onnx.numpy_helper.from_array(
                rng.normal(0, 1, (NUM_KEYPOINTS, count)).astype(np.float32), f"bias_{axis}"
            ),
        ]
        nodes += [
            h.make_node("Mul", ["per_keypoint", f"profile_{axis}"], [f"shaped_{axis}"]),
            h.make_node("Add", [f"shaped_{axis}", f"bias_{axis}"], [f"simcc_{axis}"]),
        ]
        outputs.append(
            h.make_tensor_value_info(f"simcc_{axis}", onnx.TensorProto.FLOAT, [batch, NUM_KEYPOINTS, count])
        )
    graph = h.make_graph(
        nodes,
        "tiny_dwpose",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [batch, 3, *POSE_SIZE])],
        outputs,
        inits,
    )
    _save(graph, Path(path))
    return Path(path)


def tiny_dwpose(out_dir: str | os.PathLike[str], *, seed: int = 0, dynamic_batch: bool = False) -> Path:
    """Write both tiny models under their released file names in `out_dir`; returns `out_dir`."""
    out = Path(out_dir)
    tiny_detector(out / DETECTOR_FILE, seed=seed, dynamic_batch=dynamic_batch)
    tiny_pose_model(out / POSE_FILE, seed=seed + 1, dynamic_batch=dynamic_batch)
    return out


# --------------------------------------------------------------------------------------------------
# Qwen2-VL
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def tiny_qwen2_vl(out_dir: str | os.PathLike[str], *, model_type: str = "qwen2_vl", seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL (`model_type="qwen2_vl"`) or Qwen2.5-VL (`"qwen2_5_vl"`) with its
    tokenizer and image processor to `out_dir`, loadable like the released folders."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.printable) - set("\x0b\x0c\r\t"))
    vocab = {c: i for i, c in enumerate(chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision: dict[str, object] = {
        "depth": 1,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if model_type == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
        config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    elif model_type == "qwen2_5_vl":
        vision.update(
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=32,
            fullatt_block_indexes=[0],
            window_size=56,
        )
        config_class, model_class = (
            transformers.Qwen2_5_VLConfig,
            transformers.Qwen2_5_VLForConditionalGeneration,
        )
    else:
        raise ValueError(f"model_type must be qwen2_vl or qwen2_5_vl, got {model_type!r}")
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **{k: text[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:  # transformers 5 has a PIL image processor that needs no torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as images_class,
        )
    except ImportError:
        from transformers import Qwen2VLImageProcessor as images_class
    images_class(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(out)
    return out


__all__ = ["tiny_detector", "tiny_dwpose", "tiny_pose_model", "tiny_qwen2_vl"]

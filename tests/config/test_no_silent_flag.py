"""No silent flag: every field of the config (every section, every family's options) and every flag
that spells it, for every preset, either reaches a reader during a tiny run of that preset or is
refused with a message naming the preset. A field with neither fails this test.

How a read is proven: during one short run per preset (checkpoint, validation, resume), every attribute
read of a config section is recorded, except the whole-config copies (`dataclasses.asdict` for the
config hash, the tracker and the checkpoint's saved config), which read every field without using it.
Fields read only on paths a CPU test run cannot take are listed in `READ_ELSEWHERE`, each with the
reason and the test that proves its reader.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest

import vidctrl.cache.fingerprint
from vidctrl.cli import main
from vidctrl.config.fields import ConfigError, flags_of
from vidctrl.config.train import SECTIONS, build_parser, parse_train_config
from vidctrl.families import FAMILIES, all_presets
from vidctrl.train.trainer import train

_LORA_TEST = "tests/train/test_engine.py::test_lora_trains_only_adapters_and_checkpoints_them"
# Read only on a path this run cannot take: field -> (why, the test that proves the reader).
READ_ELSEWHERE: dict[str, tuple[str, str]] = {
    "config_path": ("read while the config is built: it selects the seed model YAML",
                    "tests/train/test_wan_training.py::test_seed_command_parses_every_flag_with_the_seed_meaning"),
    "preset": ("read while the config is built: it selects the family",
               "tests/config/test_no_silent_flag.py (every run here is one preset)"),
    "cache_dir": ("read by --load_tensors runs and `vidctrl cache`",
                  "tests/cache/test_cached_training.py::test_a_cached_run_trains_on_what_an_uncached_run_encodes_"
                  "without_loading_the_encoders"),
    "nan_policy": ("read when a loss or gradient is not finite",
                   "tests/train/test_engine.py::test_nan_loss_stops_naming_the_step_and_the_samples"),
    "loss_type": ("checked while the config is built: a preset's own objective is accepted, another refused",
                  "tests/train/test_wan_training.py::test_flags_the_preset_cannot_honour_are_refused_with_the_reason"),
    # LoRA settings are read by LoRA runs; these runs train the full model (trainable_modules is read).
    "rank": ("read by --use_lora runs", _LORA_TEST),
    "network_alpha": ("read by --use_lora runs", _LORA_TEST),
    "lora_target_modules": ("read by --use_lora runs", _LORA_TEST),
}

_RECORDING: list[set[str]] = []
# Code that reads every field without using each: whole-config copies and the cache fingerprint.
_COPIERS = {dataclasses.__file__, vidctrl.cache.fingerprint.__file__}


@contextmanager
def record_reads(classes: list[type]) -> Iterator[set[str]]:
    """Record `section.field` reads of instances of `classes` (not whole-config copies)."""
    reads: set[str] = set()
    originals = {}
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}

        def hook(self: Any, name: str, _names: set[str] = names) -> Any:
            if name in _names and _RECORDING and sys._getframe(1).f_code.co_filename not in _COPIERS:
                _RECORDING[-1].add(name)
            return object.__getattribute__(self, name)

        originals[cls] = cls.__dict__.get("__getattribute__")
        cls.__getattribute__ = hook  # type: ignore[method-assign]
    _RECORDING.append(reads)
    try:
        yield reads
    finally:
        _RECORDING.pop()
        for cls, original in originals.items():
            if original is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = original  # type: ignore[method-assign]


def _all_classes() -> list[type]:
    return list(SECTIONS.values()) + [f.options_class for f in FAMILIES if f.options_class is not None]


def _fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every field of every section and family options class, with its type."""
    out: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cls in _all_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, (f, hints[f.name]))
    return out


# --- tiny runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def walk_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    from vidctrl.data.video import read_frames

    root = tmp_path_factory.mktemp("no-silent-flag")
    out = {}
    for layout in ("videox", "dynamictrl"):
        assert main(["data", "sample", "--out", str(root / layout), "--layout", layout, "--num_videos", "1",
                     "--num_images", "0"]) == 0
        out[layout] = root / layout
    for preset in all_presets():
        assert main(["model", "tiny", "--preset", preset, "--out", str(root / preset)]) == 0
        out[preset] = root / preset
    meta = json.loads((out["videox"] / "metadata.json").read_text())
    out["control"] = out["videox"] / meta[0]["control_file_path"]
    frame = read_frames(out["videox"] / meta[0]["file_path"], np.array([0]))[0]
    out["image"] = root / "reference.png"
    Image.fromarray(frame).save(out["image"])
    out["camera"] = camera_dataset(root / "camera")
    return out


def camera_dataset(root: Path) -> Path:
    """One video with a camera trajectory (Control-Camera's layout)."""
    from vidctrl.data.camera import CameraTrajectory, write_camera_txt
    from vidctrl.data.video import write_video

    frames = [np.full((32, 32, 3), 20 * k % 255, dtype=np.uint8) for k in range(8)]
    write_video(root / "v0.mp4", frames, fps=8)
    w2c = np.tile(np.eye(4)[:3], (8, 1, 1))
    w2c[:, 0, 3] = np.linspace(0, 0.5, 8)
    rows = np.concatenate([np.zeros((8, 1)), np.tile([0.5, 0.9, 0.5, 0.5], (8, 1)), np.zeros((8, 2)),
                           w2c.reshape(8, 12)], axis=1)
    write_camera_txt(root / "v0.txt", CameraTrajectory.from_array(rows))
    entry = {"file_path": "v0.mp4", "control_file_path": "v0.txt", "text": "a room", "type": "video"}
    (root / "metadata.json").write_text(json.dumps([entry]))
    return root


def run_flags(preset: str, inputs: dict[str, Path], out: Path) -> list[str]:
    """One epoch of one step of `preset` that checkpoints, validates at the epoch's end, logs to tensorboard
    and resumes (from an empty folder)."""
    common = ["--preset", preset, "--pretrained_model_name_or_path", str(inputs[preset]), "--output_dir", str(out),
              "--report_to", "tensorboard", "--seed", "3", "--num_train_epochs", "1", "--checkpointing_steps", "1",
              "--resume_from_checkpoint", "latest", "--validation_epochs", "1", "--validation_prompts", "a dance",
              "--validation_num_inference_steps", "1", "--validation_frames", "5", "--dataloader_num_workers", "0"]
    if preset == "dynamictrl":
        return [*common, "--data_root", str(inputs["dynamictrl"]), "--height_buckets", "32", "--width_buckets",
                "32", "--height", "32", "--width", "32", "--frame_buckets", "5", "--max_num_frames", "5",
                "--validation_images", str(inputs["image"]), "--validation_driving_videos", str(inputs["control"])]
    data = inputs["camera" if preset == "wan2.1-fun-control-camera" else "videox"]
    videox = [*common, "--train_data_meta", str(data / "metadata.json"), "--train_data_dir",
              str(data), "--video_sample_size", "32", "--image_sample_size", "32",
              "--token_sample_size", "32", "--video_sample_stride", "1", "--video_sample_n_frames", "5"]
    if preset == "cogvideox-fun-inp":
        return [*videox, "--validation_images", str(inputs["image"])]
    if preset.startswith("wan"):
        videox.append("--motion_sub_loss")  # its ratio is read only with it
    if preset == "wan2.1-fun-control-camera":  # validation follows a camera trajectory
        return [*videox, "--validation_control_videos", str(data / "v0.txt")]
    return [*videox, "--validation_control_videos", str(inputs["control"])]


# --- refusal probes ----------------------------------------------------------------------------

def other_value(f: dataclasses.Field, tp: Any) -> list[str]:
    """Command-line words giving `f` a value other than its default."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    inner = tp
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = next(a for a in get_args(tp) if a is not type(None))
    if inner is bool:
        return ["true" if not default else "false"]
    if get_origin(inner) is Literal:
        return [str(next(c for c in get_args(inner) if c != default))]
    if get_origin(inner) in (list, tuple):
        item = next(a for a in get_args(inner) if a is not Ellipsis)
        return ["2"] if item in (int, float) else ["x"]
    if inner is int:
        return [str((default or 0) + 2)]
    if inner is float:
        return [str((default or 0.25) * 0.5)]
    return ["x"]


def refusal(preset: str, name: str) -> str | None:
    """The message that refuses a non-default `name` for `preset`, or None when it is accepted."""
    f, tp = _fields()[name]
    try:
        parse_train_config(["--preset", preset, flags_of(f)[0], *other_value(f, tp)])
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(all_presets()))
def test_every_field_reaches_a_reader_or_is_refused_naming_the_preset(
    preset: str, walk_inputs: dict[str, Path], tmp_path: Path
) -> None:
    config = parse_train_config(run_flags(preset, walk_inputs, tmp_path / "run"))
    with record_reads(_all_classes()) as reads:
        result = train(config)
    assert result.global_step == 1 and result.checkpoints and result.validation_dirs
    silent = []
    for name in _fields():
        if name in reads or name in READ_ELSEWHERE:
            continue
        message = refusal(preset, name)
        if message is None or preset not in message:
            silent.append(f"{name}: not read by the run" + (f"; refused without naming the preset: {message}"
                                                             if message else ""))
    assert not silent, f"preset {preset}: fields neither honoured nor refused:\n" + "\n".join(silent)


def test_every_flag_alias_sets_its_field() -> None:
    parser = build_parser()
    fields = _fields()
    for name, (f, tp) in fields.items():
        for flag in flags_of(f):
            namespace = parser.parse_args([flag, *other_value(f, tp)])
            assert name in vars(namespace), f"{flag} does not set {name}"


def test_the_recorder_sees_a_read_and_ignores_whole_config_copies() -> None:
    config = parse_train_config(["--preset", "wan2.1-fun-control-v1.0"])
    with record_reads(_all_classes()) as reads:
        config.to_dict()
        _ = config.optim.learning_rate
    assert reads == {"learning_rate"}

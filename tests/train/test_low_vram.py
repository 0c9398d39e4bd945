"""`--low_vram` (every Wan seed command passes it): the frozen encoders stay on the CPU, coming to the
accelerator only to encode and to validate, and go back after each. On a CPU machine the proof is
where the trainer puts them at each phase; on a GPU tests/gpu also trains with it."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidctrl.cli import main
from vidctrl.config.train import parse_train_config
from vidctrl.families import family_for_preset
from vidctrl.train.trainer import train

PRESET = "wan2.1-fun-control-v1.0"


@pytest.mark.slow
def test_encoders_come_to_the_accelerator_only_to_encode_and_validate(
    videox_sample_data: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    assert main(["model", "tiny", "--preset", PRESET, "--out", str(model)]) == 0
    image = tmp_path / "reference.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    control = videox_sample_data / json.loads((videox_sample_data / "metadata.json").read_text())[0]["control_file_path"]
    config = parse_train_config([
        "--preset", PRESET, "--pretrained_model_name_or_path", str(model), "--output_dir", str(tmp_path / "out"),
        "--train_data_meta", str(videox_sample_data / "metadata.json"), "--train_data_dir", str(videox_sample_data),
        "--video_sample_size", "32", "--image_sample_size", "32", "--token_sample_size", "32",
        "--video_sample_stride", "1", "--video_sample_n_frames", "5", "--report_to", "none", "--low_vram",
        "--max_train_steps", "2", "--checkpointing_steps", "10", "--validation_steps", "2",
        "--validation_prompts", "a person dances", "--validation_images", str(image),
        "--validation_control_videos", str(control), "--validation_num_inference_steps", "1",
        "--validation_frames", "5",
    ])
    family = family_for_preset(PRESET).from_config(config)
    events: list[str] = []
    state = {"on": False}
    moves, encoders_on = family.move_frozen, family.encoders_on
    deterministic, generate = family.encode_deterministic, family.generate

    def move_frozen(device):
        events.append(f"move {device}")
        moves(device)

    @contextmanager
    def tracked(device):
        with encoders_on(device):
            state["on"] = True
            try:
                yield
            finally:
                state["on"] = False

    def encode(batch):
        events.append("encode on" if state["on"] else "encode OFF")
        return deterministic(batch)

    def generating(*args, **kwargs):
        events.append("generate on" if state["on"] else "generate OFF")
        return generate(*args, **kwargs)

    family.move_frozen, family.encoders_on = move_frozen, tracked  # type: ignore[method-assign]
    family.encode_deterministic, family.generate = encode, generating  # type: ignore[method-assign]
    train(config, family=family)
    assert events[0] == "move cpu"  # straight after loading, before any step
    assert events.count("encode on") == 2 and "encode OFF" not in events
    assert "generate on" in events and "generate OFF" not in events
    assert events[-1] == "move cpu" and not state["on"]  # back on the CPU after validation

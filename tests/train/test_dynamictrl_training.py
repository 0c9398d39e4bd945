"""DynamiCtrl trains from the seed doc's own command (script replaced by `vidctrl train --preset
dynamictrl`, paths replaced by sample data in the DynamiCtrl layout and a tiny model, sizes scaled
down by appended flags): every flag keeps the seed's meaning, training checkpoints, resumes bit for
bit and validates to mp4; DynamiCtrl's size and frame buckets plan the batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seed_commands import SeedCommand, doc_commands
from vidctrl.cli import main
from vidctrl.config.train import ConfigError, parse_train_config
from vidctrl.data.clips import ClipRules
from vidctrl.data.config import DataConfig
from vidctrl.data.manifest import Manifest
from vidctrl.data.records import Record
from vidctrl.data.shapes import DYNAMICTRL_SIZE_BUCKETS, BucketShaper, plan_table
from vidctrl.families.dynamictrl import frame_count_problem, write_tiny_dynamictrl

SCALE_DOWN = [
    "--height_buckets", "64", "--width_buckets", "64", "--height", "64", "--width", "64",
    "--frame_buckets", "5", "--max_num_frames", "5", "--train_batch_size", "1", "--dataloader_num_workers", "0",
    "--gradient_accumulation_steps", "1", "--mixed_precision", "no", "--report_to", "none",
    "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
]

def seed_command() -> SeedCommand:
    """The doc's `cmd="accelerate launch ... dynamictrl_sft_finetune.py ..."`, built in a loop over its
    hyper-parameter arrays (one value each)."""
    (command,) = doc_commands("DynamiCtrl")
    return command


def with_paths(*, model: Path, data: Path, out: Path, image: Path, pose: Path) -> list[str]:
    """The seed command's script flags, the doc's variables for the model, data and output set to ours
    and its validation image and driving video (literal paths in the command) replaced."""
    return seed_command().args_with(
        {"MODEL_PATH": model, "DATA_ROOT": data, "output_dir": out},
        replace={"/home/user/data/dynamictrl_train/test.jpg": image,
                 "/home/user/data/dynamictrl_train/test_driving_video.mp4": pose},
    )


def test_seed_command_parses_every_flag_with_the_seed_meaning(tmp_path: Path) -> None:
    args = seed_command().script_args
    assert "--enable_control_pose" in args and "--pose_control_function" in args
    config = parse_train_config(["--preset", "dynamictrl", *args])
    data, family, optim, validation = config.data, config.family, config.optim, config.validation
    assert data.data_root == Path("/home/user/data/Traing_data")
    assert (data.caption_column, data.video_column) == ("prompts.txt", "video.txt")
    assert (data.height_buckets, data.width_buckets, data.frame_buckets) == ([1360], [768], [37])
    assert (data.height, data.width, data.video_sample_n_frames, data.train_batch_size) == (1360, 768, 37, 64)
    assert family.enable_control_pose and family.pose_control_function == "padaln"
    assert family.id_token == "BW_STYLE" and family.noised_image_dropout == 0.05 and not family.padaln_zero_init
    assert (optim.learning_rate, optim.lr_scheduler, optim.lr_warmup_steps) == (5e-6, "cosine_with_restarts", 1000)
    assert (optim.adam_beta1, optim.adam_beta2, optim.adam_weight_decay, optim.max_grad_norm) == (0.9, 0.95, 1e-3, 1.0)
    assert optim.gradient_accumulation_steps == 4 and optim.optimizer == "adamw"
    assert config.model.gradient_checkpointing and config.model.enable_slicing and config.model.enable_tiling
    assert config.run.max_train_steps == 50000 and config.run.checkpointing_steps == 1000
    assert config.run.mixed_precision == "bf16" and config.run.allow_tf32 and config.run.nccl_timeout == 1800
    assert validation.validation_prompts == ["input the test prompt here."]
    assert validation.validation_prompt_separator == ":::" and validation.num_validation_videos == 1
    assert validation.validation_control_videos == ["/home/user/data/dynamictrl_train/test_driving_video.mp4"]
    assert (validation.validation_steps, validation.validation_epochs) == (100000, 100000)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_mode", "inpaint"], "DynamiCtrl trains in control_ref"),
        (["--enable_control_pose", "false"], "PadaLN layers that need the pose video"),
        (["--pose_control_function", "cross_attention"], "only pose function with released weights"),
        (["--max_num_frames", "49"], "13 latent frames.*use 45 or 53"),
        (["--frame_buckets", "37", "40"], "40 is not 4k \\+ 1"),
        (["--weighting_scheme", "logit_normal"], "flow-matching presets"),
        (["--frame_sampling", "videox"], "contiguous window"),
        (["--validation_steps", "5", "--validation_prompt", "a:::b", "--validation_images", "a.png",
          "--validation_driving_videos", "p.mp4"], "2 prompts, 1 images, 1 driving videos"),
    ],
)
def test_settings_dynamictrl_cannot_honour_are_refused_with_the_reason(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_train_config(["--preset", "dynamictrl", *extra])


def test_dynamictrl_flags_given_to_another_preset_name_their_system() -> None:
    with pytest.raises(ConfigError, match=r"--id_token .*belongs to dynamictrl"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--id_token", "BW_STYLE"])


def test_preset_defaults_are_dynamictrls_except_a_frame_count_cogvideox15_can_patch() -> None:
    config = parse_train_config(["--preset", "dynamictrl"])
    assert config.data.height_buckets == list(DYNAMICTRL_SIZE_BUCKETS) == config.data.width_buckets
    assert config.data.video_sample_n_frames == 53 and frame_count_problem(53) is None
    assert frame_count_problem(49) is not None  # the original's default
    assert (config.optim.adam_beta2, config.optim.adam_weight_decay, config.optim.adam_epsilon) == (0.95, 1e-4, 1e-8)
    assert config.validation.validation_prompt_separator == ":::"


# --- data: DynamiCtrl's (frames, height, width) buckets -----------------------------------------


def manifest(*sizes: tuple[int, int, int]) -> Manifest:
    records = [Record(media=f"/d/videos/v{i}.mp4", control=f"/d/poses/v{i}.mp4", frames=f, height=h, width=w, fps=8.0)
               for i, (f, h, w) in enumerate(sizes)]
    return Manifest.from_records(records)


def test_batches_take_the_nearest_size_bucket_pair_and_frame_bucket() -> None:
    config = DataConfig(data_root=Path("/d"), height_buckets=[480, 1360], width_buckets=[768, 1024],
                        frame_buckets=[37, 53], video_sample_n_frames=53, height=64, width=64)
    rules = ClipRules.from_config(config, layout="dynamictrl")
    assert rules.frame_buckets == (37, 53) and rules.crop == "stretch" and rules.min_frames == 37
    videos = manifest((300, 1280, 720), (40, 1280, 720), (300, 480, 900), (20, 480, 900))
    shaper = BucketShaper(videos, config, rules)
    rng = np.random.default_rng(0)
    shapes = [shaper.batch_shape(int(k), np.array([i]), rng) for i, k in enumerate(shaper.bucket_keys())]
    # |dh| + |dw|, first pair wins ties; --height/--width do not enter (they size validation only)
    assert [(s.height, s.width, s.frames) for s in shapes] == [
        (1360, 768, 53), (1360, 768, 37), (480, 1024, 53), (480, 1024, 37)
    ]
    assert len(set(shaper.bucket_keys().tolist())) == 4
    assert [int(n) for n in rules.available_frames(np.array([300, 40, 20]))] == [53, 37, 0]


def test_one_bucket_list_alone_takes_dynamictrls_default_for_the_other() -> None:
    config = DataConfig(data_root=Path("/d"), height_buckets=[64], video_sample_n_frames=5)
    shaper = BucketShaper(manifest((24, 64, 96)), config, ClipRules.from_config(config, layout="dynamictrl"))
    shape = shaper.batch_shape(int(shaper.bucket_keys()[0]), np.array([0]), np.random.default_rng(0))
    assert (shape.height, shape.width, shape.frames) == (64, 256, 5)
    rows = plan_table(DataConfig(height_buckets=[480], width_buckets=[768], frame_buckets=[37]))
    assert rows == [{"size": 768, "height": 480, "width": 768, "frames": 37, "tokens": 10 * 30 * 48}]


def test_dynamictrl_buckets_outside_dynamictrl_sampling_are_refused() -> None:
    with pytest.raises(ValueError, match="--frame_buckets: DynamiCtrl's buckets apply to its frame sampling"):
        ClipRules.from_config(DataConfig(frame_buckets=[37]), layout="videox")


# --- training runs (tiny model, sample data in the DynamiCtrl layout) ---------------------------


@pytest.fixture(scope="module")
def sample_data(dynamictrl_sample_data: Path) -> Path:
    return dynamictrl_sample_data


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "dynamictrl"
    assert main(["model", "tiny", "--preset", "dynamictrl", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def reference_image(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from vidctrl.data.video import read_frames

    frame = read_frames(sample_data / "videos" / "video_000.mp4", np.array([0]))[0]
    path = tmp_path_factory.mktemp("ref") / "reference.jpg"
    Image.fromarray(frame).save(path)
    return path


def train_args(model: Path, data: Path, out: Path, image: Path, *extra: str) -> list[str]:
    args = with_paths(model=model, data=data, out=out, image=image,
                      pose=data / "poses" / "video_000.mp4")
    return ["train", "--preset", "dynamictrl", *args, *SCALE_DOWN, *extra]


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "transformer" / "diffusion_pytorch_model.safetensors")


def metric(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_seed_command_trains_checkpoints_resumes_bit_exactly_and_validates(
    tiny_model: Path, sample_data: Path, reference_image: Path, tmp_path: Path
) -> None:
    import av

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The seed's cosine schedule depends on --max_train_steps, which differs between the 2-step leg and
    # the 4-step run; a constant rate makes the two runs the same run.
    steps = ["--lr_scheduler", "constant", "--checkpointing_steps", "2", "--max_train_steps"]
    validate = ["--validation_steps", "4", "--validation_num_inference_steps", "2", "--validation_frames", "9"]
    assert main(train_args(tiny_model, sample_data, straight, reference_image, *steps, "4", *validate)) == 0
    assert main(train_args(tiny_model, sample_data, resumed, reference_image, *steps, "2")) == 0
    assert main(train_args(tiny_model, sample_data, resumed, reference_image, *steps, "4",
                           "--resume_from_checkpoint", "latest")) == 0
    a, b = checkpoint_weights(straight, 4), checkpoint_weights(resumed, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric(straight, "loss") == metric(resumed, "loss")
    assert all(np.isfinite(metric(straight, "loss")))
    assert any(k.endswith("control_norm1.linear.weight") for k in a)
    assert not torch.equal(a["transformer_blocks.0.control_norm1.linear.weight"],
                           load_file(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")[
                               "transformer_blocks.0.control_norm1.linear.weight"])

    # 9 frames: 3 latent frames, padded to 4 for patch_size_t 2 and unpadded before decoding
    mp4 = straight / "validation" / "step-4" / "sample-0.mp4"
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].frames == 9
    assert (straight / "validation" / "step-4" / "sample-0.png").stat().st_size > 0


@pytest.mark.slow
def test_a_cogvideox15_i2v_base_gains_zero_initialised_padaln_that_trains(
    tiny_model: Path, sample_data: Path, reference_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_tiny_dynamictrl(tmp_path / "base", with_padaln=False)
    out = tmp_path / "out"
    assert main(train_args(base, sample_data, out, reference_image, "--max_train_steps", "2",
                           "--checkpointing_steps", "2", "--padaln_zero_init")) == 0
    weights = checkpoint_weights(out, 2)
    for block in (0, 1):  # every zero-initialised layer moved off zero
        assert weights[f"transformer_blocks.{block}.control_norm1.linear.bias"].abs().sum() > 0
        assert weights[f"transformer_blocks.{block}.control_norm1.norm.weight"].abs().sum() > 0

    # --padaln_zero_init with trained PadaLN layers (a DynamiCtrl checkpoint) is an error, also via
    # --transformer_path over a CogVideoX1.5-I2V base folder
    for model, extra in ((tiny_model, []), (base, ["--transformer_path", str(out / "checkpoint-2")])):
        capsys.readouterr()
        assert main(train_args(model, sample_data, tmp_path / "again", reference_image, "--max_train_steps", "1",
                               "--padaln_zero_init", *extra)) == 1
        assert "already has trained PadaLN layers" in capsys.readouterr().err

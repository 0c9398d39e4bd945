"""CogVideoX-Fun trains from the seed doc's command (script replaced, sizes scaled down): checkpoints,
resumes bit for bit, validates to mp4, and its transformer loads in plain diffusers. The objective
noises on the schedule validation samples with; the inpaint condition follows CogVideoX-Fun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seed_commands import plain_commands
from vidctrl.cli import main
from vidctrl.config.train import ConfigError, parse_train_config

SCALE_DOWN = [
    "--image_sample_size", "64", "--video_sample_size", "64", "--token_sample_size", "64",
    "--video_sample_stride", "1", "--video_sample_n_frames", "9", "--dataloader_num_workers", "0",
    "--mixed_precision", "no", "--report_to", "none", "--learning_rate", "1e-3", "--train_batch_size", "2",
]
PRESETS = ("cogvideox-fun-inp", "cogvideox-fun-control")

def with_paths(preset: str, *, model: Path, data: Path, out: Path) -> list[str]:
    """The seed doc's single-process command, its model and data variables set to ours, the output
    folder appended. Control's command (CogVideoX-Fun README_TRAIN_CONTROL) is InP's without
    --train_mode, which train_control.py does not take."""
    (command,) = plain_commands("CogVideoX-Fun")
    values = {"MODEL_NAME": model, "DATASET_NAME": data, "DATASET_META_NAME": data / "metadata.json"}
    args = command.args_with(values)
    if preset == "cogvideox-fun-control":
        args = [a for a in args if not a.startswith("--train_mode")]
    return [*args, "--output_dir", str(out)]


def train_args(preset: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = with_paths(preset, model=model, data=data, out=out)
    return ["train", "--preset", preset, *args, *SCALE_DOWN, *extra]


@pytest.fixture(scope="module")
def sample_data(videox_sample_data: Path) -> Path:
    return videox_sample_data


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    for preset in PRESETS:
        assert main(["model", "tiny", "--preset", preset, "--out", str(root / preset)]) == 0
    return {preset: root / preset for preset in PRESETS}


# --- the seed command's flags ---------------------------------------------------------------------


def test_seed_command_parses_every_flag_with_the_seed_meaning(tmp_path: Path) -> None:
    args = with_paths("cogvideox-fun-inp", model=tmp_path / "m", data=tmp_path / "d", out=tmp_path / "o")
    config = parse_train_config(["--preset", "cogvideox-fun-inp", *args])
    data, optim, model = config.data, config.optim, config.model
    assert data.video_sample_n_frames == 49 and data.video_sample_stride == 3 and data.train_batch_size == 4
    assert data.image_sample_size == 1024 and data.video_sample_size == 256 and data.token_sample_size == 512
    assert data.enable_bucket and data.random_hw_adapt and data.training_with_video_token_length
    assert data.random_frame_crop and data.video_repeat == 1 and data.seed == 42
    assert optim.use_came and optim.max_grad_norm == 0.05 and optim.adam_epsilon == 1e-10
    assert optim.adam_weight_decay == 3e-2 and optim.learning_rate == 2e-05
    assert optim.lr_scheduler == "constant_with_warmup" and optim.lr_warmup_steps == 100
    assert optim.initial_grad_norm_ratio == 5.0 and optim.abnormal_norm_clip_start == 1000
    assert model.train_mode == "inpaint" and model.trainable_modules == ["."] and model.gradient_checkpointing
    assert model.vae_mini_batch == 1 and config.run.resume_from_checkpoint == "latest"
    assert config.run.mixed_precision == "bf16" and config.run.checkpointing_steps == 50
    assert config.family.tokenizer_max_length == 226


def test_control_preset_takes_the_control_doc_command(tmp_path: Path) -> None:
    args = with_paths("cogvideox-fun-control", model=tmp_path / "m", data=tmp_path / "d",
                      out=tmp_path / "o")
    config = parse_train_config(["--preset", "cogvideox-fun-control", *args])
    assert config.model.train_mode == "control" and config.data.seed == 42  # from the preset
    from vidctrl.families.cogvideox_fun import CogVideoXFun

    assert CogVideoXFun.from_config(config).train_mode == "control"


def test_flags_the_presets_cannot_honour_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="CogVideoX-Fun trains with DDPM only"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--loss_type", "flow"])
    with pytest.raises(ConfigError, match="weighting schemes belong to flow matching"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--weighting_scheme", "logit_normal"])
    with pytest.raises(ConfigError, match="no frame-difference loss"):
        parse_train_config(["--preset", "cogvideox-fun-control", "--motion_sub_loss"])
    with pytest.raises(ConfigError, match="needs an InP checkpoint"):
        parse_train_config(["--preset", "cogvideox-fun-control", "--train_mode", "inpaint"])
    with pytest.raises(ConfigError, match="trains in inpaint, control, normal"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--train_mode", "control_ref"])
    with pytest.raises(ConfigError, match=r"belongs to wan2\.1-fun"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--control_ref_image", "random"])
    with pytest.raises(ConfigError, match="belongs to cogvideox-fun-inp, cogvideox-fun-control"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--noise_schedule", "ddpm"])


def test_validation_inputs_must_fit_the_train_mode() -> None:
    on = ["--validation_steps", "2", "--validation_prompts", "a", "b"]
    with pytest.raises(ConfigError, match="train mode inpaint takes no control video"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--validation_control_videos", "pose.mp4"])
    with pytest.raises(ConfigError, match="train mode control takes no start image"):
        parse_train_config(["--preset", "cogvideox-fun-control", "--validation_images", "ref.png"])
    with pytest.raises(ConfigError, match=r"one control video per prompt.*got 2 prompts, 1 control videos"):
        parse_train_config(["--preset", "cogvideox-fun-control", *on, "--validation_paths", "pose.mp4"])
    with pytest.raises(ConfigError, match="needs --validation_prompts"):
        parse_train_config(["--preset", "cogvideox-fun-inp", "--validation_steps", "2"])
    # VideoX-Fun's --validation_paths are the start images in inpaint mode; text-to-video needs none
    config = parse_train_config(["--preset", "cogvideox-fun-inp", *on, "--validation_paths", "a.png", "b.png"])
    assert config.family.validation_paths == ["a.png", "b.png"]
    parse_train_config(["--preset", "cogvideox-fun-inp", *on])


# --- objective and conditions on the tiny models ----------------------------------------------------


def loaded_family(model: Path, preset: str, *flags: str):
    from vidctrl.families import family_for_preset

    config = parse_train_config(["--preset", preset, "--pretrained_model_name_or_path", str(model), *flags])
    family = family_for_preset(preset).from_config(config)
    family.load(model, dtype=torch.float32, device=torch.device("cpu"))
    return family, config


@pytest.fixture(scope="module")
def tiny_2b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vidctrl.models.cogvideox import write_tiny_cogvideox

    return write_tiny_cogvideox(tmp_path_factory.mktemp("m2b") / "inp", "cogvideox-fun-inp", variant="2b")


def test_training_noise_follows_the_schedule_that_validation_samples_with(tiny_2b: Path) -> None:
    from diffusers import CogVideoXDDIMScheduler, DDPMScheduler

    from vidctrl.objectives.timesteps import RankStratifiedIndexSampler

    scheduler_config = json.loads((tiny_2b / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["snr_shift_scale"] == 3.0
    family, config = loaded_family(tiny_2b, "cogvideox-fun-inp", "--uniform_sampling")
    objective = family.build_objective(config.objective, rank=1, world_size=4)
    shifted = CogVideoXDDIMScheduler.from_config(scheduler_config).alphas_cumprod
    assert torch.equal(objective.alphas_cumprod, shifted) and objective.alphas_cumprod[-1] == 0
    assert objective.prediction_type == "v_prediction"
    assert isinstance(objective.sampler, RankStratifiedIndexSampler) and objective.sampler.stratum == range(250, 500)
    assert torch.equal(family.sampling_scheduler().alphas_cumprod, objective.alphas_cumprod)

    family, config = loaded_family(tiny_2b, "cogvideox-fun-inp", "--noise_schedule", "ddpm",
                                   "--validation_sampler", "dpm", "--prediction_type", "epsilon")
    objective = family.build_objective(config.objective, rank=0, world_size=1)
    assert torch.equal(objective.alphas_cumprod, DDPMScheduler.from_config(scheduler_config).alphas_cumprod)
    sampler = family.sampling_scheduler()
    assert type(sampler).__name__ == "CogVideoXDPMScheduler" and sampler.config.prediction_type == "epsilon"
    torch.testing.assert_close(sampler.alphas_cumprod.double(), objective.alphas_cumprod.double())


def _batch(frames: int = 9, size: int = 64, batch: int = 2) -> dict:
    pixels = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return {"pixels": pixels, "control": pixels.flip(2), "caption": ["a person dances"] * batch,
            "media": [f"v{i}.mp4" for i in range(batch)]}


@pytest.mark.parametrize("variant", ["5b", "2b"])
def test_encode_and_predict_build_the_mode_channels_in_frames_first_layout(
    variant: str, tiny_models: dict[str, Path], tiny_2b: Path
) -> None:
    model = tiny_2b if variant == "2b" else tiny_models["cogvideox-fun-inp"]
    family, _ = loaded_family(model, "cogvideox-fun-inp")
    assert family.add_noise_in_inpaint_model  # from the InP transformer config
    encoded = family.encode(_batch(), generator=torch.Generator().manual_seed(0))
    assert encoded.latents.shape == (2, 3, 16, 8, 8) and encoded.conditions["inpaint"].shape == (2, 3, 17, 8, 8)
    assert encoded.conditions["text"].shape == (2, 226, 32) and encoded.tokens == 2 * 3 * 4 * 4
    prediction = family.predict(family.denoiser, encoded, encoded.latents, torch.tensor([10, 900]))
    assert prediction.shape == encoded.latents.shape

    family, _ = loaded_family(tiny_models["cogvideox-fun-control"], "cogvideox-fun-control")
    encoded = family.encode(_batch(frames=5), generator=torch.Generator().manual_seed(0))
    assert encoded.conditions["control"].shape == (2, 2, 16, 8, 8) and "inpaint" not in encoded.conditions
    with pytest.raises(ValueError, match="needs control videos"):
        family.encode({k: v for k, v in _batch().items() if k != "control"}, generator=torch.Generator())


def test_inpaint_condition_is_the_scaled_keep_mask_and_masked_latents_and_zero_for_most_t2v(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vidctrl.models.cogvideox.inpaint as inpaint

    family, _ = loaded_family(tiny_models["cogvideox-fun-inp"], "cogvideox-fun-inp",
                              "--add_noise_in_inpaint_model", "false")
    scale = family.components.vae.config.scaling_factor
    pixels = family._pixels(_batch()["pixels"])
    kept = torch.zeros(9, 1, 64, 64, dtype=torch.uint8)
    monkeypatch.setattr(inpaint, "draw_inpaint_mask", lambda *a, **k: (kept, 0))
    condition = family.inpaint_condition(pixels, (3, 8, 8), torch.Generator().manual_seed(0))
    assert torch.allclose(condition[:, 0], torch.full_like(condition[:, 0], scale))  # nothing masked
    replay = torch.Generator().manual_seed(0)
    torch.rand(2, generator=replay)  # the text-to-video draw comes before the VAE's posterior sample
    assert torch.equal(condition[:, 1:], family.vae_encode(pixels, replay))  # the unmasked video's latents

    monkeypatch.setattr(inpaint, "draw_inpaint_mask", lambda *a, **k: (torch.ones(9, 1, 64, 64, dtype=torch.uint8), 1))
    monkeypatch.setattr(inpaint, "T2V_ZERO_PROBABILITY", 1.0)
    assert (family.inpaint_condition(pixels, (3, 8, 8), torch.Generator()) == 0).all()
    monkeypatch.setattr(inpaint, "T2V_ZERO_PROBABILITY", 0.0)
    kept_t2v = family.inpaint_condition(pixels, (3, 8, 8), torch.Generator())
    assert (kept_t2v[:, 0] == 0).all() and kept_t2v[:, 1:].abs().sum() > 0  # all masked: -1 video encoded


# --- training runs ------------------------------------------------------------------------------------


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "transformer" / "diffusion_pytorch_model.safetensors")


def metric(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def validation_flags(preset: str, data: Path, tmp_path: Path) -> list[str]:
    flags = ["--validation_steps", "2", "--validation_prompts", "a person dances",
             "--validation_num_inference_steps", "2", "--validation_frames", "5"]
    if preset == "cogvideox-fun-inp":
        image = tmp_path / "reference.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
        return [*flags, "--validation_images", str(image)]
    meta = json.loads((data / "metadata.json").read_text())
    return [*flags, "--validation_control_videos", str(data / meta[0]["control_file_path"]),
            "--validation_sampler", "dpm"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_seed_command_trains_validates_checkpoints_and_resumes_bit_exactly(
    preset: str, tiny_models: dict[str, Path], sample_data: Path, tmp_path: Path
) -> None:
    import av

    model = tiny_models[preset]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    steps = ["--checkpointing_steps", "2", "--max_train_steps"]
    # Validation mid-run in the straight run only: it must not disturb the training streams.
    validation = validation_flags(preset, sample_data, tmp_path)
    assert main(train_args(preset, model, sample_data, straight, *steps, "4", *validation)) == 0
    assert main(train_args(preset, model, sample_data, resumed, *steps, "2")) == 0
    assert main(train_args(preset, model, sample_data, resumed, *steps, "4", "--resume_from_checkpoint", "latest")) == 0
    a, b = checkpoint_weights(straight, 4), checkpoint_weights(resumed, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric(straight, "loss") == metric(resumed, "loss")

    mp4 = straight / "validation" / "step-2" / "sample-0.mp4"
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].frames == 5
    assert (straight / "validation" / "step-2" / "sample-0.png").stat().st_size > 0

    # the saved transformer loads in plain diffusers, with the mode's input channels
    from diffusers import CogVideoXTransformer3DModel

    loaded = CogVideoXTransformer3DModel.from_pretrained(straight / "checkpoint-4" / "transformer")
    assert loaded.config.in_channels == (33 if preset == "cogvideox-fun-inp" else 32)
    saved = json.loads((straight / "checkpoint-4" / "transformer" / "config.json").read_text())
    assert saved.get("add_noise_in_inpaint_model") == (True if preset == "cogvideox-fun-inp" else None)


@pytest.mark.slow
def test_a_text_to_video_base_is_widened_and_trains_in_inpaint_mode(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vidctrl.models.cogvideox import write_tiny_cogvideox

    base = write_tiny_cogvideox(tmp_path / "t2v", in_channels=16)
    out = tmp_path / "out"
    # --transformer_path must match the widened model: a 16-channel file is refused, naming the key
    assert main(train_args("cogvideox-fun-inp", base, sample_data, out, "--max_train_steps", "1",
                           "--checkpointing_steps", "1", "--transformer_path", str(base / "transformer"))) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--transformer_path" in err
    assert re.search(r"patch_embed.proj.weight: checkpoint \[32, 16, 2, 2\], model \[32, 33", err), err[-2000:]
    assert main(train_args("cogvideox-fun-inp", base, sample_data, out, "--max_train_steps", "1",
                           "--checkpointing_steps", "1")) == 0
    weights = checkpoint_weights(out, 1)["patch_embed.proj.weight"]
    assert weights.shape[1] == 33

"""The shared encoding/loading seam (`vidctrl.families.encoding`, `ModelFamily`): every family honours
`--vae_mini_batch`, `--enable_slicing`, `--enable_tiling` and `--transformer_path` the same way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vidctrl.config.fields import ConfigError
from vidctrl.config.train import parse_train_config
from vidctrl.families import family_for_preset
from vidctrl.families.base import ModelFamily
from vidctrl.families.encoding import configure_vae, posterior_moments
from vidctrl.models.cogvideox import write_tiny_cogvideox
from vidctrl.models.wan import PRESETS as WAN_PRESETS
from vidctrl.models.wan import write_tiny_wan
from vidctrl.models.wan.keymap import transformer_key_map
from vidctrl.train.microbatch import encode_samples

V11 = "wan2.1-fun-control-v1.1"


def load_family(preset: str, model: Path, *flags: str, encoders: bool = True) -> ModelFamily:
    config = parse_train_config(["--preset", preset, "--pretrained_model_name_or_path", str(model), *flags])
    family = family_for_preset(preset).from_config(config)
    family.load(model, dtype=torch.float32, device=torch.device("cpu"), encoders=encoders)
    return family


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, str], Path]:
    """Each Wan preset with seed 0 (the base) and seed 1 (the "fine-tuned" weights), both layouts for seed 1."""
    root = tmp_path_factory.mktemp("wan")
    out = {}
    for preset in WAN_PRESETS:
        for seed, layout in ((0, "diffusers"), (1, "diffusers"), (1, "original")):
            out[preset, seed, layout] = write_tiny_wan(root / f"{preset}-{seed}-{layout}", preset, layout=layout,
                                                       seed=seed)
    return out


class RecordingVAE(nn.Module):
    """A stand-in VAE whose posterior is a function of each sample alone, recording encode batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        self.sizes.append(x.shape[0])
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x * 2, std=x.abs() + 1))


def test_posterior_moments_encodes_in_mini_batches_of_the_given_size() -> None:
    vae, pixels = RecordingVAE(), torch.randn(5, 3, 2, 4, 4)
    mean, std = posterior_moments(vae, pixels, mini_batch=2)
    assert vae.sizes == [2, 2, 1]
    torch.testing.assert_close(mean, pixels * 2)
    torch.testing.assert_close(std, pixels.abs() + 1)
    with pytest.raises(ValueError, match="--vae_mini_batch 0"):
        posterior_moments(vae, pixels, mini_batch=0)


def wan_batch() -> dict:
    generator = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (3, 1, 16, 16, 3), generator=generator, dtype=torch.uint8)
    control = torch.randint(0, 256, (3, 1, 16, 16, 3), generator=generator, dtype=torch.uint8)
    return {"pixels": frames, "control": control, "caption": ["a", "b c", "d"], "media": ["0", "1", "2"],
            "seed": [11, 12, 13], "size": 3}


@pytest.mark.slow
def test_training_encodes_in_vae_mini_batches_and_draws_do_not_depend_on_their_size(tiny_wan: dict) -> None:
    family = load_family(V11, tiny_wan[V11, 0, "diffusers"], "--vae_mini_batch", "2")
    vae = family.components.vae
    calls: list[int] = []
    encode = vae.encode
    vae.encode = lambda x: (calls.append(x.shape[0]), encode(x))[1]
    encoded, sizes = {}, {}
    for mini_batch in (2, 1):
        family.config.model.vae_mini_batch = mini_batch
        calls.clear()
        encoded[mini_batch] = encode_samples(family, wan_batch(), seeds=[21, 22, 23])
        sizes[mini_batch] = list(calls)
    # target, control and reference frame of samples (0, 1), then of sample 2
    assert sizes == {2: [2, 2, 2, 1, 1, 1], 1: [1] * 9}
    torch.testing.assert_close(encoded[2].latents, encoded[1].latents, atol=1e-5, rtol=1e-5)
    assert encoded[2].conditions.keys() == encoded[1].conditions.keys()
    for key, value in encoded[1].conditions.items():
        torch.testing.assert_close(encoded[2].conditions[key], value, atol=1e-5, rtol=1e-5)


def test_slicing_and_tiling_reach_the_vae_of_wan_and_cogvideox(tiny_wan: dict, tmp_path: Path) -> None:
    cogvideox = write_tiny_cogvideox(tmp_path / "cog", "cogvideox-fun-control")
    for preset, model in ((V11, tiny_wan[V11, 0, "diffusers"]), ("cogvideox-fun-control", cogvideox)):
        plain = load_family(preset, model).components.vae
        assert not plain.use_slicing and not plain.use_tiling
        assert load_family(preset, model, "--enable_slicing").components.vae.use_slicing
        vae = load_family(preset, model, "--enable_tiling").components.vae
        assert vae.use_tiling and not vae.use_slicing


def test_a_vae_without_tiling_refuses_the_flag_naming_the_preset() -> None:
    configure_vae(nn.Identity(), slicing=False, tiling=False, preset="p")
    with pytest.raises(ConfigError, match="--enable_tiling: the VAE of preset some-preset \\(Identity\\) has no tiling"):
        configure_vae(nn.Identity(), slicing=False, tiling=True, preset="some-preset")


@pytest.mark.parametrize("preset", WAN_PRESETS)
def test_transformer_path_loads_fine_tuned_weights_on_every_wan_preset(preset: str, tiny_wan: dict,
                                                                       tmp_path: Path) -> None:
    base = tiny_wan[preset, 0, "diffusers"]
    tuned = load_family(preset, tiny_wan[preset, 1, "diffusers"], encoders=False).denoiser.state_dict()
    untouched = load_family(preset, base, encoders=False).denoiser.state_dict()
    assert any(not torch.equal(untouched[k], v) for k, v in tuned.items())
    # vidctrl's saves (a folder with transformer/), VideoX-Fun's (original key names), and one file
    original_file = tiny_wan[preset, 1, "original"] / "diffusion_pytorch_model.safetensors"
    renamed = tmp_path / "renamed.safetensors"
    save_file(transformer_key_map().to_source({k: v.contiguous() for k, v in tuned.items()}), renamed)
    for source in (tiny_wan[preset, 1, "diffusers"], original_file, renamed):
        loaded = load_family(preset, base, "--transformer_path", str(source), encoders=False).denoiser.state_dict()
        assert loaded.keys() == tuned.keys()
        for key, value in tuned.items():
            assert torch.equal(loaded[key], value), f"{source}: {key}"


def test_transformer_path_that_does_not_exist_is_one_clear_error(tiny_wan: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--transformer_path .*missing: no such file or folder"):
        load_family(V11, tiny_wan[V11, 0, "diffusers"], "--transformer_path", str(tmp_path / "missing"),
                    encoders=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no diffusion_pytorch_model\.safetensors"):
        load_family(V11, tiny_wan[V11, 0, "diffusers"], "--transformer_path", str(tmp_path / "empty"),
                    encoders=False)


@pytest.mark.parametrize("preset", ["cogvideox-fun-control", "dynamictrl"])
def test_transformer_path_loads_fine_tuned_weights_on_cogvideox_presets(preset: str, tmp_path: Path) -> None:
    family_class = family_for_preset(preset)
    base = family_class.write_tiny(tmp_path / "base", preset, seed=0)
    tuned_dir = family_class.write_tiny(tmp_path / "tuned", preset, seed=1)
    tuned = load_family(preset, tuned_dir, encoders=False).denoiser.state_dict()
    assert any(not torch.equal(load_family(preset, base, encoders=False).denoiser.state_dict()[k], v)
               for k, v in tuned.items())
    loaded = load_family(preset, base, "--transformer_path", str(tuned_dir), encoders=False).denoiser.state_dict()
    assert loaded.keys() == tuned.keys() and all(torch.equal(loaded[k], v) for k, v in tuned.items())

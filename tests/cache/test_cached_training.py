"""`vidctrl cache` then `vidctrl train --load_tensors`, on tiny models and the sample data: a cached run
trains on exactly what an uncached run from the same seed trains on (pose control included) without
loading the encoders; a cache written with other settings is refused naming the change; a killed
cache run completes on rerun; two processes write and read one cache as one process does."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vidctrl.cache.store import CONSTANTS, INDEX, SHARDS, read_tensors
from vidctrl.cli import main
from vidctrl.config.train import parse_train_config
from vidctrl.families import family_for_preset
from vidctrl.train.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

VIDEOX = [
    "--image_sample_size", "64", "--video_sample_size", "64", "--token_sample_size", "64",
    "--video_sample_stride", "1", "--video_sample_n_frames", "9", "--enable_bucket",
    "--training_with_video_token_length",
]
DYNAMICTRL = [
    "--height_buckets", "64", "--width_buckets", "64", "--height", "64", "--width", "64", "--frame_buckets", "5",
    "--max_num_frames", "5", "--id_token", "BW_STYLE", "--lr_warmup_steps", "0",
]
COMMON = ["--report_to", "none", "--seed", "3", "--learning_rate", "1e-3", "--dataloader_num_workers", "0",
          "--max_train_steps", "2", "--checkpointing_steps", "100"]
CASES = {
    # preset: (data layout, flags)
    "wan2.1-fun-control-v1.1": ("videox", [*VIDEOX, "--train_batch_size", "1"]),  # random reference + full-ref tokens
    "cogvideox-fun-inp": ("videox", [*VIDEOX, "--train_batch_size", "2"]),  # random inpaint masks, pixel noise
    "cogvideox-fun-control": ("videox", [*VIDEOX, "--train_batch_size", "1"]),
    "dynamictrl": ("dynamictrl", [*DYNAMICTRL, "--train_batch_size", "1"]),  # pose through PadaLN, noisy reference
}


@pytest.fixture(scope="module")
def datasets(videox_sample_data: Path, dynamictrl_sample_data: Path) -> dict[str, Path]:
    return {"videox": videox_sample_data, "dynamictrl": dynamictrl_sample_data}


@pytest.fixture(scope="module")
def model_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = tmp_path_factory.mktemp("models") / preset
            assert main(["model", "tiny", "--preset", preset, "--out", str(made[preset])]) == 0
        return made[preset]

    return get


def run_args(preset: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    layout, flags = CASES[preset]
    source = (["--data_root", str(data)] if layout == "dynamictrl"
              else ["--train_data_meta", str(data / "metadata.json"), "--train_data_dir", str(data)])
    return ["--preset", preset, "--pretrained_model_name_or_path", str(model), *source, "--output_dir", str(out),
            *flags, *COMMON, *extra]


def cached_tensors(cache: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted((cache / SHARDS).glob("shard-*.safetensors")):
        tensors.update(read_tensors(shard))
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(CASES))
def test_a_cached_run_trains_on_what_an_uncached_run_encodes_without_loading_the_encoders(
    preset: str, datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path
) -> None:
    model, data = model_for(preset), datasets[CASES[preset][0]]
    uncached = train(parse_train_config(run_args(preset, model, data, tmp_path / "uncached")))

    out = tmp_path / "cached"
    assert main(["cache", *run_args(preset, model, data, out)]) == 0
    config = parse_train_config(run_args(preset, model, data, out, "--load_tensors"))
    family = family_for_preset(preset).from_config(config)
    cached = train(config, family=family)

    # The same first step (the condition), and every step of the first epoch: the cache replays
    # its plan. Later epochs differ by design (an uncached run draws new clips, the cache has its own).
    index = json.loads((out / "cache" / INDEX).read_text())
    epoch_0 = len(index["records"]) // index["global_batch_size"]
    assert epoch_0 >= 1 and len(cached.losses) == len(uncached.losses) == 2
    assert cached.losses[:epoch_0] == uncached.losses[:epoch_0]
    assert family.frozen_modules() == {}
    assert family.components.vae is None and family.components.text_encoder is None
    assert getattr(family.components, "image_encoder", None) is None
    assert (out / "cache" / INDEX).is_file() and cached.global_step == 2


@pytest.fixture(scope="module")
def wan_cache(datasets: dict[str, Path], model_for: Callable[[str], Path],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wan-cache")
    preset = "wan2.1-fun-control-v1.1"
    assert main(["cache", *run_args(preset, model_for(preset), datasets["videox"], out)]) == 0
    return out / "cache"


def wan_args(datasets: dict[str, Path], model_for: Callable[[str], Path], out: Path, *extra: str) -> list[str]:
    preset = "wan2.1-fun-control-v1.1"
    return run_args(preset, model_for(preset), datasets["videox"], out, *extra)


@pytest.mark.slow
def test_a_cache_written_with_other_settings_is_refused_naming_what_changed(
    wan_cache: Path, datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    def refusal(*extra: str) -> str:
        capsys.readouterr()
        code = main(["train", *wan_args(datasets, model_for, tmp_path / "out", "--load_tensors", "--cache_dir",
                                        str(wan_cache), *extra)])
        assert code == 1
        return capsys.readouterr().err

    err = refusal("--video_sample_n_frames", "5")
    assert "written with other settings (data.video_sample_n_frames 9 -> 5)" in err
    assert "Rerun `vidctrl cache` with this run's flags" in err
    assert "data.seed 3 -> 4" in refusal("--seed", "4")
    assert "global_batch_size 1 -> 2" in refusal("--train_batch_size", "2")

    vae_config = model_for("wan2.1-fun-control-v1.1") / "vae" / "config.json"
    stamp = vae_config.stat()
    os.utime(vae_config, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    try:
        assert "encoders.files.vae/config.json was modified" in refusal()
    finally:
        os.utime(vae_config, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    assert "there is no latent cache at" in refusal("--cache_dir", str(tmp_path / "none"))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(wan_cache, incomplete)
    (incomplete / INDEX).unlink()
    assert "is incomplete" in refusal("--cache_dir", str(incomplete))

    # rerunning `vidctrl cache` with the new flags replaces the stale cache, and training takes it
    changed = tmp_path / "changed"
    shutil.copytree(wan_cache, changed)
    flags = ("--video_sample_n_frames", "5", "--cache_dir", str(changed))
    assert main(["cache", *wan_args(datasets, model_for, tmp_path / "out", *flags)]) == 0
    assert next(iter(cached_tensors(changed).values())).numel() > 0
    assert main(["train", *wan_args(datasets, model_for, tmp_path / "out", "--load_tensors", *flags)]) == 0


@pytest.mark.slow
def test_a_cached_run_resumes_bit_exactly_also_across_epochs(
    wan_cache: Path, datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    def args(out: Path, *extra: str) -> list[str]:
        return ["train", *wan_args(datasets, model_for, out, "--load_tensors", "--cache_dir", str(wan_cache),
                                   "--checkpointing_steps", "3", *extra)]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(args(straight, "--max_train_steps", "6")) == 0  # 4 cached samples: epoch 1 starts at step 5
    assert main(args(resumed, "--max_train_steps", "3")) == 0
    assert main(args(resumed, "--max_train_steps", "6", "--resume_from_checkpoint", "latest")) == 0
    weights = "checkpoint-6/transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(straight / weights), load_file(resumed / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


@pytest.mark.slow
def test_an_interrupted_cache_run_completes_on_rerun_encoding_only_what_is_missing(
    wan_cache: Path, datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vidctrl.families.wan_fun import WanFunControl

    original = WanFunControl.encode_deterministic
    calls = []

    def dies_at_the_third_sample(self: WanFunControl, batch: dict) -> list[dict[str, torch.Tensor]]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(self, batch)

    cache = tmp_path / "cache"
    args = wan_args(datasets, model_for, tmp_path / "out", "--cache_dir", str(cache), "--cache_shard_mib", "0.0001")
    monkeypatch.setattr(WanFunControl, "encode_deterministic", dies_at_the_third_sample)
    with pytest.raises(RuntimeError, match="killed"):
        main(["cache", *args])
    monkeypatch.setattr(WanFunControl, "encode_deterministic", original)
    assert not (cache / INDEX).exists()
    assert sorted(p.name for p in (cache / SHARDS).iterdir()) == [
        "shard-00000000-00000000.safetensors", "shard-00000001-00000001.safetensors"]
    (cache / SHARDS / ".tmp-99-shard-00000002-00000002.safetensors").write_bytes(b"half-written")

    capsys.readouterr()
    assert main(["cache", *args]) == 0
    assert "4 samples (2 encoded now, 2 already there, 0 could not be loaded)" in capsys.readouterr().out
    assert not list((cache / SHARDS).glob(".tmp-*"))
    complete, resumed = cached_tensors(wan_cache), cached_tensors(cache)
    assert complete.keys() == resumed.keys() and all(torch.equal(complete[k], resumed[k]) for k in complete)
    assert read_tensors(cache / CONSTANTS).keys() == read_tensors(wan_cache / CONSTANTS).keys()

    assert main(["cache", *args]) == 0  # complete: reused as it is
    assert "(0 encoded now, 4 already there" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_write_the_cache_one_process_writes_and_train_from_it_like_one(
    tmp_path: Path, videox_sample_data: Path
) -> None:
    from mp_helpers import launch, make_model, metrics, train_args

    data, model = videox_sample_data, make_model(tmp_path / "model")
    steps = ["--max_train_steps", "3", "--checkpointing_steps", "100"]
    one = tmp_path / "one"
    assert main(["train", *train_args(model, data, one, *steps, "--train_batch_size", "2")]) == 0
    assert main(["cache", *train_args(model, data, one, *steps, "--train_batch_size", "2")]) == 0

    two = tmp_path / "two"
    run = launch(train_args(model, data, two, *steps, "--train_batch_size", "1", "--cache_shard_mib", "0.0001"),
                 script=("-m", "vidctrl", "cache"))
    assert run.returncode == 0, run.output[-3000:]
    # each process wrote its share of the records (one shard per record here), as one process would
    assert cached_tensors(two / "cache").keys() == cached_tensors(one / "cache").keys()
    a, b = cached_tensors(two / "cache"), cached_tensors(one / "cache")
    assert all(torch.equal(a[k], b[k]) for k in a)

    run = launch(train_args(model, data, two, *steps, "--train_batch_size", "1", "--load_tensors"))
    assert run.returncode == 0, run.output[-3000:]
    index = json.loads((two / "cache" / INDEX).read_text())
    epoch_0 = len(index["records"]) // index["global_batch_size"]
    assert epoch_0 == 2 and len(metrics(two)) == 3  # the third step starts the next epoch
    assert metrics(two)[:epoch_0] == pytest.approx(metrics(one)[:epoch_0], rel=1e-5)


@pytest.mark.slow
def test_a_complete_cache_with_a_damaged_shard_is_refused_by_training_and_repaired_by_a_rerun(
    wan_cache: Path, datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(wan_cache, cache)
    shard = sorted((cache / SHARDS).glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-64])
    args = wan_args(datasets, model_for, tmp_path / "out", "--cache_dir", str(cache))
    capsys.readouterr()
    assert main(["train", *args, "--load_tensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --load_tensors: the latent cache") and f"{shard}: " in err and "truncated" in err

    assert main(["cache", *args]) == 0
    out = capsys.readouterr().out
    assert f"re-encoded damaged cache file {shard}" in out
    complete, repaired = cached_tensors(wan_cache), cached_tensors(cache)
    assert complete.keys() == repaired.keys() and all(torch.equal(complete[k], repaired[k]) for k in complete)


@pytest.mark.slow
def test_cache_encodes_vae_mini_batches_of_one_shape_and_stores_what_one_at_a_time_stores(
    datasets: dict[str, Path], model_for: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import AutoencoderKLWan

    sizes: list[int] = []
    real = AutoencoderKLWan.encode
    monkeypatch.setattr(AutoencoderKLWan, "encode", lambda self, x, *a, **k: (sizes.append(x.shape[0]),
                                                                             real(self, x, *a, **k))[1])
    caches = {}
    for mini_batch in ("1", "3"):
        sizes.clear()
        out = tmp_path / f"mini-{mini_batch}"
        assert main(["cache", *wan_args(datasets, model_for, out, "--fix_sample_size", "64", "64",
                                        "--vae_mini_batch", mini_batch)]) == 0
        caches[mini_batch] = (cached_tensors(out / "cache"), list(sizes))
    (one, one_sizes), (three, three_sizes) = caches["1"], caches["3"]
    assert set(one_sizes) == {1} and max(three_sizes) == 3 and len(three_sizes) < len(one_sizes)
    assert one.keys() == three.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(three[name].float(), tensor.float(), atol=1e-4, rtol=1e-4)

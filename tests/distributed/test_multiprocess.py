"""Two processes over gloo, launched as users launch them (`accelerate launch ... -m vidctrl train`):
DDP, DeepSpeed ZeRO-2 and ZeRO-3 (accelerate's plugin), FSDP2. Each follows the loss curve of one
process training the same global batch, resumes exactly, and (ZeRO-3, FSDP2) exports bf16 weights
equal to the one-process weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mp_helpers import (
    DDP,
    FSDP2,
    deepspeed_launch,
    launch,
    max_difference,
    metrics,
    train_args,
    weights,
)

from opt_in import opted_in
from vidctrl.cli import main

pytestmark = pytest.mark.slow
# Adam with a large epsilon is not invariant to the gradient's scale, so clipping shows in the curve.
STEPS = ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2", "--max_grad_norm", "0.05",
         "--initial_grad_norm_ratio", "1", "--adam_epsilon", "1", "--learning_rate", "1"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def one_process(tiny_model: Path, sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, global batch 2, 4 steps, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *train_args(tiny_model, sample_data, out, *STEPS, "--train_batch_size", "2",
                                      "--max_train_steps", "4", "--checkpointing_steps", "2")]) == 0
    return out


def assert_same_curve(run: Path, reference: Path) -> None:
    assert metrics(run) == pytest.approx(metrics(reference), rel=TOLERANCE)


def assert_bf16_of(exported: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """`exported` is `reference` in bf16, up to one bf16 rounding step (the runs differ by float noise)."""
    assert exported.keys() == reference.keys()
    for name, tensor in exported.items():
        assert tensor.dtype == torch.bfloat16, name
        torch.testing.assert_close(tensor.float(), reference[name].float(), rtol=2**-7, atol=1e-3)


def validation_flags(data: Path) -> list[str]:
    """Validate at step 4: sharded engines generate on every rank (rank 0 writes)."""
    control = json.loads((data / "metadata.json").read_text())[0]["control_file_path"]
    return ["--validation_steps", "4", "--validation_prompts", "a person dances", "--validation_control_videos",
            str(data / control), "--validation_num_inference_steps", "2", "--validation_frames", "5"]


def garbage_manifest(data: Path, root: Path) -> tuple[Path, str]:
    """A vidctrl manifest of `data` (probed facts stored) whose sample 1 is garbage on disk: it is
    planned into batches and fails only when decoded, as a file damaged after `data check` would."""
    copy = root / "data"
    shutil.copytree(data, copy)
    assert main(["data", "convert", "--train_data_meta", str(copy / "metadata.json"), "--train_data_dir", str(copy),
                 "--to", "manifest", "--out", str(copy / "data.jsonl")]) == 0
    media = json.loads((copy / "data.jsonl").read_text().splitlines()[1])["media"]
    (copy / media).write_bytes(b"not a video" * 50)
    return copy, Path(media).name


def manifest_args(model: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    args = train_args(model, manifest, out, *extra)
    args[args.index("--train_data_meta") + 1] = str(manifest / "data.jsonl")
    at = args.index("--train_data_dir")
    return args[:at] + args[at + 2 :]


def test_two_ddp_ranks_follow_one_process_also_when_a_rank_skips_every_sample(
    tiny_model: Path, sample_data: Path, tmp_path: Path
) -> None:
    data, bad_file = garbage_manifest(sample_data, tmp_path)
    common = [*STEPS, "--max_train_steps", "6", "--checkpointing_steps", "6"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *manifest_args(tiny_model, data, one, *common, "--train_batch_size", "2")]) == 0
    run = launch(manifest_args(tiny_model, data, two, *common, "--train_batch_size", "1"), launcher=DDP)
    assert run.returncode == 0, run.output[-3000:]
    # batch 1 per rank: whenever the garbage sample is drawn, its rank has no sample at all and
    # trains on a zero-weighted stand-in, so neither rank waits for the other
    assert bad_file in run.output and "skipped sample" in run.output
    assert metrics(two, "skipped_samples")[-1] == metrics(one, "skipped_samples")[-1] > 0
    assert_same_curve(two, one)
    assert max_difference(weights(two / "checkpoint-6" / "transformer"),
                          weights(one / "checkpoint-6" / "transformer")) < TOLERANCE


def test_zero2_follows_one_process_and_clips_at_max_grad_norm(
    tiny_model: Path, sample_data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "zero2"
    run = launch(train_args(tiny_model, sample_data, out, *STEPS, "--train_batch_size", "1", "--max_train_steps", "4",
                            "--checkpointing_steps", "2", "--use_deepspeed"),
                 launcher=deepspeed_launch("config/zero_stage2_config.json"))
    assert run.returncode == 0, run.output[-3000:]
    assert_same_curve(out, one_process)
    # the same run unclipped takes another path: DeepSpeed did clip at --max_grad_norm 0.05
    unclipped = tmp_path / "unclipped"
    assert main(["train", *train_args(tiny_model, sample_data, unclipped, *STEPS, "--train_batch_size", "2",
                                      "--max_train_steps", "4", "--max_grad_norm", "0")]) == 0
    assert abs(metrics(unclipped)[-1] - metrics(out)[-1]) > 0.05
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["extra"]["engine"] == "deepspeed-zero2" and state["num_processes"] == 2
    assert (out / "checkpoint-4" / "engine_state" / "deepspeed").is_dir()
    # ZeRO-2 keeps the whole model on every rank: the checkpoint carries it in the diffusers layout
    assert weights(out / "checkpoint-4" / "transformer")


def test_zero3_resumes_exactly_and_exports_bf16_diffusers_weights(
    tiny_model: Path, sample_data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "zero3"
    launcher = deepspeed_launch("config/zero_stage3_config.json", "--zero_stage", "3", "--zero3_init_flag", "true")
    common = train_args(tiny_model, sample_data, out, *STEPS, "--train_batch_size", "1", "--checkpointing_steps", "2")
    # run from a folder without config/: vidctrl finds its own copy of the seed's config path
    first = launch([*common, "--max_train_steps", "2"], launcher=launcher, cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    second = launch([*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
                     *validation_flags(sample_data)], launcher=launcher, cwd=tmp_path)
    assert second.returncode == 0, second.output[-3000:]
    assert_same_curve(out, one_process)
    assert (out / "validation" / "step-4" / "sample-0.mp4").is_file()
    checkpoint = out / "checkpoint-4"
    assert sorted(p.name for p in (checkpoint / "transformer").iterdir()) == ["config.json"]
    exported = tmp_path / "exported"
    assert main(["export", "zero-to-bf16", str(checkpoint), str(exported), "--max_shard_size", "80GB",
                 "--safe_serialization"]) == 0
    assert_bf16_of(weights(exported), weights(one_process / "checkpoint-4" / "transformer"))

    from diffusers import WanTransformer3DModel

    assert WanTransformer3DModel.from_pretrained(exported).config.in_channels == 48


def test_fsdp2_resumes_exactly_and_exports_bf16_diffusers_weights(
    tiny_model: Path, sample_data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fsdp"
    common = train_args(tiny_model, sample_data, out, *STEPS, "--train_batch_size", "1", "--checkpointing_steps", "2")
    first = launch([*common, "--max_train_steps", "2"], launcher=FSDP2)
    assert first.returncode == 0, first.output[-3000:]
    assert "engine fsdp2" in first.output
    second = launch([*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
                     *validation_flags(sample_data)], launcher=FSDP2)
    assert second.returncode == 0, second.output[-3000:]
    assert_same_curve(out, one_process)
    assert (out / "validation" / "step-4" / "sample-0.mp4").is_file()
    shards = out / "checkpoint-4" / "engine_state" / "fsdp"
    assert {p.name for p in shards.glob("model-rank*.safetensors")} == {"model-rank0.safetensors",
                                                                        "model-rank1.safetensors"}
    exported = tmp_path / "exported"
    assert main(["export", "zero-to-bf16", str(out / "checkpoint-4"), str(exported), "--max_shard_size", "100KB"]) == 0
    assert (exported / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_bf16_of(weights(exported), weights(one_process / "checkpoint-4" / "transformer"))


NAN_ON_RANK_1 = '''
import os, sys
import torch
from vidctrl.objectives.flow import FlowMatching

original, calls = FlowMatching.loss, []

def loss(self, *args, **kwargs):
    value = original(self, *args, **kwargs)
    calls.append(1)
    if os.environ.get("RANK") == "1" and len(calls) == 2:
        return value * float("nan")
    return value

FlowMatching.loss = loss
from vidctrl.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_nan_on_one_rank_is_skipped_by_every_rank_naming_the_step_and_file(
    tiny_model: Path, sample_data: Path, tmp_path: Path
) -> None:
    # (one process stopping at a NaN: tests/train/test_engine.py; the stop decision is the same
    # agreement, see test_step_agreement.py)
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    run = launch(train_args(tiny_model, sample_data, tmp_path / "skip", "--train_batch_size", "1",
                            "--max_train_steps", "3", "--checkpointing_steps", "3", "--nan_policy", "skip"),
                 script=[str(script), "train"])
    assert run.returncode == 0, run.output[-3000:]
    skipped = [line for line in run.output.splitlines() if "update skipped (--nan_policy skip)" in line]
    assert len(skipped) == 2  # both ranks, with the same words: step 2 and rank 1's sample file
    assert all("step 2: loss is not finite on samples" in line and ".mp4" in line for line in skipped)
    assert skipped[0].split("WARNING", 1)[1] == skipped[1].split("WARNING", 1)[1]
    losses = metrics(tmp_path / "skip")
    assert len(losses) == 3 and losses[1] != losses[1] and all(v == v for v in (losses[0], losses[2]))


def test_strict_mode_on_two_ranks_stops_at_the_bad_sample_naming_it(
    tiny_model: Path, sample_data: Path, tmp_path: Path
) -> None:
    data, bad_file = garbage_manifest(sample_data, tmp_path)
    run = launch(manifest_args(tiny_model, data, tmp_path / "out", "--train_batch_size", "1", "--max_train_steps", "6",
                               "--bad_sample_policy", "strict"), launcher=DDP, timeout=90)
    assert run.returncode != 0
    assert "error:" in run.output and bad_file in run.output
    assert not list((tmp_path / "out").glob("checkpoint-*"))


if opted_in("VIDCTRL_TEST_DS_OFFLOAD"):  # collected only when asked for: DeepSpeed compiles its CPU Adam first

    def test_zero3_with_cpu_offload_follows_one_process(tiny_model: Path, sample_data: Path, one_process: Path,
                                                        tmp_path: Path) -> None:
        out = tmp_path / "offload"
        run = launch(train_args(tiny_model, sample_data, out, *STEPS, "--train_batch_size", "1", "--max_train_steps", "4",
                                "--checkpointing_steps", "4"),
                     launcher=deepspeed_launch("config/zero_stage3_config_cpu_offload.json"), timeout=240)
        assert run.returncode == 0, run.output[-3000:]
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        assert state["extra"]["engine"] == "deepspeed-zero3-offload"
        # DeepSpeedCPUAdam is not torch's AdamW: the same curve up to its own float order
        assert metrics(out) == pytest.approx(metrics(one_process), rel=1e-3)

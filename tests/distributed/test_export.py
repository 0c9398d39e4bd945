"""`vidctrl export zero-to-bf16` on checkpoints built here without processes: full weights, FSDP2
shards written as two ranks would, and DeepSpeed files (read only as weights)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidctrl.cli import main
from vidctrl.train.export import ExportError, export_bf16, parse_size, shard_state
from vidctrl.train.sharded_state import ShardedStateError, load_deepspeed_file, read_fsdp_full_state


def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"blocks.0.weight": torch.randn(5, 3, generator=generator), "blocks.0.bias": torch.randn(5, generator=generator),
            "head.weight": torch.randn(2, 5, generator=generator), "step_count": torch.tensor([3])}


def checkpoint_with(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint-4"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "Tiny", "dim": 5}))
    (folder / "trainer_state.json").write_text(json.dumps({"format": 1, "step": 4, "weights": ["transformer"]}))
    return folder


def test_sizes_read_like_transformers_and_shards_keep_key_order() -> None:
    assert parse_size("80GB") == 80 * 10**9 and parse_size("10GiB") == 10 * 2**30 and parse_size("500MB") == 5 * 10**8
    with pytest.raises(ValueError, match="80 gigs"):
        parse_size("80 gigs")
    shards = shard_state(state(), 64)
    assert [k for shard in shards for k in shard] == list(state()) and len(shards) == 3


def test_full_weights_export_to_bf16_shards_with_an_index_and_the_config(tmp_path: Path) -> None:
    folder = checkpoint_with(tmp_path)
    save_file(state(), str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    out = tmp_path / "out"
    assert main(["export", "zero-to-bf16", str(folder), str(out), "--max_shard_size", "64B",
                 "--safe_serialization"]) == 0
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    exported: dict[str, torch.Tensor] = {}
    for name in set(index["weight_map"].values()):
        exported.update(load_file(str(out / name)))
    assert exported["blocks.0.weight"].dtype == torch.bfloat16 and exported["step_count"].dtype == torch.int64
    assert torch.equal(exported["head.weight"], state()["head.weight"].bfloat16())
    assert json.loads((out / "config.json").read_text())["dim"] == 5


def test_fsdp_shards_of_two_ranks_concatenate_to_the_full_tensors(tmp_path: Path) -> None:
    folder = checkpoint_with(tmp_path)
    full = state()
    shards = tmp_path / "checkpoint-4" / "engine_state" / "fsdp"
    shards.mkdir(parents=True)
    params = {k: v for k, v in full.items() if k != "step_count"}
    for rank in range(2):
        local = {k: torch.chunk(v, 2, dim=0)[rank].contiguous() if rank < len(torch.chunk(v, 2, dim=0))
                 else v[:0] for k, v in params.items()}
        save_file({**local, "step_count": full["step_count"]}, str(shards / f"model-rank{rank}.safetensors"))
    meta = {"format": 1, "world_size": 2, "buffers": ["step_count"],
            "parameters": {k: {"shape": list(v.shape), "dtype": "float32", "placement": "shard0"}
                           for k, v in params.items()}}
    (shards / "fsdp.json").write_text(json.dumps(meta))
    consolidated = read_fsdp_full_state(folder / "engine_state")
    assert all(torch.equal(consolidated[k], v) for k, v in full.items())
    written = export_bf16(folder, tmp_path / "out")
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors") in written


def test_export_refuses_a_checkpoint_without_weights_and_a_non_empty_output(tmp_path: Path) -> None:
    folder = checkpoint_with(tmp_path)
    with pytest.raises(ExportError, match="holds no model weights"):
        export_bf16(folder, tmp_path / "out")
    save_file(state(), str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ExportError, match="not empty"):
        export_bf16(folder, tmp_path / "busy")


class Payload:
    """Stands for an object a crafted checkpoint would run code through when unpickled."""


def test_deepspeed_files_load_as_weights_only(tmp_path: Path) -> None:
    from deepspeed.runtime.zero.config import ZeroStageEnum

    good = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights, "fp32_flat_groups": [torch.ones(3)]}},
               good)
    assert load_deepspeed_file(good)["optimizer_state_dict"]["zero_stage"] == 3
    bad = tmp_path / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"payload": Payload()}, bad, pickle_module=pickle)
    with pytest.raises(ShardedStateError, match="weights_only"):
        load_deepspeed_file(bad)


@pytest.mark.parametrize("damaged", ["transformer/diffusion_pytorch_model.safetensors", "trainer_state.json"])
def test_export_of_a_truncated_checkpoint_names_the_file(tmp_path: Path, damaged: str, capsys) -> None:
    folder = checkpoint_with(tmp_path)
    save_file(state(), str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    target = folder / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    code = main(["export", "zero-to-bf16", str(folder), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: checkpoint {folder} is damaged: checkpoint-4/{damaged}: ")
    assert not (tmp_path / "out").exists()

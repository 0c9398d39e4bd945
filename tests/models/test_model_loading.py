"""The generic strict loader: readers, key maps, the strict report, meta-device assignment."""

import json
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vidctrl.models.loading import (
    CheckpointError,
    KeyMap,
    SafetensorsReader,
    ShapeReader,
    SplitRule,
    StateDictReader,
    StrictLoadError,
    TemplateRule,
    TorchFileReader,
    empty_weights,
    identity_key_map,
    load_checkpoint,
    open_checkpoint,
    read_safetensors_header,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.conv = nn.Conv2d(2, 3, 1)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(5, 2)
        self.alias = nn.Embedding(5, 2)
        self.alias.weight = self.shared.weight


class NotATensor:
    """Anything a pickle could smuggle in; torch.load(weights_only=True) must refuse it."""


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_strict_error_names_every_missing_unexpected_and_misshaped_key_with_counts():
    with empty_weights():
        model = Net()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del shapes["norm.bias"]
    shapes["proj.weight"] = (3, 5)
    shapes["extra.weight"] = (1,)
    with pytest.raises(StrictLoadError) as err:
        load_checkpoint(model, ShapeReader(shapes, "ckpt"), identity_key_map())
    message = str(err.value)
    assert "1 missing, 1 unexpected, 1 with a different shape" in message
    assert "norm.bias" in message and "extra.weight" in message
    assert "proj.weight: checkpoint [3, 5], model [3, 4]" in message
    assert err.value.report.missing == ["norm.bias"]


def test_non_strict_load_skips_unexpected_keys_but_never_leaves_holes():
    source = Net()
    with empty_weights():
        model = Net()
    tensors = {**state(source), "junk": torch.zeros(1)}
    report = load_checkpoint(model, StateDictReader(tensors), identity_key_map(), strict=False)
    assert report.unexpected == ["junk"] and report.loaded == 6
    assert torch.equal(model.conv.weight, source.conv.weight)
    del tensors["conv.bias"]
    with empty_weights():
        model = Net()
    with pytest.raises(StrictLoadError, match=re.escape("conv.bias")):
        load_checkpoint(model, StateDictReader(tensors), identity_key_map(), strict=False)


def test_load_assigns_tensors_into_a_meta_model_casts_each_and_keeps_fp32_modules(tmp_path):
    source = Net()
    save_file(state(source), str(tmp_path / "w.safetensors"))
    with empty_weights():
        model = Net()
    assert model.proj.weight.is_meta
    with open_checkpoint(tmp_path / "w.safetensors") as reader:
        report = load_checkpoint(
            model, reader, identity_key_map(), dtype=torch.bfloat16, keep_in_fp32=("norm",)
        )
    assert report.ok and report.loaded == 6
    assert model.proj.weight.dtype == torch.bfloat16 and model.norm.weight.dtype == torch.float32
    assert torch.equal(model.norm.weight, source.norm.weight)
    assert torch.equal(model.proj.weight, source.proj.weight.to(torch.bfloat16))
    assert all(not p.is_meta and p.requires_grad for p in model.parameters())


def test_tied_parameters_load_once_and_stay_one_parameter():
    source = Tied()
    with empty_weights():
        model = Tied()
    report = load_checkpoint(
        model, StateDictReader({"shared.weight": source.shared.weight.detach()}), identity_key_map()
    )
    assert report.ok and model.alias.weight is model.shared.weight


def test_safetensors_header_gives_names_dtypes_and_shapes(tmp_path):
    save_file(
        {"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(4)}, str(tmp_path / "x.safetensors")
    )
    assert read_safetensors_header(tmp_path / "x.safetensors") == {"a": ("BF16", (2, 3)), "b": ("F32", (4,))}
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_safetensors_header(tmp_path / "bad.safetensors")


def test_sharded_checkpoint_is_read_through_its_index_and_a_missing_shard_is_named(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "m-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    reader = open_checkpoint(tmp_path / "m.safetensors.index.json")
    assert isinstance(reader, SafetensorsReader)
    assert reader.shapes() == {"a": (2,), "b": (3,)}
    assert torch.equal(reader.load("b"), torch.zeros(3))
    (tmp_path / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("m-00002-of-00002.safetensors")):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


def test_pth_files_are_memory_mapped_and_never_unpickle_objects(tmp_path):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pth")
    reader = TorchFileReader(tmp_path / "ok.pth")
    assert reader.shapes() == {"w": (3,)} and torch.equal(reader.load("w"), torch.arange(3.0))
    torch.save({"w": torch.zeros(1), "evil": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        TorchFileReader(tmp_path / "evil.pth")


def test_template_and_split_rules_map_keys_both_ways():
    key_map = KeyMap(
        [
            TemplateRule(
                "blocks.{n}.self_attn.{qkv}.{param}", "blocks.{n}.attn1.to_{qkv}.{param}", qkv="q|k|v"
            ),
            SplitRule("layers.{n}.to_qkv.{param}", ["l.{n}.q.{param}", "l.{n}.k.{param}", "l.{n}.v.{param}"]),
        ],
        ignore=[(r"text\..+", "unused tower")],
    )
    assert key_map.rename("blocks.12.self_attn.k.bias") == "blocks.12.attn1.to_k.bias"
    plan = key_map.plan(["blocks.0.self_attn.q.weight", "layers.3.to_qkv.weight", "text.x", "other"])
    assert set(plan.assignments) == {
        "blocks.0.attn1.to_q.weight",
        "l.3.q.weight",
        "l.3.k.weight",
        "l.3.v.weight",
    }
    assert plan.ignored == {"text.x": "unused tower"} and plan.unmapped == ["other"]
    fused = torch.arange(12.0).reshape(6, 2)
    parts = {t: a.apply(fused) for t, a in plan.assignments.items() if t.startswith("l.3")}
    assert torch.equal(parts["l.3.k.weight"], fused[2:4])
    back = key_map.to_source(parts)
    assert torch.equal(back["layers.3.to_qkv.weight"], fused)

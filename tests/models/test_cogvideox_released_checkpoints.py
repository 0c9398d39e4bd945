"""Every released CogVideoX-Fun transformer (and the CogVideoX1.5-5B-I2V base) loads strictly: full-size
models on the meta device, keys from the reference key lists (as a safetensors header gives them),
nothing downloaded. The one tolerated extra key is a top-level ``pos_embedding``, by that name only."""

from __future__ import annotations

from typing import Any

import pytest

from reference_checkpoints import reference_json
from vidctrl.models.cogvideox.components import build_transformer, transformer_key_map
from vidctrl.models.loading import ShapeReader, StrictLoadError, plan_and_check

FUN = [
    "CogVideoX-Fun-V1.1-2b-InP",
    "CogVideoX-Fun-V1.1-2b-Control",
    "CogVideoX-Fun-V1.1-5b-InP",
    "CogVideoX-Fun-V1.1-5b-Control",
]
STRAY_SHAPE = [1, 17776, 3072]  # 226 text + 13 x 30 x 45 video positions of the 5B sample size


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Any, dict[str, Any]]]:
    """One meta-device model per released config (building them is the slow part)."""
    out = {}
    for name in [*FUN, "CogVideoX1.5-5B-I2V"]:
        ref = reference_json(f"{name}__diffusers")
        out[name] = (build_transformer(ref["config"]), ref)
    return out


@pytest.mark.parametrize("name", [*FUN, "CogVideoX1.5-5B-I2V"])
def test_released_transformer_loads_strictly_at_full_size(name: str, models: dict) -> None:
    model, ref = models[name]
    _, report = plan_and_check(model, ShapeReader(ref["keys"], name), transformer_key_map())
    if not report.ok:
        raise StrictLoadError(report)
    assert report.ignored == {}
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert not any(p.device.type != "meta" for p in model.parameters())
    expected_in = {"InP": 33, "Control": 32}.get(name.rsplit("-", 1)[-1], 32)
    assert model.config.in_channels == expected_in


@pytest.mark.parametrize("name", ["CogVideoX-Fun-V1.1-2b-InP", "CogVideoX-Fun-V1.1-5b-Control"])
def test_a_stray_top_level_pos_embedding_is_tolerated_by_name_only(name: str, models: dict) -> None:
    model, ref = models[name]
    with_stray = {**ref["keys"], "pos_embedding": STRAY_SHAPE}
    _, report = plan_and_check(model, ShapeReader(with_stray, name), transformer_key_map())
    assert report.ok and list(report.ignored) == ["pos_embedding"]

    for other in ("patch_embed.pos_embedding", "transformer.pos_embedding", "pos_embeddings"):
        _, report = plan_and_check(model, ShapeReader({**ref["keys"], other: STRAY_SHAPE}, name),
                                   transformer_key_map())
        assert not report.ok and report.unexpected == [other]


def test_a_released_key_list_against_the_wrong_variant_names_every_difference(models: dict) -> None:
    model, _ = models["CogVideoX-Fun-V1.1-5b-InP"]
    _, control = models["CogVideoX-Fun-V1.1-5b-Control"]
    _, report = plan_and_check(model, ShapeReader(control["keys"], "5b-Control"), transformer_key_map())
    assert not report.missing and not report.unexpected
    assert [m.target for m in report.mismatched] == ["patch_embed.proj.weight"]
    assert "checkpoint [3072, 32, 2, 2], model [3072, 33, 2, 2]" in report.format()

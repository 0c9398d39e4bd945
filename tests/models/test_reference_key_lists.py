"""The released checkpoints' key/shape lists that ship with the tests are whole and unchanged: every
list INDEX names is there, with its key count, parameter count and key/shape hash (DiffSynth-Studio's
md5 over the sorted ``key:shape`` and ``key`` strings; for the Wan, VAE, T5 and CLIP files the hash
of the released file itself). A truncated or hand-edited list fails here, not as a puzzling load test."""

from __future__ import annotations

import hashlib
import math

import pytest

from reference_checkpoints import CHECKPOINTS, reference_index, reference_json

INDEX = reference_index()


def keyshape_md5(keys: dict[str, list[int]]) -> str:
    words = [word for key, shape in keys.items() for word in (f"{key}:{'_'.join(map(str, shape))}", key)]
    return hashlib.md5(",".join(sorted(words)).encode()).hexdigest()


def test_index_lists_every_shipped_key_list_and_each_family_to_come() -> None:
    shipped = {path.name.removesuffix(".json.gz") for path in CHECKPOINTS.glob("*.json.gz")} - {"INDEX"}
    assert shipped == {entry["name"] for entry in INDEX}
    # the next two families (EasyAnimate, ControlNeXt-SVD) find their released layouts here too
    for name in ("EasyAnimateV5.1-12b-zh-Control__original", "EasyAnimateV5.1-12b-zh-Control__diffusers",
                 "ControlNeXt-SVD-v2_controlnet.bin__original", "stable-video-diffusion-img2vid-xt-1-1_unet__diffusers"):
        assert name in shipped


@pytest.mark.parametrize("entry", INDEX, ids=[entry["name"] for entry in INDEX])
def test_key_list_has_the_keys_parameters_and_hash_its_index_states(entry: dict) -> None:
    ref = reference_json(entry["name"])
    assert ref["name"] == entry["name"] and ref["layout"] == entry["layout"]
    assert len(ref["keys"]) == entry["num_keys"] == ref["num_keys"]
    assert sum(math.prod(shape) for shape in ref["keys"].values()) == entry["num_params"]
    assert keyshape_md5(ref["keys"]) == entry["keyshape_md5_diffsynth_style"]


def test_a_missing_key_list_is_an_error_naming_where_it_belongs() -> None:
    with pytest.raises(FileNotFoundError, match=r"tests/fixtures/checkpoints.*restore it from git"):
        reference_json("Wan2.1-Fun-V9-Control__videoxfun")

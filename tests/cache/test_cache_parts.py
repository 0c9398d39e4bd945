"""The pieces of the latent cache, without a model: the fixed per-sample draws, the cached sampler's
replay of the plan, shards written bounded and found again, and what a fingerprint change says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidctrl.cache.build import prepare_cache_dir, share
from vidctrl.cache.fingerprint import fingerprint_changes
from vidctrl.cache.loader import CachedBatchSampler, CachedShaper
from vidctrl.cache.store import (
    FINGERPRINT,
    SHARDS,
    CacheError,
    PlannedRecord,
    ShardWriter,
    build_index,
    finished_records,
    remove_partial_files,
)
from vidctrl.config.train import parse_train_config
from vidctrl.data.sampler import BatchShape, BucketBatchSampler
from vidctrl.families.base import fixed_draw_generators
from vidctrl.families.wan_fun import WanFunControl, WanFunOptions


def test_v11_reference_is_frame_0_with_probability_04_and_the_others_share_the_rest() -> None:
    family = WanFunControl("wan2.1-fun-control-v1.1", WanFunOptions(control_ref_image="random"),
                           train_mode="control_ref")
    draws = np.array([family.reference_index(9, torch.Generator().manual_seed(s)) for s in range(4000)])
    counts = np.bincount(draws, minlength=9) / len(draws)
    assert abs(counts[0] - 0.4) < 0.03
    assert np.all(np.abs(counts[1:] - 0.6 / 8) < 0.02)
    first = WanFunControl("wan2.1-fun-control-v1.0", WanFunOptions(), train_mode="control_ref")
    assert {first.reference_index(9, torch.Generator().manual_seed(s)) for s in range(50)} == {0}


def test_draws_fixed_before_encoding_follow_the_samples_seed_alone() -> None:
    a, b, c = fixed_draw_generators({"seed": [5, 5, 6]})
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert not torch.equal(torch.rand(4, generator=fixed_draw_generators({"seed": [5]})[0]),
                           torch.rand(4, generator=c))


class KeyedShaper:
    """Three buckets; each batch draws its size, frames from the bucket."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    def bucket_keys(self) -> np.ndarray:
        return self.keys

    def batch_shape(self, key: int, members: np.ndarray, rng: np.random.Generator) -> BatchShape:
        size = int(rng.choice([64, 96, 128]))
        return BatchShape(size, size, 5 + 4 * key)


@pytest.mark.parametrize(("replicas", "batch_size"), [(1, 2), (2, 1), (2, 3)])
def test_cached_sampler_replays_the_planned_epoch_then_shuffles_same_shape_batches(replicas: int,
                                                                                   batch_size: int) -> None:
    n, seed = 57, 11
    keys = np.arange(n) % 3

    def planner(rank: int) -> BucketBatchSampler:
        return BucketBatchSampler(KeyedShaper(keys), np.arange(n), batch_size=batch_size, seed=seed,
                                  num_replicas=replicas, rank=rank)

    plan = planner(0)
    requests = [r for step in range(len(plan.schedule(0))) for r in plan.global_requests(0, step)]
    records = [PlannedRecord(r.index, f"v{r.index}.mp4", r.height, r.width, r.frames) for r in requests]
    for rank in range(replicas):
        uncached, cached = planner(rank), CachedBatchSampler(
            CachedShaper(records), np.arange(len(records)), batch_size=batch_size, seed=seed,
            num_replicas=replicas, rank=rank)
        assert len(cached) == len(uncached)
        for step in range(len(uncached)):
            want = uncached.requests(0, step)
            got = cached.requests(0, step)
            assert [records[r.index].index for r in got] == [r.index for r in want]
            assert [(r.height, r.width, r.frames, r.seed) for r in got] == [
                (r.height, r.width, r.frames, r.seed) for r in want]
        cached.set_epoch(1)
        later = [r for step in range(len(cached)) for r in cached.requests(1, step)]
        assert len(cached) == len(uncached)  # every cached record fits a full batch again
        for step in range(len(cached)):
            batch = cached.requests(1, step)
            assert len({records[r.index].shape for r in batch}) == 1
            assert all((r.height, r.width, r.frames) == records[r.index].shape for r in batch)
        assert [r.index for r in later] != [r.index for step in range(len(cached)) for r in cached.requests(0, step)]
    everyone = [r.index for step in range(len(plan.schedule(1))) for r in CachedBatchSampler(
        CachedShaper(records), np.arange(len(records)), batch_size=batch_size, seed=seed,
        num_replicas=replicas, rank=0).global_requests(1, step)]
    assert sorted(everyone) == list(range(len(records)))


def test_process_shares_are_contiguous_and_cover_every_record_once() -> None:
    todo = [0, 1, 2, 5, 6, 9, 10]
    shares = [share(todo, rank, 3) for rank in range(3)]
    assert shares == [[0, 1], [2, 5], [6, 9, 10]]
    assert share(todo, 0, 1) == todo


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {"latent_mean": torch.full((4, 2, 2), float(value)),
            "text": torch.full((3, 8), float(value), dtype=torch.bfloat16)}


def test_shards_are_written_by_size_and_at_gaps_and_the_index_finds_every_record(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_bytes=130)  # 64 + 48 bytes per record: a shard every two records
    for record in (0, 1, 2):
        writer.add(record, _tensors(record))
    writer.add(3, None, skipped="cannot be read")
    writer.add(6, _tensors(6))  # not after 3: a shard of its own
    writer.flush()
    names = sorted(p.name for p in (tmp_path / SHARDS).iterdir())
    assert names == ["shard-00000000-00000001.safetensors", "shard-00000002-00000003.safetensors",
                     "shard-00000006-00000006.safetensors"]
    assert finished_records(tmp_path) == {0, 1, 2, 3, 6}

    records = [PlannedRecord(i, f"v{i}.mp4", 64, 64, 5) for i in range(7)]
    with pytest.raises(CacheError, match=r"2 of 7 records are not in the cache .*record 4, v4.mp4.*Rerun `vidctrl cache`"):
        build_index(tmp_path, records, global_batch_size=1, excluded=0)
    writer.add(4, _tensors(4))
    writer.add(5, _tensors(5))
    writer.flush()
    index = build_index(tmp_path, records, global_batch_size=1, excluded=0)
    assert index.skipped == {3: "cannot be read"} and index.tensor_names(3) == []
    assert index.tensor_names(6) == ["latent_mean", "text"]
    assert index.specs[index.spec_of[6]] == {"latent_mean": ["F32", [4, 2, 2]], "text": ["BF16", [3, 8]]}
    assert index.to_json() == type(index).from_json(json.loads(json.dumps(index.to_json()))).to_json()


def test_leftovers_of_a_killed_run_are_removed_and_a_foreign_folder_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / SHARDS).mkdir()
    partial = tmp_path / SHARDS / ".tmp-123-shard-00000000-00000003.safetensors"
    partial.write_bytes(b"half")
    remove_partial_files(tmp_path)
    assert not partial.exists()

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(CacheError, match=r"holds files that are not a vidctrl cache \(notes.txt\)"):
        prepare_cache_dir(user, {"format": 1})
    assert (user / "notes.txt").read_text() == "keep"

    cache = tmp_path / "cache"
    prepare_cache_dir(cache, {"format": 1, "data": {"seed": 1}})
    ShardWriter(cache, max_bytes=1).add(0, _tensors(0))
    prepare_cache_dir(cache, {"format": 1, "data": {"seed": 1}})  # same settings: kept, a rerun resumes it
    assert finished_records(cache) == {0}
    prepare_cache_dir(cache, {"format": 1, "data": {"seed": 2}})  # other settings: replaced
    assert finished_records(cache) == set()
    assert json.loads((cache / FINGERPRINT).read_text())["fingerprint"]["data"]["seed"] == 2


def test_a_fingerprint_change_is_named_setting_by_setting() -> None:
    old = {"data": {"video_sample_n_frames": 9, "seed": None},
           "encoders": {"files": {"vae/diffusion_pytorch_model.safetensors": [100, 1]}}}
    new = {"data": {"video_sample_n_frames": 5, "seed": 3},
           "encoders": {"files": {"vae/diffusion_pytorch_model.safetensors": [100, 2], "vae/extra.bin": [7, 1]}}}
    assert fingerprint_changes(old, new) == [
        "data.seed unset -> 3",
        "data.video_sample_n_frames 9 -> 5",
        "encoders.files.vae/diffusion_pytorch_model.safetensors was modified",
        "encoders.files.vae/extra.bin is new",
    ]
    assert fingerprint_changes(new, new) == []


def test_load_tensors_is_a_typed_flag_with_a_cache_dir() -> None:
    config = parse_train_config(["--preset", "dynamictrl", "--load_tensors", "--cache_dir", "/tmp/c"])
    assert config.model.load_tensors and config.model.cache_dir == Path("/tmp/c")
    assert not parse_train_config(["--preset", "dynamictrl"]).model.load_tensors


def test_damaged_shards_and_constants_are_found_by_their_checksum_removed_and_named(tmp_path: Path) -> None:
    from vidctrl.cache.store import (
        CONSTANTS,
        INDEX,
        cache_file_damage,
        remove_damaged_files,
        save_tensors_atomic,
    )

    writer = ShardWriter(tmp_path, max_bytes=1)  # a shard per record
    for record in (0, 1, 2):
        writer.add(record, _tensors(record))
    save_tensors_atomic(tmp_path / CONSTANTS, {"empty_prompt": torch.ones(4, 8)}, {"preset": "x"})
    (tmp_path / INDEX).write_text("{}")
    shards = sorted((tmp_path / SHARDS).iterdir())
    flipped = bytearray(shards[1].read_bytes())
    flipped[-5] ^= 0xFF  # same size, other contents: only the checksum can tell
    shards[1].write_bytes(bytes(flipped))
    shards[2].write_bytes(shards[2].read_bytes()[:-10])  # truncated
    assert cache_file_damage(tmp_path, [p.name for p in shards]) == [
        f"{shards[2]}: {shards[2].stat().st_size} bytes where its header describes "
        f"{shards[2].stat().st_size + 10} (truncated)"]

    damaged = remove_damaged_files(tmp_path)
    assert [d.split(": ")[0] for d in damaged] == [str(shards[1]), str(shards[2])]
    assert "do not match the checksum" in damaged[0] and "truncated" in damaged[1]
    assert finished_records(tmp_path) == {0}  # the damaged records are encoded again
    assert not (tmp_path / INDEX).exists() and (tmp_path / CONSTANTS).exists()
    assert remove_damaged_files(tmp_path) == []

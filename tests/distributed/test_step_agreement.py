"""What keeps ranks in step, without processes: the per-step agreement's loss weights, per-sample
random streams that do not depend on the split of a batch, and stand-ins for empty batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vidctrl.data.dataset import SkippedSample
from vidctrl.data.sampler import ClipRequest
from vidctrl.families.base import EncodedBatch
from vidctrl.objectives.base import NoisedBatch
from vidctrl.train.distributed import agree, block_modules
from vidctrl.train.microbatch import (
    concat_encoded,
    loaded_requests,
    noise_samples,
    sample_generator,
    split_batch,
)


class FakeGather:
    """An `accelerator` whose gather returns the rows of all ranks (this one is `rank`)."""

    def __init__(self, rows_of_others: list[list[float]], rank: int) -> None:
        self.others, self.rank = rows_of_others, rank
        self.num_processes = len(rows_of_others) + 1
        self.device = torch.device("cpu")

    def gather(self, row: torch.Tensor) -> torch.Tensor:
        rows = [torch.tensor(r, dtype=torch.float64)[None] for r in self.others]
        rows.insert(self.rank, row)
        return torch.cat(rows)


def test_weights_make_the_update_the_mean_over_samples_that_loaded() -> None:
    # rank 0 lost both its samples, rank 1 has 2: rank 1 carries the whole update (weight 2 = 2 * 2 / 2)
    other = [2, 2, 2 * 3.0, 0, 32, 32, 5, 0]
    report = agree(FakeGather([other], rank=0), valid=0, planned=2, loss=torch.tensor(9.0), shape=(32, 32, 5))
    assert (report.valid, report.planned, report.skipped, report.weight, report.loss) == (2, 4, 2, 0.0, 3.0)
    report = agree(FakeGather([[0, 2, 0.0, 0, 32, 32, 5, 0]], rank=1), valid=2, planned=2, loss=torch.tensor(3.0),
                   shape=(32, 32, 5))
    assert report.weight == 2.0
    alone = agree(SimpleNamespace(num_processes=1, device=torch.device("cpu")), valid=2, planned=2,
                  loss=torch.tensor(1.5), shape=(8, 8, 1))
    assert alone.weight == 1.0 and alone.loss == 1.5  # one process: the loss is untouched


def test_a_non_finite_loss_names_its_rank_and_different_shapes_are_a_bug() -> None:
    report = agree(FakeGather([[1, 1, 0.0, 1, 32, 32, 5, 0]], rank=0), valid=1, planned=1, loss=torch.tensor(1.0),
                   shape=(32, 32, 5))
    assert report.nonfinite_ranks == (1,) and report.loss == 1.0
    with pytest.raises(RuntimeError, match="disagree on the shape"):
        agree(FakeGather([[1, 1, 1.0, 0, 32, 48, 5, 0]], rank=0), valid=1, planned=1, loss=torch.tensor(1.0),
              shape=(32, 32, 5))


def test_a_stop_request_on_one_rank_stops_every_rank() -> None:
    # rank 1 got the signal, rank 0 did not: both learn it from the same exchange
    asked = agree(FakeGather([[1, 1, 1.0, 0, 32, 32, 5, 1]], rank=0), valid=1, planned=1, loss=torch.tensor(1.0),
                  shape=(32, 32, 5))
    assert asked.stop
    calm = agree(FakeGather([[1, 1, 1.0, 0, 32, 32, 5, 0]], rank=1), valid=1, planned=1, loss=torch.tensor(1.0),
                 shape=(32, 32, 5))
    assert not calm.stop
    mine = agree(FakeGather([[1, 1, 1.0, 0, 32, 32, 5, 0]], rank=1), valid=1, planned=1, loss=torch.tensor(1.0),
                 shape=(32, 32, 5), stop=True)
    assert mine.stop


def test_per_sample_noise_does_not_depend_on_how_the_batch_is_split() -> None:
    class Objective:
        def prepare(self, latents: torch.Tensor, generator: torch.Generator) -> NoisedBatch:
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.rand((latents.shape[0],), generator=generator)
            return NoisedBatch(noisy=latents + noise, timestep=t, target=noise, alpha=t, sigma=t, loss_weight=t,
                               index=(t * 1000).long())

    latents = torch.zeros(3, 2, 4)
    together = noise_samples(Objective(), latents, [11, 12, 13], torch.device("cpu"))
    apart = [noise_samples(Objective(), latents[i : i + 1], [seed], torch.device("cpu")) for i, seed in
             enumerate([11, 12, 13])]
    assert torch.equal(together.noisy, torch.cat([p.noisy for p in apart]))
    assert torch.equal(together.timestep, torch.cat([p.timestep for p in apart]))
    a, b = sample_generator(11, "noise"), sample_generator(11, "conditions")
    assert not torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_samples_split_and_join_back_with_their_files() -> None:
    batch = {"size": 2, "skipped": [], "media": ["a.mp4", "b.mp4"], "pixels": torch.arange(8).view(2, 4),
             "epoch": 3}
    parts = split_batch(batch)
    assert [p["media"] for p in parts] == [["a.mp4"], ["b.mp4"]] and parts[1]["pixels"].tolist() == [[4, 5, 6, 7]]
    assert parts[0]["epoch"] == 3 and parts[0]["size"] == 1
    joined = concat_encoded([EncodedBatch(latents=p["pixels"].float(), conditions={"text": p["pixels"], "mode": "x"},
                                          media=p["media"], tokens=4) for p in parts])
    assert joined.media == ["a.mp4", "b.mp4"] and joined.tokens == 8 and joined.conditions["mode"] == "x"
    assert torch.equal(joined.conditions["text"], batch["pixels"])


def test_skipped_samples_are_matched_out_of_the_planned_requests() -> None:
    requests = [ClipRequest(7, 32, 32, 5, seed=1), ClipRequest(9, 32, 32, 5, seed=2), ClipRequest(7, 32, 32, 5, seed=3)]
    batch = {"size": 2, "skipped": [SkippedSample(9, "b.mp4", "broken")]}
    assert [r.seed for r in loaded_requests(requests, batch)] == [1, 3]


def test_fsdp_shards_the_outermost_declared_blocks() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

    class Model(torch.nn.Module):
        _no_split_modules = ("Block",)

        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.head = torch.nn.Linear(2, 2)

    model = Model()
    assert block_modules(model) == list(model.blocks)
    assert block_modules(model, ["Linear"]) == [model.blocks[0].inner, model.blocks[1].inner, model.head]

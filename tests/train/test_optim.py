"""Trainable-parameter groups, optimizers and learning-rate schedules."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
from torch import nn

from vidctrl.train.optim import (
    CAME_BETAS,
    CAME_EPS,
    TrainableModulesError,
    build_optimizer,
    build_scheduler,
    param_groups,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = nn.Linear(4, 4)
        self.attn2 = nn.Linear(4, 4)
        self.ff = nn.Linear(4, 4, bias=False)


class TinyTransformer(nn.Module):
    """Names like a diffusers Wan transformer: blocks.N.attn1..., proj_out, a top-level table."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embedding = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj_out = nn.Linear(4, 3)
        self.scale_shift_table = nn.Parameter(torch.zeros(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embedding(x) + self.scale_shift_table[0]
        for block in self.blocks:
            h = h + block.ff(block.attn2(block.attn1(h)))
        return self.proj_out(h + self.scale_shift_table[1])


def _model(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer()


def _names(groups: list[dict], model: nn.Module) -> list[set[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [{by_id[id(p)] for p in g["params"]} for g in groups]


def test_substrings_select_parameters_into_full_and_half_rate_groups() -> None:
    model = _model()
    selection = param_groups(
        model, trainable_modules=["attn1", "proj_out"], trainable_modules_low_learning_rate=["ff"], lr=1e-4
    )
    full, low = selection.groups
    assert full["lr"] == 1e-4 and low["lr"] == 5e-5
    assert _names(selection.groups, model) == [
        {
            "blocks.0.attn1.weight",
            "blocks.0.attn1.bias",
            "blocks.1.attn1.weight",
            "blocks.1.attn1.bias",
            "proj_out.weight",
            "proj_out.bias",
        },
        {"blocks.0.ff.weight", "blocks.1.ff.weight"},
    ]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set().union(*_names(selection.groups, model))
    assert [s.numel for s in selection.summaries] == [2 * 20 + 15, 2 * 16]
    assert selection.frozen_numel == 16 + 2 * 20 + 8  # patch_embedding, attn2, scale_shift_table
    assert "trainable: 6 tensors, 55 parameters at lr 0.0001" in selection.describe()


def test_a_name_matching_both_lists_trains_at_the_full_rate() -> None:
    model = _model()
    selection = param_groups(
        model, trainable_modules=["blocks.0"], trainable_modules_low_learning_rate=["attn"], lr=1.0
    )
    full, low = _names(selection.groups, model)
    assert "blocks.0.attn1.weight" in full and "blocks.0.attn1.weight" not in low
    assert low == {f"blocks.1.attn{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


def test_earlier_requires_grad_is_overridden_by_the_selection() -> None:
    model = _model()
    model.requires_grad_(False)
    model.proj_out.requires_grad_(True)
    param_groups(model, trainable_modules=["patch_embedding"], lr=1.0)
    assert not model.proj_out.weight.requires_grad
    assert model.patch_embedding.weight.requires_grad


def test_dot_matches_nested_parameters_but_not_a_top_level_one() -> None:
    model = _model()
    param_groups(model, trainable_modules=["."], lr=1.0)
    assert not model.scale_shift_table.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "scale_shift_table")


def test_name_for_matching_tests_substrings_against_another_layout() -> None:
    model = _model()
    original = {"scale_shift_table": "head.modulation"}
    param_groups(model, trainable_modules=["."], lr=1.0, name_for_matching=lambda n: original.get(n, n))
    assert all(p.requires_grad for p in model.parameters())


def test_no_trainable_modules_trains_everything_and_the_low_list_at_half_rate() -> None:
    model = _model()
    selection = param_groups(
        model, trainable_modules=None, trainable_modules_low_learning_rate=["ff"], lr=2.0
    )
    full, low = _names(selection.groups, model)
    assert low == {"blocks.0.ff.weight", "blocks.1.ff.weight"}
    assert "scale_shift_table" in full
    assert selection.groups[1]["lr"] == 1.0
    assert all(p.requires_grad for p in model.parameters())


def test_a_substring_that_matches_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(
        TrainableModulesError, match=r"--trainable_modules 'atn1' matches no parameter"
    ) as info:
        param_groups(_model(), trainable_modules=["attn1", "atn1"], lr=1.0)
    assert "blocks.0.attn1.weight" not in str(info.value).split("atn1' matches")[0]
    assert "patch_embedding.weight" in str(info.value)  # shows what names look like
    with pytest.raises(TrainableModulesError, match=r"low_learning_rate 'fff' matches no parameter"):
        param_groups(
            _model(), trainable_modules=["attn1"], trainable_modules_low_learning_rate=["fff"], lr=1.0
        )


def test_a_low_rate_substring_shadowed_by_the_full_list_is_an_error() -> None:
    with pytest.raises(TrainableModulesError, match="'ff' matches only parameters that --trainable_modules"):
        param_groups(_model(), trainable_modules=["."], trainable_modules_low_learning_rate=["ff"], lr=1.0)


def test_optimizer_leaves_out_parameters_without_gradient() -> None:
    model = _model()
    model.proj_out.requires_grad_(False)
    optimizer = build_optimizer(model.parameters(), name="adamw", lr=1e-3)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.proj_out.weight) not in optimized
    assert len(optimized) == sum(1 for p in model.parameters() if p.requires_grad)


def test_adamw_takes_the_adam_flags_and_keeps_group_learning_rates() -> None:
    model = _model()
    selection = param_groups(
        model, trainable_modules=["attn"], trainable_modules_low_learning_rate=["ff"], lr=2e-5
    )
    optimizer = build_optimizer(
        selection.groups, name="adamw", lr=2e-5, betas=(0.9, 0.95), eps=1e-10, weight_decay=3e-2
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-5, 1e-5]
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-10 and group["weight_decay"] == 3e-2


def test_adam_is_plain_adam() -> None:
    optimizer = build_optimizer(_model().parameters(), name="adam", lr=1e-3, weight_decay=1e-4)
    assert type(optimizer) is torch.optim.Adam


def test_unknown_optimizer_and_empty_parameter_list_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(_model().parameters(), name="sgd", lr=1.0)
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires a gradient"):
        build_optimizer(frozen.parameters(), lr=1.0)


def _train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 3, generator=generator)
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_came_uses_videox_fun_betas_and_eps_and_steps() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model.parameters(), name="came", lr=1e-3, weight_decay=0.0)
    group = optimizer.param_groups[0]
    assert group["betas"] == CAME_BETAS and group["eps"] == CAME_EPS
    scheduler = build_scheduler(optimizer, "constant")
    _train_steps(model, optimizer, scheduler, steps=2, seed=0)
    assert not torch.equal(model.proj_out.weight, before["proj_out.weight"])


def test_came_takes_dynamictrl_beta3_when_given() -> None:
    optimizer = build_optimizer(_model().parameters(), name="came", lr=1e-3, betas=(0.9, 0.95), beta3=0.98)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95, 0.98)


def test_8bit_adamw_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match=r"adamw8bit \(8-bit Adam\) needs the bitsandbytes package"):
        build_optimizer(_model().parameters(), name="adamw8bit", lr=1e-3)


def test_came_without_came_pytorch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "came_pytorch", None)
    with pytest.raises(ImportError, match="pip install came-pytorch"):
        build_optimizer(_model().parameters(), name="came", lr=1e-3)


def test_8bit_adamw_steps_when_bitsandbytes_is_installed() -> None:
    import bitsandbytes as bnb
    model = _model()
    optimizer = build_optimizer(model.parameters(), name="adamw8bit", lr=1e-3, eps=1e-10, weight_decay=3e-2)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    before = model.proj_out.weight.detach().clone()
    _train_steps(model, optimizer, build_scheduler(optimizer), steps=1, seed=0)
    assert not torch.equal(model.proj_out.weight, before)


def test_prodigy_defaults_to_dynamictrl_flags() -> None:
    optimizer = build_optimizer(_model().parameters(), name="prodigy", lr=1.0, betas=(0.9, 0.95))
    group = optimizer.param_groups[0]
    assert group["decouple"] is False and group["use_bias_correction"] is False
    optimizer = build_optimizer(_model().parameters(), name="prodigy", lr=1.0, options={"decouple": True})
    assert optimizer.param_groups[0]["decouple"] is True


def _lrs(name: str, steps: int, **kwargs) -> list[float]:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, name, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_constant_schedules() -> None:
    assert _lrs("constant", 3) == [1.0, 1.0, 1.0]
    assert _lrs("constant_with_warmup", 6, warmup_steps=4) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    lrs = _lrs("linear", 11, warmup_steps=2, total_steps=10)
    assert lrs[:3] == [0.0, 0.5, 1.0]
    assert lrs[6] == pytest.approx(0.5)
    assert lrs[10] == 0.0


def test_cosine_schedule_is_half_way_down_at_half_time() -> None:
    lrs = _lrs("cosine", 11, warmup_steps=0, total_steps=10)
    assert lrs[0] == 1.0
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_cosine_with_restarts_restarts_num_cycles_times() -> None:
    lrs = _lrs("cosine_with_restarts", 10, warmup_steps=0, total_steps=10, num_cycles=2)
    assert lrs[0] == 1.0 and lrs[5] == 1.0  # restart half way
    assert lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))


def test_polynomial_schedule_uses_the_power() -> None:
    lrs = _lrs("polynomial", 6, warmup_steps=0, total_steps=4, power=2.0)
    lr_end = 1e-7
    assert lrs[2] == pytest.approx((1.0 - lr_end) * 0.5**2 + lr_end)
    assert lrs[4] == pytest.approx(lr_end)


def test_steps_per_optimizer_step_stretches_the_schedule_like_accelerate_prepare() -> None:
    # accelerate steps a prepared scheduler num_processes times per optimizer step
    stretched = _lrs("constant_with_warmup", 9, warmup_steps=4, steps_per_optimizer_step=2)
    assert stretched[::2] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_schedule_errors_name_the_problem() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="cosine schedule needs the total number of training steps"):
        build_scheduler(optimizer, "cosine", warmup_steps=10)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine_restarts'"):
        build_scheduler(optimizer, "cosine_restarts")


@pytest.mark.parametrize("name", ["adamw", "came"])
def test_optimizer_and_scheduler_state_round_trip_gives_the_identical_next_step(name: str) -> None:
    def build(model: nn.Module):
        selection = param_groups(
            model, trainable_modules=["attn", "proj_out"], trainable_modules_low_learning_rate=["ff"], lr=1e-2
        )
        optimizer = build_optimizer(selection.groups, name=name, lr=1e-2, weight_decay=1e-2)
        return optimizer, build_scheduler(optimizer, "cosine", warmup_steps=2, total_steps=10)

    model = _model()
    optimizer, scheduler = build(model)
    _train_steps(model, optimizer, scheduler, steps=3, seed=0)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))

    resumed_model = _model(seed=99)
    resumed_optimizer, resumed_scheduler = build(resumed_model)
    resumed_model.load_state_dict(saved[0])
    resumed_optimizer.load_state_dict(saved[1])
    resumed_scheduler.load_state_dict(saved[2])

    _train_steps(model, optimizer, scheduler, steps=2, seed=1)
    _train_steps(resumed_model, resumed_optimizer, resumed_scheduler, steps=2, seed=1)
    for (key, value), resumed in zip(
        model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(value, resumed), key
    assert scheduler.get_last_lr() == resumed_scheduler.get_last_lr()


def test_lora_targets_that_match_no_module_are_a_config_error_naming_the_flag() -> None:
    from types import SimpleNamespace

    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.loaders import PeftAdapterMixin

    from vidctrl.config.fields import ConfigError
    from vidctrl.errors import UserError
    from vidctrl.families.base import ModelFamily

    class Tiny(ModelMixin, ConfigMixin, PeftAdapterMixin):
        @register_to_config
        def __init__(self) -> None:
            super().__init__()
            self.to_q = nn.Linear(4, 4)

    family = SimpleNamespace(lora_target_modules=("to_q",))
    with pytest.raises(ConfigError, match=r"--lora_target_modules to_k: .*not found") as caught:
        ModelFamily.add_lora(family, Tiny(), rank=2, alpha=2.0, target_modules=["to_k"], lr=1e-4)  # type: ignore[arg-type]
    assert isinstance(caught.value, UserError)
    groups = ModelFamily.add_lora(family, Tiny(), rank=2, alpha=2.0, target_modules=None, lr=1e-4)  # type: ignore[arg-type]
    assert len(groups[0]["params"]) == 2  # lora_A and lora_B of to_q

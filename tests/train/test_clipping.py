import pytest
import torch

from vidctrl.train.clipping import clip_gradients, grad_clip_limit, linear_decay


def test_limit_decays_from_the_initial_ratio_to_max_grad_norm_over_the_start_steps() -> None:
    assert grad_clip_limit(0, 0.1, max_grad_norm=0.05, initial_ratio=5, abnormal_start=1000) == pytest.approx(0.25)
    assert grad_clip_limit(500, 0.1, max_grad_norm=0.05, initial_ratio=5, abnormal_start=1000) == pytest.approx(0.15)
    assert grad_clip_limit(1000, 0.1, max_grad_norm=0.05, initial_ratio=5, abnormal_start=1000) == pytest.approx(0.05)
    assert linear_decay(4.0, 1.0, 0, 0) == 1.0


def test_abnormal_gradients_are_clipped_harder_after_the_start() -> None:
    # norm 20x the limit: clipped to limit / 10 (the cap); 6x: to limit / 6; 4x: the plain limit
    assert grad_clip_limit(2000, 1.0, max_grad_norm=0.05, initial_ratio=5) == pytest.approx(0.005)
    assert grad_clip_limit(2000, 0.3, max_grad_norm=0.05, initial_ratio=5) == pytest.approx(0.05 / 6)
    assert grad_clip_limit(2000, 0.2, max_grad_norm=0.05, initial_ratio=5) == pytest.approx(0.05)
    assert grad_clip_limit(500, 1.0, max_grad_norm=0.05, initial_ratio=5) == pytest.approx(0.15)


def test_ratio_one_is_plain_clipping() -> None:
    assert grad_clip_limit(5000, 100.0, max_grad_norm=1.0, initial_ratio=1) == 1.0


def test_clip_gradients_scales_like_torch() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    norm = clip_gradients(lambda: torch.nn.utils.get_total_norm([a.grad, b.grad]), [a, b], lambda n: 1.0)
    assert norm == pytest.approx(5.0)
    assert torch.linalg.vector_norm(torch.cat([a.grad, b.grad])).item() == pytest.approx(1.0, rel=1e-5)

import pytest
import torch
from torch import nn

from vidctrl.models.widen import widen_input_channels


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv3d(16, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.config: dict = {}

    def register_to_config(self, **kwargs: int) -> None:
        self.config.update(kwargs)


def test_widened_layer_computes_what_the_base_did_on_the_old_channels() -> None:
    model = Tiny()
    x = torch.randn(1, 16, 2, 4, 4)
    before = model.patch_embedding(x)
    assert widen_input_channels(model, "patch_embedding", 48)
    extra = torch.randn(1, 32, 2, 4, 4)
    after = model.patch_embedding(torch.cat([x, extra], dim=1))
    torch.testing.assert_close(before, after)
    assert model.patch_embedding.weight[:, 16:].abs().sum() == 0
    assert model.config == {"in_channels": 48}


def test_widening_is_a_no_op_at_the_right_width_and_refuses_to_narrow() -> None:
    model = Tiny()
    assert not widen_input_channels(model, "patch_embedding", 16)
    with pytest.raises(ValueError, match="more than the 8"):
        widen_input_channels(model, "patch_embedding", 8)

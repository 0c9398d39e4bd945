"""Widening a model's input layer for new condition channels.

Training a control model from a base that takes fewer input channels (a text-to-video Wan with
16, an image-to-video Wan with 36) widens the first convolution: the old input channels keep their
weights, the new ones start at zero (so the widened model computes exactly what the base did until
training moves them), and the new `in_channels` is written to the config so the saved model reloads.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


@torch.no_grad()
def widen_input_channels(model: nn.Module, layer_name: str, in_channels: int) -> bool:
    """Give `model.<layer_name>` (a ConvNd) `in_channels` inputs; returns False when it has them already."""
    old = getattr(model, layer_name)
    if not isinstance(old, nn.modules.conv._ConvNd):
        raise TypeError(f"{layer_name} is a {type(old).__name__}, not a convolution")
    if old.in_channels == in_channels:
        return False
    if old.in_channels > in_channels:
        raise ValueError(
            f"{layer_name} takes {old.in_channels} input channels, more than the {in_channels} this train mode "
            "feeds; choose the train mode the checkpoint was trained for"
        )
    new = type(old)(
        in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    if old.bias is not None:
        new.bias.copy_(old.bias)
    setattr(model, layer_name, new)
    if hasattr(model, "register_to_config"):
        model.register_to_config(in_channels=in_channels)
    log.info("widened %s from %d to %d input channels (new channels zero-initialised)", layer_name,
             old.in_channels, in_channels)
    return True

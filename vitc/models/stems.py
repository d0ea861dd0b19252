"""The two stems the paper compares (§3): patchify (ViT_P) and convolutional (ViT_C), built from
their description in structure.py (which cost.py counts)."""

from collections.abc import Sequence

import torch
from torch import nn

from vitc.models.layers import BatchNorm2d, LayerNorm2d
from vitc.models.structure import ConvLayer


def _conv(layer: ConvLayer) -> nn.Conv2d:
    return nn.Conv2d(layer.c_in, layer.c_out, layer.kernel, stride=layer.stride, padding=layer.padding,
                     bias=layer.bias)


class PatchifyStem(nn.Module):
    """One stride-p p×p conv: ViT's patchify stem."""

    def __init__(self, layer: ConvLayer):
        super().__init__()
        self.proj = _conv(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvStem(nn.Module):
    """Stacked convs (no bias, a norm + ReLU after each: BN in the paper's C-stem, LayerNorm in
    ViT_C(ln)), then a 1×1 conv with bias to the width.

    BN computes in fp32 under every precision (layers.BatchNorm2d).

    Its invariants (lengths, strides, total stride) are checked once, by `ViTSpec.validate`.
    """

    def __init__(self, layers: Sequence[ConvLayer]):
        super().__init__()
        *convs, last = layers
        modules: list[nn.Module] = []
        for layer in convs:
            norm = LayerNorm2d(layer.c_out) if layer.norm == "layer" else BatchNorm2d(layer.c_out)
            modules += [_conv(layer), norm, nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*modules)
        self.proj = _conv(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))

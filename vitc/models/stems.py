"""The two stems the paper compares (§3): patchify (ViT_P) and convolutional (ViT_C)."""

import math

import torch
from torch import nn


class PatchifyStem(nn.Module):
    """One stride-p p×p conv: ViT's patchify stem."""

    def __init__(self, width: int, patch_size: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, patch_size, stride=patch_size)
        self.stride = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvStem(nn.Module):
    """Stacked 3×3 convs (no bias, BN + ReLU after each), then a 1×1 conv with bias to `width`.

    Its invariants (lengths, strides, total stride) are checked once, by `ViTSpec.validate`.
    """

    def __init__(self, width: int, channels: list[int], strides: list[int], in_chans: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, s in zip([in_chans, *channels[:-1]], channels, strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels[-1], width, 1)
        self.stride = math.prod(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))

"""Weight initialisation as the authors' code on the paper's branch does it: pycls branch
`vitconfigs`, commit 206d0db, `pycls/models/vit.py`, `init_weights_vit` (pycls master changed the
conv-stem rule in 2022; vitc follows the paper's branch)."""

import math

from torch import nn

from vitc.models.layers import MLP, MultiheadSelfAttention
from vitc.models.stems import ConvStem, PatchifyStem


def init_vit_weights(model: nn.Module) -> None:
    """Initialise a VisionTransformer in place."""
    for module in model.modules():
        if isinstance(module, PatchifyStem):
            conv = module.proj
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            nn.init.trunc_normal_(conv.weight, std=math.sqrt(1.0 / fan_in))
            nn.init.zeros_(conv.bias)
        elif isinstance(module, ConvStem):
            # the 3×3 convs and their BatchNorms keep PyTorch's default init; the final 1×1 is
            # N(0, 2 / out_channels) (fan-out), bias zero
            nn.init.normal_(module.proj.weight, std=math.sqrt(2.0 / module.proj.out_channels))
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, MultiheadSelfAttention):
            nn.init.xavier_uniform_(module.qkv.weight)
            nn.init.zeros_(module.qkv.bias)
            nn.init.zeros_(module.proj.bias)  # projection weight keeps PyTorch's default, as in pycls
        elif isinstance(module, MLP):
            for fc in (module.fc1, module.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    nn.init.normal_(model.pos_embed, std=0.02)

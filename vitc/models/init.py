"""Weight initialisation as the authors' pycls code does it (issue #3 lists each rule)."""

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
            for conv in module.convs:
                if isinstance(conv, nn.Conv2d):
                    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
                    nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_out))
            nn.init.normal_(module.proj.weight, std=math.sqrt(1.0 / module.proj.out_channels))
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

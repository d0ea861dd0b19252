"""Vision Transformer with a patchify or convolutional stem (Xiao et al., 2021, Table 1).

Reads top to bottom: the model (built from a torch-free `ViTSpec`, spec.py, through the layer
description in structure.py), position-embedding interpolation.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitc.errors import VitcError
from vitc.models.init import init_vit_weights
from vitc.models.layers import Block
from vitc.models.spec import ViTSpec
from vitc.models.stems import ConvStem, PatchifyStem
from vitc.models.structure import block_shape, stem_layers


class VisionTransformer(nn.Module):
    """ViT_P (patchify stem) or ViT_C (conv stem); pre-norm blocks, final LN, linear head."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec.validate()
        layers = stem_layers(spec)
        self.stem = ConvStem(layers) if spec.stem == "conv" else PatchifyStem(*layers)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width)) if spec.classifier == "token" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens, spec.width))
        # stochastic depth grows linearly with depth to `drop_path` at the last block (DeiT's rule)
        rates = [spec.drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        shape = block_shape(spec)
        self.blocks = nn.ModuleList(Block(shape, spec.norm_eps, r) for r in rates)
        self.norm = nn.LayerNorm(spec.width, eps=spec.norm_eps)
        self.head = nn.Linear(spec.width, spec.num_classes)
        init_vit_weights(self)

    # Modules ZeRO-3 gathers and releases as one (z3 leaf modules), so its hooks run once per block;
    # not the conv stem, whose last conv's weight was then not gathered again for backward
    # (docs/engine.md, "DeepSpeed's overhead")
    zero3_leaf_modules = (Block,)

    def no_weight_decay_params(self) -> set[str]:
        """Names of parameters trained without weight decay: biases and norms, nothing else (the
        released configs' BIAS/LN/BN CUSTOM_WEIGHT_DECAY 0, pycls vitconfigs 206d0db,
        `pycls/core/optimizer.py`: the position embedding and class token are decayed)."""
        names: set[str] = set()
        for mod_name, module in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for p_name, _ in module.named_parameters(recurse=False):
                is_norm = isinstance(module, (nn.LayerNorm, nn.BatchNorm2d))
                if is_norm or p_name == "bias":
                    names.add(prefix + p_name)
        return names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        size = self.spec.image_size
        if x.shape[-2:] != (size, size):
            raise VitcError(f"input is {tuple(x.shape[-2:])} but the model was built for "
                            f"{size}×{size}; rebuild with model.image_size and interpolate_pos_embed")
        x = self.stem(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            if self.spec.act_checkpoint and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(x)


def interpolate_pos_embed(pos_embed: torch.Tensor, num_prefix: int, new_grid: int) -> torch.Tensor:
    """Resize a (1, prefix + g², d) position embedding to (1, prefix + new_grid², d), bicubic.

    Returns the input itself when the grid does not change (exact identity).
    """
    old_grid = math.isqrt(pos_embed.shape[1] - num_prefix)
    if old_grid**2 != pos_embed.shape[1] - num_prefix:
        raise VitcError(f"position embedding of {pos_embed.shape[1]} tokens with {num_prefix} prefix "
                        "token(s) is not a square grid")
    if old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid**2, d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def adapt_state_dict(state_dict: dict[str, torch.Tensor], spec: ViTSpec) -> dict[str, torch.Tensor]:
    """Weights trained at another resolution, made loadable into a model built from `spec`."""
    out = dict(state_dict)
    if "pos_embed" in out:
        out["pos_embed"] = interpolate_pos_embed(out["pos_embed"], int(spec.classifier == "token"), spec.grid)
    return out

"""Vision Transformer with a patchify or convolutional stem (Xiao et al., 2021, Table 1).

Reads top to bottom: the spec (plain dataclass), the model, position-embedding interpolation.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitc.errors import VitcError
from vitc.models.init import init_vit_weights
from vitc.models.layers import Block
from vitc.models.stems import ConvStem, PatchifyStem


@dataclass(frozen=True)
class ViTSpec:
    """Everything that determines a ViT's graph. `stem_channels` excludes the final 1×1 to width."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float
    stem: Literal["patchify", "conv"] = "patchify"
    patch_size: int = 16
    stem_channels: tuple[int, ...] = ()
    stem_strides: tuple[int, ...] = ()
    classifier: Literal["token", "pool"] = "token"
    num_classes: int = 1000
    image_size: int = 224
    drop_path: float = 0.0
    act_checkpoint: bool = False
    # LN.EPS: 1e-6 in every released config (pycls vitconfigs 206d0db, configs/vitconv_baselines/vit/);
    # timm's ViT uses the same
    norm_eps: float = 1e-6
    name: str = field(default="", compare=False)

    @property
    def mlp_hidden(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + (self.classifier == "token")

    def validate(self) -> "ViTSpec":
        """Raise a VitcError naming the first broken invariant; return self when sound."""
        who = f"model '{self.name}'" if self.name else "model"
        positive = dict(width=self.width, depth=self.depth, heads=self.heads,
                        patch_size=self.patch_size, num_classes=self.num_classes,
                        image_size=self.image_size)
        for key, value in positive.items():
            if value < 1:
                raise VitcError(f"{who}: model.{key} must be >= 1, got {value}")
        if self.mlp_ratio <= 0:
            raise VitcError(f"{who}: model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.width % self.heads:
            raise VitcError(f"{who}: model.width {self.width} is not divisible by model.heads {self.heads}")
        if not 0.0 <= self.drop_path < 1.0:
            raise VitcError(f"{who}: model.drop_path must be in [0, 1), got {self.drop_path}")
        if self.stem == "patchify" and (self.stem_channels or self.stem_strides):
            raise VitcError(f"{who}: model.stem_channels/stem_strides apply to the conv stem only; "
                            "set model.stem=conv or drop them")
        if self.stem == "conv":
            if not self.stem_channels or len(self.stem_channels) != len(self.stem_strides):
                raise VitcError(
                    f"{who}: model.stem_channels {list(self.stem_channels)} and model.stem_strides "
                    f"{list(self.stem_strides)} must be non-empty lists of equal length")
            if any(s not in (1, 2) for s in self.stem_strides):
                raise VitcError(f"{who}: model.stem_strides {list(self.stem_strides)}: each 3×3 conv "
                                "has stride 1 or 2")
            if any(c < 1 for c in self.stem_channels):
                raise VitcError(f"{who}: model.stem_channels {list(self.stem_channels)} must be >= 1")
            total = math.prod(self.stem_strides)
            if total != self.patch_size:
                raise VitcError(f"{who}: product of model.stem_strides {list(self.stem_strides)} is "
                                f"{total}, but model.patch_size is {self.patch_size}; they must be equal")
        if self.image_size % self.patch_size:
            raise VitcError(f"{who}: model.image_size {self.image_size} is not divisible by the stem's "
                            f"total stride {self.patch_size}")
        return self


class VisionTransformer(nn.Module):
    """ViT_P (patchify stem) or ViT_C (conv stem); pre-norm blocks, final LN, linear head."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec.validate()
        if spec.stem == "conv":
            self.stem = ConvStem(spec.width, list(spec.stem_channels), list(spec.stem_strides))
        else:
            self.stem = PatchifyStem(spec.width, spec.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width)) if spec.classifier == "token" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens, spec.width))
        # stochastic depth grows linearly with depth to `drop_path` at the last block (DeiT's rule)
        rates = [spec.drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        self.blocks = nn.ModuleList(Block(spec.width, spec.heads, spec.mlp_hidden, r, spec.norm_eps)
                                    for r in rates)
        self.norm = nn.LayerNorm(spec.width, eps=spec.norm_eps)
        self.head = nn.Linear(spec.width, spec.num_classes)
        self.grad_checkpointing = spec.act_checkpoint
        init_vit_weights(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: memory for compute."""
        self.grad_checkpointing = enable

    def no_weight_decay_params(self) -> set[str]:
        """Names of parameters trained without weight decay (SPEC §2): biases, norms, pos/cls."""
        names = {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())
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
            if self.grad_checkpointing and self.training:
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


def with_overrides(spec: ViTSpec, **changes) -> ViTSpec:
    """A copy of `spec` with `changes`; switching to the patchify stem drops the conv-stem lists."""
    if changes.get("stem") == "patchify" and spec.stem == "conv":
        changes.setdefault("stem_channels", ())
        changes.setdefault("stem_strides", ())
    if "stem_strides" in changes and "patch_size" not in changes and changes["stem_strides"]:
        changes["patch_size"] = math.prod(changes["stem_strides"])
    return replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})

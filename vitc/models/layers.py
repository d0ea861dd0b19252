"""Transformer pieces: pre-norm block = LN -> MHSA -> residual, LN -> MLP(GELU) -> residual, built
from its description (structure.BlockShape) that cost.py counts; and the conv stem's BatchNorm,
which computes in fp32 whatever precision the model trains in."""

import torch
import torch.nn.functional as F
from torch import nn

from vitc.models.structure import BlockShape


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm computed in fp32: the input is cast up, the output back to the input's dtype.

    Under bf16/fp16 DeepSpeed casts each parameter (`p.data = p.data.to(dtype)`, deepspeed 0.19
    runtime/engine.py `_cast_module_mixed_precision`) and flattens them into its own buffers, but
    leaves buffers alone: weight and bias arrive in bf16 while the running statistics stay fp32,
    and PyTorch's BN kernels refuse that mix (CPU on the forward, CUDA's NCHW backward). So the
    statistics are kept fp32 (also through `module.half()`/`.bfloat16()`, see `_apply`), the
    affine parameters are cast up exactly for the computation (their fp32 masters live in the
    optimizer, like every parameter's), and normalisation runs in fp32. State-dict keys are
    nn.BatchNorm2d's. Always affine, tracking statistics with a fixed momentum.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(x.float(), self.running_mean, self.running_var, self.weight.float(),
                         self.bias.float(), self.training, self.momentum, self.eps)
        return y.to(x.dtype)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_var"):
            setattr(self, name, getattr(self, name).float())
        return self


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, at each position (ViT_C(ln)'s stem norm, Fig. 7);
    eps 1e-6, the released configs' LN.EPS."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MultiheadSelfAttention(nn.Module):
    """Self-attention through `scaled_dot_product_attention` (fused kernels on GPU)."""

    def __init__(self, shape: BlockShape):
        super().__init__()
        if shape.width % shape.heads:
            raise ValueError(f"width {shape.width} is not divisible by heads {shape.heads}")
        self.heads = shape.heads
        self.qkv = nn.Linear(*shape.linears["attn.qkv"])
        self.proj = nn.Linear(*shape.linears["attn.proj"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, shape: BlockShape):
        super().__init__()
        self.fc1 = nn.Linear(*shape.linears["mlp.fc1"])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(*shape.linears["mlp.fc2"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    def __init__(self, shape: BlockShape, norm_eps: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(shape.width, eps=norm_eps)
        self.attn = MultiheadSelfAttention(shape)
        self.norm2 = nn.LayerNorm(shape.width, eps=norm_eps)
        self.mlp = MLP(shape)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

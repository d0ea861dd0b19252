"""The layers of a ViT, described once and torch-free: stems.py and layers.py build the model from
this description, cost.py counts flops, parameters and activations from it (pycls keeps a
`complexity()` beside each module for the same reason: the count cannot drift from the graph).
"""

from dataclasses import dataclass

from vitc.models.spec import ViTSpec

IN_CHANS = 3  # RGB
NORMS_PER_BLOCK = 2  # pre-norm: LN before attention, LN before the MLP


@dataclass(frozen=True)
class ConvLayer:
    """One stem conv; `norm` ("batch" or "layer") and ReLU follow it (then the conv has no bias),
    or nothing (None)."""

    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    bias: bool
    norm: str | None

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


def stem_layers(spec: ViTSpec) -> tuple[ConvLayer, ...]:
    """Patchify: one p×p conv of stride p with bias. Conv (§3 of the paper): 3×3 convs (padding 1,
    no bias) each followed by BN + ReLU, then a 1×1 conv with bias to the width; the stem variants
    of Table 3 / Fig. 7 set other kernels, paddings and norm (ViTSpec.stem_kernels ...)."""
    if spec.stem == "patchify":
        return (ConvLayer(IN_CHANS, spec.width, spec.patch_size, spec.patch_size, 0, True, None),)
    layers, c_in = [], IN_CHANS
    for c_out, k, stride, pad in zip(spec.stem_channels, spec.conv_kernels, spec.stem_strides, spec.conv_paddings):
        layers.append(ConvLayer(c_in, c_out, k, stride, pad, bias=False, norm=spec.stem_norm))
        c_in = c_out
    layers.append(ConvLayer(c_in, spec.width, 1, 1, 0, bias=True, norm=None))
    return tuple(layers)


@dataclass(frozen=True)
class BlockShape:
    """One pre-norm block: LN -> MHSA (qkv, attention over `heads`, proj) -> residual,
    LN -> MLP (fc1, GELU, fc2) -> residual. Every linear has a bias."""

    width: int
    heads: int
    mlp_hidden: int

    @property
    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear, named as in the built module, in forward order."""
        d, h = self.width, self.mlp_hidden
        return {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc1": (d, h), "mlp.fc2": (h, d)}


def block_shape(spec: ViTSpec) -> BlockShape:
    return BlockShape(spec.width, spec.heads, spec.mlp_hidden)

"""Closed-form cost of a ViTSpec, per module: the independent check on fvcore's trace.

Convention (the paper's, and fvcore's): one multiply-add is one flop; conv, linear and the two
attention products (QKᵀ and AV) count; biases, norms, activations and softmax do not.
Activations are the elements of every conv, linear and attention output (pycls's convention).
"""

from dataclasses import dataclass

from vitc.models.vit import ViTSpec


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int
    acts: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.params + other.params, self.acts + other.acts)

    def __mul__(self, times: int) -> "Cost":
        return Cost(self.flops * times, self.params * times, self.acts * times)


ZERO = Cost(0, 0, 0)


def conv_cost(size: int, c_in: int, c_out: int, k: int, stride: int, bias: bool) -> tuple[Cost, int]:
    """Cost of a k×k conv on a size×size input, and its output size.

    Holds for the 3×3 convs (padding 1) and for the patchify conv (kernel = stride, no padding,
    size divisible by the stride): both give ceil(size / stride) outputs per side.
    """
    out = -(-size // stride)
    return Cost(out * out * c_out * c_in * k * k, c_out * c_in * k * k + (c_out if bias else 0),
                out * out * c_out), out


def stem_cost(spec: ViTSpec) -> Cost:
    if spec.stem == "patchify":
        return conv_cost(spec.image_size, 3, spec.width, spec.patch_size, spec.patch_size, True)[0]
    total, size, c_in = ZERO, spec.image_size, 3
    for c_out, stride in zip(spec.stem_channels, spec.stem_strides):
        cost, size = conv_cost(size, c_in, c_out, 3, stride, bias=False)
        total += cost + Cost(0, 2 * c_out, 0)  # BatchNorm's affine weight and bias
        c_in = c_out
    cost, _ = conv_cost(size, c_in, spec.width, 1, 1, bias=True)
    return total + cost


def linear_cost(tokens: int, d_in: int, d_out: int) -> Cost:
    return Cost(tokens * d_in * d_out, d_in * d_out + d_out, tokens * d_out)


def block_cost(spec: ViTSpec) -> Cost:
    n, d, h = spec.num_tokens, spec.width, spec.mlp_hidden
    attention = Cost(2 * n * n * d, 0, spec.heads * n * n + n * d)  # QKᵀ then AV, over all heads
    return (Cost(0, 4 * d, 0)  # two LayerNorms
            + linear_cost(n, d, 3 * d) + attention + linear_cost(n, d, d)
            + linear_cost(n, d, h) + linear_cost(n, h, d))


def model_cost(spec: ViTSpec) -> Cost:
    d = spec.width
    embeddings = Cost(0, spec.num_tokens * d + (d if spec.classifier == "token" else 0), 0)
    blocks = block_cost(spec) * spec.depth
    head = Cost(0, 2 * d, 0) + linear_cost(1, d, spec.num_classes)
    return stem_cost(spec) + embeddings + blocks + head

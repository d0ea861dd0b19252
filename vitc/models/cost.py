"""Closed-form cost of a ViTSpec, counted from its layer structure (structure.py): torch-free.

Flops, params and activations follow pycls's `complexity()` (branch `vitconfigs`, commit 206d0db,
`pycls/models/blocks.py` and `pycls/models/vit.py`): one multiply-add is one flop; conv, linear and
the two attention products (QKᵀ and AV) count; norms, activations and softmax do not. Parameters
and activations (the elements of every conv, linear and attention output) equal pycls's exactly.
Flops differ by one convention: pycls also counts a conv's or linear's bias additions (one per
output element, `bias_additions`), vitc does not, as fvcore does not (the audit's independent trace).

`saved_elements` is the other count the structure gives: what autograd keeps per image for backward,
which `vitc plan` turns into activation memory (vitc/plan/activations.py).
"""

from dataclasses import dataclass

from vitc.models.spec import ViTSpec
from vitc.models.structure import NORMS_PER_BLOCK, ConvLayer, block_shape, stem_layers


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


def conv_cost(layer: ConvLayer, size: int) -> tuple[Cost, int]:
    """Cost of `layer` (with its norm's affine weight and bias) on a size×size input, and its
    output size."""
    out = layer.out_size(size)
    weights = layer.c_out * layer.c_in * layer.kernel**2
    params = weights + (layer.c_out if layer.bias else 0) + (2 * layer.c_out if layer.norm else 0)
    return Cost(out * out * weights, params, out * out * layer.c_out), out


def stem_cost(spec: ViTSpec) -> Cost:
    total, size = ZERO, spec.image_size
    for layer in stem_layers(spec):
        cost, size = conv_cost(layer, size)
        total += cost
    return total


def linear_cost(tokens: int, d_in: int, d_out: int) -> Cost:
    return Cost(tokens * d_in * d_out, d_in * d_out + d_out, tokens * d_out)


def block_cost(spec: ViTSpec) -> Cost:
    n, d = spec.num_tokens, spec.width
    shape = block_shape(spec)
    linears = [linear_cost(n, d_in, d_out) for d_in, d_out in shape.linears.values()]
    attention = Cost(2 * n * n * d, 0, shape.heads * n * n + n * d)  # QKᵀ then AV, over all heads
    return sum(linears, Cost(0, 2 * d * NORMS_PER_BLOCK, 0)) + attention


def model_cost(spec: ViTSpec) -> Cost:
    d = spec.width
    embeddings = Cost(0, spec.num_tokens * d + (d if spec.classifier == "token" else 0), 0)
    blocks = block_cost(spec) * spec.depth
    head = Cost(0, 2 * d, 0) + linear_cost(1, d, spec.num_classes)  # final LN, then the classifier
    return stem_cost(spec) + embeddings + blocks + head


def bias_additions(spec: ViTSpec) -> int:
    """The additions of every conv and linear bias: what pycls's complexity() counts in flops beyond
    `model_cost` (its flops = model_cost(spec).flops + bias_additions(spec))."""
    total, size = 0, spec.image_size
    for layer in stem_layers(spec):
        size = layer.out_size(size)
        total += layer.c_out * size * size if layer.bias else 0
    block = spec.num_tokens * sum(d_out for _, d_out in block_shape(spec).linears.values())
    return total + spec.depth * block + spec.num_classes


@dataclass(frozen=True)
class SavedElements:
    """Elements autograd keeps per image from forward to backward.

    With n tokens, width d, MLP hidden h, H heads; `block`, `stem`, `head` and `working` are in the
    activation dtype (DeepSpeed's bf16 mode runs the whole model in bf16), the `*_fp32` ones in fp32:

      stem        each conv keeps its input (the image, then each ReLU output), each BatchNorm its
                  input (the conv's output); the patchify stem keeps the image only
      block       n·(8d + 2h): each linear's input (qkv d, proj d, fc1 d, fc2 h), each LN's input
                  (2d), q, k, v (3d; scaled_dot_product_attention keeps them; its output is proj's
                  input: the fused kernels lay it out token-major, so merging the heads is a view),
                  GELU's input h; fp32: each LN's mean and rstd (4n) and the attention's logsumexp H·n
      head        final LN input n·d (+2n fp32 stats), the classifier's input d, log-softmax output C
      working     during backward, the gradients in flight: n·max(2h + 2d, 6d)
      block_input what activation checkpointing (per block) keeps instead of `block`: n·d

    Not counted: a fused attention kernel's workspace, an attention that falls back to the math path
    (which keeps the H·n·n map), the soft targets of MixUp/CutMix (C per image).
    """

    stem: int
    block: int
    block_fp32: int
    block_input: int
    head: int
    head_fp32: int
    working: int


def saved_elements(spec: ViTSpec) -> SavedElements:
    n, d, h = spec.num_tokens, spec.width, spec.mlp_hidden
    shape = block_shape(spec)
    stem, size = 0, spec.image_size
    for layer in stem_layers(spec):
        stem += layer.c_in * size * size  # the conv's input
        size = layer.out_size(size)
        stem += layer.c_out * size * size if layer.norm else 0  # the norm's input
    linear_inputs = sum(d_in for d_in, _ in shape.linears.values())
    qkv, gelu_input = shape.linears["attn.qkv"][1], shape.linears["mlp.fc1"][1]
    block = n * (linear_inputs + NORMS_PER_BLOCK * d + qkv + gelu_input)
    block_fp32 = n * (2 * NORMS_PER_BLOCK + shape.heads)
    return SavedElements(stem=stem, block=block, block_fp32=block_fp32, block_input=n * d,
                         head=n * d + d, head_fp32=2 * n + spec.num_classes,
                         working=n * max(2 * h + 2 * d, 6 * d))


def largest_layer_params(spec: ViTSpec) -> int:
    """Parameters of the module holding the most (what DeepSpeed's ZeRO-3 estimator asks for):
    a stem conv, a block's linear, the classifier, or the position embedding and class token."""
    d = spec.width
    root = spec.num_tokens * d + (d if spec.classifier == "token" else 0)
    stem = max(c.c_out * c.c_in * c.kernel**2 + (c.c_out if c.bias else 0) for c in stem_layers(spec))
    block = max(d_in * d_out + d_out for d_in, d_out in block_shape(spec).linears.values())
    return max(root, stem, block, d * spec.num_classes + spec.num_classes)

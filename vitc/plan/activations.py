"""Activation memory of one micro-batch: what autograd saves for backward, from the model's structure.

Per image, with n tokens, width d, MLP hidden h, H heads, elements in the activation dtype
(bf16/fp16: 2 bytes, fp32: 4; DeepSpeed's bf16 mode runs the whole model in bf16):

  block      n·(8d + 2h): LN1 input d, qkv input d, q,k,v 3d (SDPA saves them), SDPA output d
             (also proj's input: the fused kernels lay it out token-major, so merging the heads
             is a view), LN2 input d, fc1 input d, GELU input h, fc2 input h;
             plus fp32: LN mean/rstd 4n, SDPA logsumexp H·n
  conv stem  the image 3·S² (the first conv keeps its input), then per 3×3 conv of c channels
             at s×s: its output (BatchNorm's input) c·s² and the ReLU output c·s² (the next
             conv's input); patchify stem: the image only
  head       final LN input n·d (+2n fp32 stats), the class token d, log-softmax output C
  working    during backward, the gradients in flight: n·max(2h + 2d, 6d)

With activation checkpointing (non-reentrant, per block) only each block's input n·d is kept;
backward recomputes one block at a time, so one block's full set is added back.

Where this is approximate: a fused attention kernel's internal workspace and an attention that
falls back to the math path (which saves the H·n·n attention map) are not counted; the loss's
soft targets (MixUp/CutMix) add C per image; the allocator's fragmentation is not modelled.
"""

from dataclasses import dataclass

from vitc.models.vit import ViTSpec
from vitc.plan.memory import PARAM_BYTES

FP32 = 4


@dataclass(frozen=True)
class Activations:
    """Bytes per GPU for one micro-batch."""

    saved: int  # tensors autograd keeps from forward to backward
    recomputed: int  # checkpointing: one block's tensors, rebuilt during backward
    working: int  # gradients in flight during backward (transient, at the peak)

    @property
    def total(self) -> int:
        return self.saved + self.recomputed + self.working


def block_elements(spec: ViTSpec) -> tuple[int, int]:
    """(elements in the activation dtype, fp32 elements) one block saves per image."""
    n, d, h = spec.num_tokens, spec.width, spec.mlp_hidden
    return n * (8 * d + 2 * h), 4 * n + spec.heads * n


def stem_elements(spec: ViTSpec) -> int:
    """Elements the stem saves per image."""
    total, size = 3 * spec.image_size**2, spec.image_size
    if spec.stem == "conv":
        for channels, stride in zip(spec.stem_channels, spec.stem_strides):
            size = -(-size // stride)
            total += 2 * channels * size * size
    return total


def head_elements(spec: ViTSpec) -> tuple[int, int]:
    """(activation-dtype elements, fp32 elements) of the final norm, head and loss per image."""
    return spec.num_tokens * spec.width + spec.width, 2 * spec.num_tokens + spec.num_classes


def working_elements(spec: ViTSpec) -> int:
    n, d, h = spec.num_tokens, spec.width, spec.mlp_hidden
    return n * max(2 * h + 2 * d, 6 * d)


def activation_memory(spec: ViTSpec, micro_batch: int, precision: str,
                      checkpointing: bool) -> Activations:
    """Saved and in-flight activation bytes of `micro_batch` images (module docstring)."""
    a = PARAM_BYTES[precision]
    block_low, block_fp32 = block_elements(spec)
    head_low, head_fp32 = head_elements(spec)
    block_bytes = block_low * a + block_fp32 * FP32
    kept_per_block = spec.num_tokens * spec.width * a if checkpointing else block_bytes
    saved = stem_elements(spec) * a + spec.depth * kept_per_block + head_low * a + head_fp32 * FP32
    recomputed = block_bytes if checkpointing else 0
    return Activations(saved * micro_batch, recomputed * micro_batch,
                       working_elements(spec) * a * micro_batch)

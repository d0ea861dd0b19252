"""Activation memory of one micro-batch: the elements autograd saves per image (counted from the
model's structure by vitc.models.cost.saved_elements, which lists each one) in bytes.

With activation checkpointing (non-reentrant, per block) only each block's input n·d is kept;
backward recomputes one block at a time, so one block's full set is added back. The allocator's
fragmentation is not modelled.
"""

from dataclasses import dataclass

from vitc.models.cost import saved_elements
from vitc.models.spec import ViTSpec
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


def activation_memory(spec: ViTSpec, micro_batch: int, precision: str,
                      checkpointing: bool) -> Activations:
    """Saved and in-flight activation bytes of `micro_batch` images in `precision` (bf16/fp16: 2
    bytes an element, fp32: 4; the norms' statistics and the log-softmax stay fp32)."""
    a = PARAM_BYTES[precision]
    e = saved_elements(spec)
    block_bytes = e.block * a + e.block_fp32 * FP32
    kept_per_block = e.block_input * a if checkpointing else block_bytes
    saved = e.stem * a + spec.depth * kept_per_block + e.head * a + e.head_fp32 * FP32
    recomputed = block_bytes if checkpointing else 0
    return Activations(saved * micro_batch, recomputed * micro_batch, e.working * a * micro_batch)

"""ZeRO's communication per GPU per optimizer step, and its time on the stated links.

Ring collectives over N ranks move (N-1)/N of the buffer per GPU for a reduce-scatter or an
all-gather, and twice that for an all-reduce (ZeRO paper, Rajbhandari et al. 2020, §7). What
DeepSpeed runs per optimizer step with `accum` micro-batches, Ψ = parameters, b = bytes of the
16-bit (or fp32) gradients and parameters:

  stage 0, 1  all-reduce of the gradients once, at the accumulation boundary   2·Ψ·b·(N-1)/N
  stage 2     reduce-scatter of the gradients every micro-batch (they are accumulated in the
              partition), all-gather of the updated parameters once      (accum + 1)·Ψ·b·(N-1)/N
  stage 3     every micro-batch: all-gather of the parameters in forward and again in backward,
              reduce-scatter of the gradients                             3·accum·Ψ·b·(N-1)/N

Assumption (stated beside every result): a collective that spans nodes runs at the per-GPU
inter-node bandwidth (the slowest link of the ring); within one node at the intra-node bandwidth;
latency and NCCL's protocol overheads are ignored.
"""

from dataclasses import dataclass

from vitc.plan.gpus import GpuSpec
from vitc.plan.memory import PARAM_BYTES


@dataclass(frozen=True)
class CommVolume:
    """Bytes each GPU sends per optimizer step, by collective."""

    all_reduce: int
    reduce_scatter: int
    all_gather: int

    @property
    def total(self) -> int:
        return self.all_reduce + self.reduce_scatter + self.all_gather


def zero_comm_volume(params: int, stage: int, precision: str, world_size: int, accum: int = 1) -> CommVolume:
    """Per-GPU bytes of the collectives ZeRO `stage` runs in one optimizer step (module table)."""
    if world_size == 1:
        return CommVolume(0, 0, 0)
    one = params * PARAM_BYTES[precision] * (world_size - 1) // world_size
    if stage in (0, 1):
        return CommVolume(2 * one, 0, 0)
    if stage == 2:
        return CommVolume(0, accum * one, one)
    return CommVolume(0, accum * one, 2 * accum * one)


def link_bandwidth(gpu: GpuSpec, nodes: int) -> float:
    """Bytes/s per GPU for a collective over all ranks: inter-node as soon as it spans nodes."""
    return (gpu.inter_node_gbps if nodes > 1 else gpu.intra_node_gbps) * 1e9


def comm_time(volume: CommVolume, gpu: GpuSpec, nodes: int) -> float:
    return volume.total / link_bandwidth(gpu, nodes) if volume.total else 0.0

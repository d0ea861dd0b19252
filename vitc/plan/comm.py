"""Gradient and parameter traffic per GPU per optimizer step, as DeepSpeed runs it, and its time.

Ring collectives over N ranks move (N-1)/N of the buffer per GPU for a reduce-scatter or an
all-gather, and twice that for an all-reduce (ZeRO paper, Rajbhandari et al. 2020, §7). What runs
per optimizer step with `accum` micro-batches, Ψ = parameters, g = bytes of the reduction dtype,
p = bytes of the parameters' dtype (vitc/plan/deepspeed_model.py says which applies and why):

  no ZeRO optimizer (ZeRO-0, BF16_Optimizer)   all-reduce of the gradients after backward   2·Ψ·g
  ZeRO-1 (DeepSpeedZeroOptimizer)   reduce to the owners once + all-gather of the updated params  Ψ·g + Ψ·p
  ZeRO-2   reduce-scatter every micro-batch + all-gather of the updated params     accum·Ψ·g + Ψ·p
  ZeRO-3   every micro-batch: all-gather in forward and in backward, reduce-scatter  accum·(2·Ψ·p + Ψ·g)
  (each × (N-1)/N)

What can hide behind compute: reductions from backward hooks with `overlap_comm` (behind
backward: the last micro-batch's at ZeRO-1, every one at ZeRO-2/3), except each backward's last
bucket, reduced after backward ends; ZeRO-3's prefetched gathers (behind forward and backward).
The all-gather after the optimizer step and every all-reduce after backward are exposed.

Assumption (stated beside every result): NCCL's rings, one per network rail. Within one node a
GPU's share moves at the intra-node bandwidth. Once the job spans nodes, of the G GPUs of a node
each ring leaves the node from one GPU only: a GPU sends 1 of its G hops over the network and the
other G-1 over NVLink, and the node's G rails carry the G rings together. Its share therefore moves
at min(G × the per-GPU network share, G/(G-1) × the intra-node bandwidth): 400 GB/s for 8 H100s
on 8 × 400 Gb/s, where charging the whole share to one GPU's 50 GB/s rail would make every step's
traffic 8× slower than NCCL runs it. Latency and NCCL's protocol overheads are ignored.
"""

from dataclasses import dataclass

from vitc.plan.deepspeed_model import DTYPE_BYTES, DeepSpeedModel
from vitc.plan.gpus import GpuSpec

BACKWARD_SHARE = 2 / 3  # backward ≈ 2× forward of the 3× forward a training step costs


@dataclass(frozen=True)
class CommVolume:
    """Bytes each GPU sends per optimizer step, by collective, and how much of it can hide."""

    all_reduce: int
    reduce_scatter: int
    all_gather: int
    hideable: int = 0  # bytes that can run while compute goes on
    window_share: float = 0.0  # the share of the step's compute they can hide behind

    @property
    def total(self) -> int:
        return self.all_reduce + self.reduce_scatter + self.all_gather

    @property
    def exposed(self) -> int:
        """Bytes that travel while the GPU computes nothing."""
        return self.total - self.hideable


def comm_volume(params: int, ds: DeepSpeedModel, world_size: int, accum: int = 1) -> CommVolume:
    """Per-GPU bytes of the collectives DeepSpeed runs in one optimizer step (module table)."""
    if world_size == 1:
        return CommVolume(0, 0, 0)
    share = lambda elements, dtype: elements * DTYPE_BYTES[dtype] * (world_size - 1) // world_size
    grads, gather = share(params, ds.comm_dtype), share(params, ds.param_dtype)
    if not ds.zero_optimizer:
        return CommVolume(2 * grads, 0, 0)
    # the bucket that fills last is reduced after backward: a bucket as large as the model hides nothing
    tail = share(min(params, ds.reduce_bucket_size), ds.comm_dtype)
    hidden_grads = grads - tail if ds.reduction_overlaps_backward else 0
    if ds.stage == 1:
        return CommVolume(0, grads, gather, hidden_grads, BACKWARD_SHARE / accum)
    if ds.stage == 2:
        return CommVolume(0, accum * grads, gather, accum * hidden_grads, BACKWARD_SHARE)
    gathers = 2 * accum * gather
    return CommVolume(0, accum * grads, gathers, gathers + accum * hidden_grads, 1.0)


def link_bandwidth(gpu: GpuSpec, nodes: int, gpus_per_node: int) -> float:
    """Bytes/s at which a collective over all ranks moves each GPU's share (module docstring)."""
    if nodes == 1:
        return gpu.intra_node_gbps * 1e9
    network = gpus_per_node * gpu.inter_node_gbps
    if gpus_per_node == 1:
        return network * 1e9
    return min(network, gpu.intra_node_gbps * gpus_per_node / (gpus_per_node - 1)) * 1e9


def comm_time(volume: CommVolume, gpu: GpuSpec, nodes: int, gpus_per_node: int) -> float:
    return volume.total / link_bandwidth(gpu, nodes, gpus_per_node) if volume.total else 0.0


@dataclass(frozen=True)
class StepTime:
    """A step split into what users compare: compute, communication nothing hides, data wait."""

    compute_s: float
    exposed_comm_s: float
    data_wait_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.exposed_comm_s + self.data_wait_s


def step_time(compute_s: float, volume: CommVolume, gpu: GpuSpec, nodes: int, gpus_per_node: int,
              overlap: bool = True) -> StepTime:
    """Compute plus the communication compute cannot hide (`overlap=False`: none hides)."""
    bandwidth = link_bandwidth(gpu, nodes, gpus_per_node)
    if not overlap:
        return StepTime(compute_s, volume.total / bandwidth)
    hideable_s = volume.hideable / bandwidth
    exposed_s = volume.exposed / bandwidth + max(0.0, hideable_s - volume.window_share * compute_s)
    return StepTime(compute_s, exposed_s)

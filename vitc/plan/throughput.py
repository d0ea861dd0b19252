"""Time of a training step and of a run, from the audit's flops at a stated MFU.

The audit counts one multiply-add as one flop (the paper's convention); GPU datasheets count it as
two. A training step costs 3× the forward (backward ≈ 2× forward), so one image costs
3·F multiply-adds = 6·F datasheet flops. MFU counts model flops only: activation checkpointing's
recomputed forward lowers the MFU a run reaches, it is not added here.
"""

import math
from dataclasses import dataclass

from vitc.errors import VitcError

TRAIN_FACTOR = 3  # forward + backward (≈ 2× forward)
FLOPS_PER_MULTIPLY_ADD = 2


def train_flops_per_step(forward_flops: int, global_batch: int) -> int:
    """Multiply-adds (audit convention) of one optimizer step over all GPUs: 3 × forward × batch."""
    return TRAIN_FACTOR * forward_flops * global_batch


def compute_time(forward_flops: int, images_per_gpu: int, peak_flops: float, mfu: float) -> float:
    """Seconds for one GPU to run forward+backward on `images_per_gpu` images at `mfu` of peak."""
    if not 0.0 < mfu <= 1.0:
        raise VitcError(f"--mfu must be in (0, 1], got {mfu}")
    return train_flops_per_step(forward_flops, images_per_gpu) * FLOPS_PER_MULTIPLY_ADD / (peak_flops * mfu)


def step_time(compute_s: float, comm_s: float, overlap: bool, zero_stage: int) -> float:
    """Compute plus the communication that compute cannot hide.

    Overlapped (DeepSpeed's overlap_comm), gradient reductions hide behind backward (2/3 of the
    compute); ZeRO-3 also prefetches the parameter gathers during forward, so all of it can hide.
    """
    if not overlap:
        return compute_s + comm_s
    window = compute_s if zero_stage == 3 else compute_s * 2 / TRAIN_FACTOR
    return compute_s + max(0.0, comm_s - window)


@dataclass(frozen=True)
class RunTime:
    """A run of `epochs` epochs over `dataset_size` images (the trainer drops the last partial step)."""

    images_per_s: float
    steps_per_epoch: int
    epoch_s: float
    total_s: float
    gpu_hours: float


def run_time(step_s: float, global_batch: int, world_size: int, dataset_size: int | None,
             epochs: int) -> RunTime:
    images_per_s = global_batch / step_s
    if dataset_size is None:
        return RunTime(images_per_s, 0, math.nan, math.nan, math.nan)
    steps = dataset_size // global_batch
    if steps < 1:
        raise VitcError(f"the dataset of {dataset_size} images is smaller than one global batch of "
                        f"{global_batch}: no step would run")
    epoch_s = steps * step_s
    total_s = epochs * epoch_s
    return RunTime(images_per_s, steps, epoch_s, total_s, total_s / 3600 * world_size)

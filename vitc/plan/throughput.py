"""Time of a training step and of a run, from the audit's flops at a stated MFU; the CPU cores
the train loader needs to keep up (vitc/resources/loader_rates.yaml).

The audit counts one multiply-add as one flop (the paper's convention); GPU datasheets count it as
two. A training step costs 3× the forward (backward ≈ 2× forward), so one image costs
3·F multiply-adds = 6·F datasheet flops. MFU counts model flops only: activation checkpointing's
recomputed forward lowers the MFU a run reaches, it is not added here.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from vitc.config import read_yaml
from vitc.errors import VitcError
from vitc.resources import resource

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


DEFAULT_LOADER_FILE = resource("loader_rates.yaml")


@dataclass(frozen=True)
class LoaderNeed:
    """CPU cores per node the train loader needs to keep the node's GPUs fed."""

    gpu_images_per_s: float  # per node, what the GPUs consume at the planned step time
    per_core: float  # loader images/s per CPU core
    source: str  # where `per_core` comes from
    node_cores: int | None  # cores a node has (None: not known for this GPU)

    @property
    def cores(self) -> float:
        return self.gpu_images_per_s / self.per_core

    @property
    def enough(self) -> bool:
        return self.node_cores is None or self.cores <= self.node_cores


def _rates_table(path: Path) -> dict:
    data = read_yaml(path, "loader rate table")
    if not isinstance(data, dict) or not isinstance(data.get("images_per_core"), dict) \
            or not isinstance(data.get("node_cores", {}), dict):
        raise VitcError(f"{path}: expected 'images_per_core: {{IMAGE_SIZE: {{RECIPE: IMAGES_PER_S}}}}', "
                        "'node_cores: {GPU: CORES}' and 'source'")
    return data


def loader_need(gpu_images_per_s: float, gpu: str, image_size: int, recipe: str,
                per_core: float | None = None, node_cores: int | None = None,
                path: str | Path = DEFAULT_LOADER_FILE) -> LoaderNeed:
    """Cores per node for `gpu_images_per_s` (per node) at the loader's measured rate for the run's
    resolution and augmentation recipe, or at the user's own `per_core` (`vitc bench data`)."""
    path = Path(path)
    table = _rates_table(path)
    cores = node_cores if node_cores is not None else table.get("node_cores", {}).get(gpu)
    if per_core is not None:
        if per_core <= 0:
            raise VitcError(f"--loader-rate must be a positive images/s per core, got {per_core}")
        return LoaderNeed(gpu_images_per_s, per_core, "--loader-rate (your `vitc bench data`)", cores)
    sizes = table["images_per_core"]
    size = min(sizes, key=lambda s: abs(int(s) - image_size))  # the nearest measured resolution
    rates = sizes[size] or {}
    if recipe not in rates:
        raise VitcError(f"{path}: no measured loader rate for data.auto_augment={recipe} "
                        f"(measured: {', '.join(rates)}); pass --loader-rate with your `vitc bench data` figure")
    where = f"{size} px" if int(size) == image_size else f"{size} px (nearest to the run's {image_size} px)"
    return LoaderNeed(gpu_images_per_s, float(rates[recipe]),
                      f"{path.name}: {recipe} at {where}, {table.get('source', 'source not given')}", cores)

"""Precise BatchNorm statistics: re-estimate BN running statistics over training images before
every evaluation, for the model and for its EMA.

The authors' default (pycls branch `vitconfigs`, commit 206d0db: `pycls/core/config.py`
BN.USE_PRECISE_STATS True, BN.NUM_SAMPLES_PRECISE 8192; `pycls/core/trainer.py` calls
`net.compute_precise_bn_stats` on the model and on the EMA after every training epoch, before
testing). As pycls does, the images come from the training loader (its augmentation included;
MixUp/CutMix are left out because pycls applies them in the training loop, not in its loader),
and the model runs in training mode.

pycls averages each batch's BN mean and variance over the batches. Here every rank takes its share
of the images (every rank the same number of batches: under ZeRO-3 a forward is a collective), and
each BN layer's input is summed per channel (count, Σx, Σx²), those sums are added over ranks with
one all_reduce, and running_mean / running_var become the exact mean and (unbiased) variance over
all the images: what one batch holding all of them would give, whichever way they are split over
batches and ranks. (In training mode a BN layer normalises with its batch's own statistics, so a
deeper layer's input still depends on how the images were batched; pycls's estimate does too.)
ZeRO-3: the forward gathers parameters as in training; BN buffers are whole on every rank.
"""

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
import torch.distributed as tdist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreciseBNCost:
    images: int  # over all ranks
    seconds: float


def has_batchnorm(spec) -> bool:
    """Whether the model `spec` describes has BatchNorm: its conv stem's 3×3 layers (models.structure)."""
    from vitc.models.structure import stem_layers

    return any(layer.norm == "batch" for layer in stem_layers(spec))


def precise_bn_loader(cfg, run, dist):
    """The training loader's images for precise BN: its augmentation, without MixUp/CutMix, which
    pycls applies in its training loop (`pycls/core/trainer.py`), not in the loader it passes to
    `compute_precise_bn_stats`."""
    from vitc.data.loading.loader import build_train_loader

    unmixed = replace(cfg, data=replace(cfg.data, mixup_alpha=0.0, cutmix_alpha=0.0))
    return build_train_loader(unmixed, run, dist)


def batches_per_rank(samples: int, micro_batch: int, world_size: int, available: int) -> int:
    """pycls: int(NUM_SAMPLES_PRECISE / batch per GPU / GPUs), at most one epoch; at least one batch."""
    return max(1, min(samples // (micro_batch * world_size), available))


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable, prepare: Callable) -> PreciseBNCost | None:
    """Set every BatchNorm's running_mean/running_var of `model` to the statistics of its inputs
    over `batches` (images, targets) of every rank; None when the model has no BatchNorm.
    `prepare(images, dtype)` moves a batch to the model's device/layout and `dtype`. Every rank."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and not getattr(m, "frozen_statistics", False)]  # a frozen BN (train.freeze) keeps its own
    if not norms:
        return None  # no collective below: every rank has the same model
    started = time.perf_counter()
    sums = [torch.zeros(1 + 2 * n.num_features, dtype=torch.float64, device=n.running_mean.device)
            for n in norms]
    hooks = [n.register_forward_pre_hook(_accumulate_into(s)) for n, s in zip(norms, sums)]
    modes = {m: m.training for m in model.modules()}  # restored one by one (a frozen BN stays in eval)
    model.train()
    dtype, images = next(model.parameters()).dtype, 0
    try:
        for batch, _targets in batches:
            batch = prepare(batch, dtype)
            model(batch)
            images += len(batch)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    total = torch.cat([*sums, torch.tensor([float(images)], dtype=torch.float64, device=sums[0].device)])
    if tdist.is_initialized():
        tdist.all_reduce(total)  # one collective for every layer's sums and the image count
    for norm, stats in zip(norms, total.split([len(s) for s in sums] + [1])):
        count, mean_sum, square_sum = stats[0], *stats[1:].view(2, -1)
        mean = mean_sum / count
        var = (square_sum - count * mean * mean) / (count - 1)  # unbiased, as BN's running_var
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
    return PreciseBNCost(int(total[-1]), time.perf_counter() - started)


def _accumulate_into(sums: torch.Tensor) -> Callable:
    """A forward pre-hook adding [count, Σx per channel, Σx² per channel] of the BN's input."""
    def hook(_module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        sums[0] += x.numel() // x.shape[1]
        sums[1:].view(2, -1)[0] += x.sum(dims, dtype=torch.float64)
        sums[1:].view(2, -1)[1] += x.square().sum(dims, dtype=torch.float64)
    return hook


def precise_bn(models: dict[str, Callable], loader, epoch: int, batches: int, prepare: Callable) -> None:
    """Recompute the BN statistics of each model over the first `batches` batches of `loader`'s
    `epoch` (the same images for each), logging the cost. `models`: name -> context manager giving
    the module (the EMA under ZeRO-3 is swapped into the engine for the time). Every rank."""
    for name, applied in models.items():
        loader.set_epoch(epoch + 1)  # another epoch forgets the position reached in this one:
        loader.set_epoch(epoch)  # each model sees the epoch's first batches
        with applied() as model:
            cost = recompute_bn_stats(model, itertools.islice(loader, batches), prepare)
        if cost is not None:
            log.info("precise BN statistics of the %s: %d training images in %.1f s", name,
                     cost.images, cost.seconds)

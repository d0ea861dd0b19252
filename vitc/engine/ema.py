"""Exponential moving average of the weights: the authors' rule, full under ZeRO 0-2, sharded under ZeRO-3.

The rule (pycls branch `vitconfigs`, commit 206d0db, `pycls/core/net.py`, `update_model_ema`):
after the optimizer step of iteration `cur_iter` (0-based, within the epoch), when
cur_iter % period == 0, every entry of the state dict (buffers included) becomes
ema × (1 − alpha) + weight × alpha, with alpha = min(1, EMA_ALPHA × batch / epochs × period)
(batch: pycls's TRAIN.BATCH_SIZE, the global batch), and alpha = 1 (a copy) while
cur_epoch < WARMUP_EPOCHS. The paper evaluates this EMA in all its experiments (§5.4, "For
inference, we use an exponential moving average (EMA) of the model weights").

"Iteration" is one optimizer step at the global batch, counted within the epoch as pycls counts
it: so the updates fall where the authors' fall (the first step of every epoch included) whatever
the number of steps per epoch, and the first update after warmup averages from the last copy.
Integer buffers (BatchNorm's num_batches_tracked) are copied; pycls writes the average back into
the integer tensor, and evaluation never reads them.

What is averaged is the fp32 master weights at every stage and precision: vitc trains fp32
parameters under autocast (vitc/deepspeed_config.py), so the module's parameters are the masters
(ZeRO 1-2 copy the optimizer's fp32 partitions into them bit for bit after each step) and ZeRO-3's
partition `ds_tensor` is the very tensor the optimizer updates (stage3.py aliases its fp32 group
to the parameters' partitions when their dtypes agree); never a bf16 working copy.

ZeRO 0-2 (`ModelEMA`): parameters are whole on every rank, so every rank keeps the same full fp32
copy (4 bytes per parameter) and evaluates it as a plain model. ZeRO-3 (`ShardedEMA`): each rank
keeps an fp32 copy of its own partition of every parameter (DeepSpeed's `param.ds_tensor`, 4Ψ/N
bytes) and updates it from that partition without any communication; buffers are kept whole.
"""

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from vitc.checkpoint.ema_files import EMA_FILE, SHARD_FILE, full_ema_state
from vitc.fileio import atomic_write_bytes


@dataclass(frozen=True)
class EMARule:
    """When and how much the EMA moves (pycls `update_model_ema`)."""

    alpha: float  # optim.ema_alpha (pycls OPTIM.EMA_ALPHA)
    period: int  # optim.ema_update_period (pycls OPTIM.EMA_UPDATE_PERIOD)
    global_batch: int
    epochs: int
    warmup_epochs: float

    def weight(self, epoch: int, iter_in_epoch: int) -> float | None:
        """The weight of the training weights in the update after this iteration; None: no update."""
        if iter_in_epoch % self.period:
            return None
        if epoch < self.warmup_epochs:
            return 1.0
        return min(1.0, self.alpha * self.global_batch / self.epochs * self.period)


def ema_rule(cfg, global_batch: int) -> EMARule | None:
    """The run's rule from optim.ema_alpha / ema_update_period and the schedule; None: EMA off."""
    if cfg.optim.ema_alpha <= 0:
        return None
    return EMARule(cfg.optim.ema_alpha, cfg.optim.ema_update_period, global_batch, cfg.schedule.epochs,
                   cfg.schedule.warmup_epochs)


def _average(mine: torch.Tensor, theirs: torch.Tensor, weight: float) -> None:
    """mine = mine × (1 − weight) + theirs × weight, pycls's arithmetic (integers: copied)."""
    if mine.is_floating_point():
        mine.mul_(1.0 - weight).add_(theirs.detach().to(mine.device, torch.float32) * weight)
    else:
        mine.copy_(theirs)


class ModelEMA:
    """ZeRO 0-2: a full fp32 copy of the model, averaged towards the training weights."""

    def __init__(self, model: nn.Module, rule: EMARule):
        # a copy taken before deepspeed.initialize, in fp32 whatever the training precision
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.rule = rule

    @torch.no_grad()
    def update(self, module: nn.Module, epoch: int, iter_in_epoch: int) -> None:
        """Average towards `module` (the engine's) after iteration `iter_in_epoch` of `epoch`."""
        weight = self.rule.weight(epoch, iter_in_epoch)
        if weight is None:
            return
        theirs = module.state_dict()
        for key, mine in self.model.state_dict().items():
            _average(mine, theirs[key], weight)

    @contextmanager
    def applied(self, engine) -> Iterator[nn.Module]:
        """The EMA as a module to evaluate (or to re-estimate BN statistics of, in place)."""
        yield self.model

    def save(self, tag_dir: Path, rank: int, world_size: int) -> None:
        """Write the EMA weights as safetensors (no pickle): rank 0 writes, every rank calls this."""
        if rank == 0:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            atomic_write_bytes(tag_dir / EMA_FILE, safetensors_bytes(state))

    def load(self, tag_dir: Path, rank: int, world_size: int) -> None:
        """Restore the EMA of a checkpoint saved at any stage and world size."""
        device = next(self.model.parameters()).device
        self.model.load_state_dict({k: v.to(device) for k, v in full_ema_state(tag_dir).items()})


class ShardedEMA:
    """ZeRO-3: the fp32 EMA of this rank's partition of every parameter, whole buffers."""

    def __init__(self, module: nn.Module, rule: EMARule):
        # taken after deepspeed.initialize partitioned `module`: ds_tensor is this rank's flat slice
        self.rule = rule
        self.shards = {k: p.ds_tensor.detach().float().clone() for k, p in module.named_parameters()}
        self.shapes = {k: list(p.ds_shape) for k, p in module.named_parameters()}  # for export
        self.buffers = {k: b.detach().clone().float() if b.is_floating_point() else b.detach().clone()
                        for k, b in module.named_buffers()}

    @torch.no_grad()
    def update(self, module: nn.Module, epoch: int, iter_in_epoch: int) -> None:
        """Average towards this rank's partitions of `module`: no communication."""
        weight = self.rule.weight(epoch, iter_in_epoch)
        if weight is None:
            return
        for key, param in module.named_parameters():
            _average(self.shards[key], param.ds_tensor, weight)
        for key, buffer in module.named_buffers():
            _average(self.buffers[key], buffer, weight)

    @contextmanager
    def applied(self, engine) -> Iterator[nn.Module]:
        """The engine with the EMA in place of its weights, restored bit for bit on exit; BN
        statistics recomputed inside are kept in the EMA. Memory: one copy of this rank's partition
        (the weights set aside), plus what a training forward gathers. Every rank (a collective)."""
        module = engine.module
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        kept_params = {k: p.ds_tensor.detach().clone() for k, p in params.items()}
        kept_buffers = {k: b.detach().clone() for k, b in buffers.items()}
        with torch.no_grad():
            self._write(params, buffers, self.shards, self.buffers)
            try:
                yield engine
            finally:
                for key, buffer in buffers.items():
                    self.buffers[key].copy_(buffer)
                self._write(params, buffers, kept_params, kept_buffers)

    @staticmethod
    def _write(params: dict, buffers: dict, shards: dict, whole: dict) -> None:
        """Write partitions and buffers into the engine's module. Parameters DeepSpeed keeps gathered
        (`ds_persist`, small ones) are re-gathered from their new partitions."""
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        for key, param in params.items():
            param.ds_tensor.data.copy_(shards[key])
        for key, buffer in buffers.items():
            buffer.copy_(whole[key])
        gathered = [p for p in params.values() if p.ds_status == ZeroParamStatus.AVAILABLE]
        if gathered:
            gathered[0].partition(param_list=gathered)
            gathered[0].all_gather(param_list=gathered)

    def save(self, tag_dir: Path, rank: int, world_size: int) -> None:
        """This rank's shard file, with the parameters' full shapes for export to join them."""
        state = {**{f"param.{k}": v.cpu() for k, v in self.shards.items()},
                 **{f"buffer.{k}": v.cpu() for k, v in self.buffers.items()}}
        atomic_write_bytes(tag_dir / SHARD_FILE.format(rank=rank, world=world_size),
                           safetensors_bytes(state, metadata={"shapes": json.dumps(self.shapes)}))

    def load(self, tag_dir: Path, rank: int, world_size: int) -> None:
        """This rank's shards: its own file when the world size is the same, else sliced from the
        whole EMA (joined from the saved shards or a ZeRO 0-2 `ema.safetensors`)."""
        own = tag_dir / SHARD_FILE.format(rank=rank, world=world_size)
        if own.is_file():
            state = load_file(str(own))
            for key, shard in self.shards.items():
                shard.copy_(state[f"param.{key}"])
            whole = {k.removeprefix("buffer."): v for k, v in state.items() if k.startswith("buffer.")}
        else:
            whole = full_ema_state(tag_dir)
            for key, shard in self.shards.items():
                flat = whole[key].reshape(-1)[rank * shard.numel():(rank + 1) * shard.numel()]
                shard.zero_()[:flat.numel()].copy_(flat)  # DeepSpeed pads the last partition
        for key, buffer in self.buffers.items():
            buffer.copy_(whole[key])

"""Exponential moving average of the weights, as pycls does it, also under ZeRO-3.

pycls (`update_model_ema`) updates every `period` iterations with
alpha = min(1, ema_alpha × batch / epochs × period) and averages buffers (BatchNorm statistics)
too. Under ZeRO-3 each rank holds only a slice of every parameter, so the update gathers the full
tensors one module at a time with `deepspeed.zero.GatheredParameters` (a collective every rank
joins; a no-op for ZeRO 0-2, whose parameters are whole on every rank). Every rank keeps the same
full fp32 EMA copy, so the EMA model can be evaluated like any plain model; it costs one fp32
model of memory per rank.
"""

import copy

import deepspeed
import torch
from safetensors.torch import save_file
from torch import nn

EMA_FILE = "ema.safetensors"  # beside each checkpoint's DeepSpeed files


class ModelEMA:
    """A full fp32 copy of a model, averaged towards the training weights."""

    def __init__(self, model: nn.Module, alpha: float, period: int, global_batch: int, epochs: int):
        # a copy taken before deepspeed.initialize, which partitions the original under ZeRO-3
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.period = max(period, 1)
        self.alpha = min(1.0, alpha * global_batch / epochs * self.period)

    def update(self, module: nn.Module, step: int) -> None:
        """Average towards `module` (the engine's) after optimizer step `step`. Every rank calls this."""
        if step % self.period:
            return
        ours = dict(self.model.named_modules())
        for name, theirs in module.named_modules():
            params = list(theirs.parameters(recurse=False))
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None), torch.no_grad():
                target = ours[name]
                for key, value in [*theirs.named_parameters(recurse=False), *theirs.named_buffers(recurse=False)]:
                    mine = getattr(target, key)
                    if mine.is_floating_point():
                        mine.lerp_(value.detach().to(mine.device, torch.float32), self.alpha)
                    else:
                        mine.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def save(self, path) -> None:
        """Write the EMA weights as safetensors (no pickle). Rank 0 only."""
        save_file(self.state_dict(), str(path))

"""Optimizer: AdamW or SGD with two parameter groups, decay and no-decay, asked of the model."""

import torch
from torch import nn

from vitc.errors import VitcError
from vitc.schema import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed params, params in `model.no_weight_decay_params()`]: the model says which skip
    weight decay (biases, norms, position embedding, class token: the paper's recipe), no name
    matching here."""
    no_decay = model.no_weight_decay_params()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = no_decay - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"no_weight_decay_params() names unknown parameters: {sorted(unknown)}")
    return [
        {"params": [p for n, p in named if n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float, on_gpu: bool,
                    groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The torch optimizer DeepSpeed wraps. Fused AdamW (one kernel for all tensors) on GPU.
    `groups` replaces the decay/no-decay groups (layer-wise lr decay: vitc/finetune.py)."""
    groups = groups or param_groups(model, optim.weight_decay)
    if optim.name == "adamw":
        fused = on_gpu if optim.fused == "auto" else optim.fused
        if fused and not on_gpu:
            raise VitcError("optim.fused=true needs a GPU (train.device); use optim.fused=auto")
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), eps=optim.eps,
                                 fused=fused or None)
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)

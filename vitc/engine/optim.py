"""Optimizer: AdamW or SGD over parameter groups asked of the model: decay and no-decay, or, when
finetuning with `finetune.layer_decay`, one pair per layer with a layer-wise lr scale (BEiT).
Parameters frozen by `train.freeze` (`freeze`) are in no group.

No weight decay on biases and norm parameters (LayerNorm, BatchNorm), and only on them: the
authors' code gives those groups wd 0 and decays everything else, the position embedding and class
token included (pycls branch `vitconfigs`, commit 206d0db, pycls/core/optimizer.py
`construct_optimizer`; BIAS/LN/BN CUSTOM_WEIGHT_DECAY 0 in the released configs).
"""

import re

import torch
from torch import nn

from vitc.config import matches_prefix
from vitc.errors import VitcError
from vitc.schema import Config, OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed params, params in `model.no_weight_decay_params()`]: the model says which skip
    weight decay (biases and norms: the authors' recipe), no name matching here."""
    no_decay = model.no_weight_decay_params()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = no_decay - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"no_weight_decay_params() names unknown parameters: {sorted(unknown)}")
    groups = [
        {"params": [p for n, p in named if n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]  # a frozen stem can empty a group


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Keep the parameters under `prefixes` (`train.freeze`) fixed; returns their names. They stop
    requiring gradients, so the groups above leave them out of the optimizer and of weight decay;
    a BatchNorm whose parameters are all frozen stays in eval mode while the model trains, so its
    running statistics stay those it was given (paper Appendix C: ViT_C-72GF's stem "frozen")."""
    frozen = [n for n, p in model.named_parameters() if matches_prefix(n, prefixes)]
    for name in frozen:
        model.get_parameter(name).requires_grad_(False)
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.BatchNorm2d) and params and not any(p.requires_grad for p in params):
            module.register_forward_pre_hook(_keep_eval)
            module.frozen_statistics = True  # precise BN leaves them alone too (vitc/engine/precise_bn.py)
    return frozen


def _keep_eval(module: nn.Module, _inputs) -> None:
    module.eval()  # model.train() sets training on every module; a frozen BN goes back before use


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """BEiT's layer numbering: stem, position embedding and class token 0; block i is i + 1; the
    final norm and the head depth + 1."""
    if name.startswith("stem.") or name in ("pos_embed", "cls_token"):
        return 0
    if match := _BLOCK.match(name):
        return int(match.group(1)) + 1
    if name.startswith(("norm.", "head.")):
        return depth + 1
    raise ValueError(f"layer_id: no layer for parameter '{name}'")


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                             lr: float | None = None) -> list[dict]:
    """Optimizer groups per (layer, decay or not): `lr_scale` = layer_decay^(depth + 1 - layer),
    and `lr` = lr × lr_scale when `lr` is given (an lr scheduler then scales each group's own lr).
    No-decay parameters are the ones the model names (`no_weight_decay_params`)."""
    if not 0.0 < layer_decay <= 1.0:
        raise VitcError(f"finetune.layer_decay: expected a factor in (0, 1], got {layer_decay}")
    depth = len(model.blocks)
    no_decay = model.no_weight_decay_params()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, decays = layer_id(name, depth), name not in no_decay
        if (layer, decays) not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[(layer, decays)] = {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                       "lr_scale": scale, **({"lr": lr * scale} if lr is not None else {})}
        groups[(layer, decays)]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def optimizer_param_groups(model: nn.Module, cfg: Config, lr: float) -> list[dict] | None:
    """The trainer's hook for the optimizer: layer-wise lr decay groups when
    `finetune.layer_decay` is set, else None (the engine's own decay/no-decay groups)."""
    if cfg.finetune.layer_decay is None:
        return None
    return layer_decay_param_groups(model, cfg.optim.weight_decay, cfg.finetune.layer_decay, lr)


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float, on_gpu: bool,
                    groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The torch optimizer DeepSpeed wraps. Fused AdamW (one kernel for all tensors) on GPU.
    `groups` replaces the decay/no-decay groups (`optimizer_param_groups`)."""
    groups = groups or param_groups(model, optim.weight_decay)
    if optim.name == "adamw":
        fused = on_gpu if optim.fused == "auto" else optim.fused
        try:  # torch >= 2.4 has a fused AdamW on the CPU too; where it has none, torch refuses here
            return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), eps=optim.eps,
                                     fused=fused or None)
        except RuntimeError as e:
            raise VitcError(f"optim.fused=true: {e}; use optim.fused=auto") from None
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)

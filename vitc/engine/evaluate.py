"""Top-1/top-5 accuracy with exact counts summed over ranks (every sample counted once).

The eval loader gives every rank the same number of batches (a ZeRO-3 forward is a collective),
padding a rank that runs out with label -1 images, which are not counted here.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from vitc.distributed.env import DistEnv
from vitc.engine.runtime import process_group, resolve_runtime, run_on
from vitc.errors import VitcError
from vitc.models.vit import VisionTransformer, adapt_state_dict
from vitc.run import first_class_mismatch
from vitc.schema import Config
from vitc.weights.export import load_weights, weight_classes


@dataclass(frozen=True)
class Accuracy:
    correct1: int
    correct5: int
    count: int

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(self.count, 1)

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / max(self.count, 1)


def _counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[top-1 hits, top-5 hits, samples] of one batch; label -1 marks padding."""
    real = labels >= 0
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = (top == labels[:, None]) & real[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(), real.sum()])


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, prepare: Callable) -> Accuracy:
    """Accuracy of `model` over `batches` of (images, labels), summed over ranks.

    `prepare(images)` moves a batch to the model's device/dtype/layout. Every rank calls this.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.int64, device=device)
    for images, labels in batches:
        images = prepare(images)
        totals += _counts(model(images).float(), labels.to(images.device))
    model.train(was_training)
    if tdist.is_initialized():
        tdist.all_reduce(totals)
    correct1, correct5, count = (int(v) for v in totals.tolist())
    return Accuracy(correct1, correct5, count)


def evaluate_weights(cfg: Config, dist: DistEnv) -> Accuracy:
    """`vitc eval`: the weights in `cfg.eval.weights` (a `vitc export` file) on the eval data of
    `cfg`, distributed over the ranks of the job when launched by torchrun or srun. Every rank."""
    from vitc.data.loading.loader import build_eval_loader

    if not cfg.eval.weights:
        raise VitcError("no weights to evaluate: pass --weights FILE (or eval.weights=FILE)")
    rt = resolve_runtime(cfg.train, dist)
    run = run_on(cfg, dist, rt, shards=("val",))  # a remote manifest is downloaded once, here
    if run.val is not None:
        same_classes(cfg, run.val.manifest.classes)
    spec = run.spec
    model = VisionTransformer(spec)
    try:
        model.load_state_dict(adapt_state_dict(load_weights(cfg.eval.weights), spec))
    except RuntimeError as e:  # missing/unexpected keys or shapes: another model's weights
        raise VitcError(f"{cfg.eval.weights} does not fit model '{spec.name}': "
                        f"{' '.join(str(e).split())[:400]}") from None
    with process_group(dist, rt, cfg.train.collective_timeout_min * 60):
        loader = build_eval_loader(cfg, run, dist)
        model.to(rt.device)
        return evaluate(model, loader, lambda x: x.to(rt.device, torch.float32))


def same_classes(cfg: Config, classes: dict) -> None:
    """The eval data's `classes` (its manifest's) must be those the weights were trained on
    (recorded by `vitc export`), by name and label, or a subset: else top-1 counts hits on other
    classes' labels."""
    trained = weight_classes(cfg.eval.weights)
    if trained is None:
        return
    mismatch = first_class_mismatch(trained, classes)
    if mismatch:
        raise VitcError(f"data.val_shards {cfg.data.val_shards} does not fit {cfg.eval.weights}: {mismatch} "
                        f"of the weights ({len(trained)} classes); evaluate on data with the training classes")

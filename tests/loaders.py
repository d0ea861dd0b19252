"""The loaders as the trainer builds them: from the run `vitc.run.resolve_run` makes of a config."""

from dataclasses import replace

from vitc.data.loading.loader import build_eval_loader, build_train_loader
from vitc.distributed.env import DistEnv
from vitc.run import resolve_run


def _run(cfg, dist: DistEnv, num_classes: int | None, split: str):
    cfg = replace(cfg, model=replace(cfg.model, num_classes="auto" if num_classes is None else num_classes))
    return cfg, resolve_run(cfg, dist.world_size, shards=(split,))


def train_loader(cfg, dist: DistEnv | None = None, num_classes: int | None = None, gpu=None):
    """`cfg`'s train loader on `dist`'s rank; the head has `num_classes` outputs (default: the
    manifest's count, which a given count must equal)."""
    dist = dist or DistEnv()
    cfg, run = _run(cfg, dist, num_classes, "train")
    return build_train_loader(cfg, run, dist, gpu)


def eval_loader(cfg, dist: DistEnv | None = None, batch_size: int | None = None):
    """`cfg`'s eval loader on `dist`'s rank, `batch_size` images per batch (default train.micro_batch)."""
    dist = dist or DistEnv()
    cfg, run = _run(cfg, dist, None, "val")
    return build_eval_loader(cfg, run, dist, batch_size)

"""Start a run from pretrained weights: ImageNet-21k pretrain -> ImageNet-1k finetune, as in the
paper's ImageNet-21k experiments (Table 2; docs/pipelines.md).

`init_model(model, cfg)` is the trainer's one call: it reads `cfg.finetune.init_from` (an exported
.safetensors file, or a run directory whose newest complete checkpoint is consolidated), handles
the classifier head (keep / re-initialise / map the pretrained rows of this dataset's classes by
name), interpolates the position embedding to this model's resolution, and loads strictly: a key
missing on either side is an error naming it, unless an allow-list pattern covers it.
Layer-wise lr decay for finetuning lives with the other parameter groups (vitc/engine/optim.py).
The functions below it take plain arguments (model, state dict, class maps) for tests and notebooks.
"""

import fnmatch
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitc.config import matches_prefix
from vitc.errors import VitcError
from vitc.models.spec import ViTSpec
from vitc.models.vit import adapt_state_dict
from vitc.schema import Config, FinetuneConfig

log = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")
INIT_CACHE = "init_from"  # RUN_DIR/init_from/: finetune.init_from's run directory, consolidated once
CACHE_POLL_S = 2.0


@dataclass
class LoadReport:
    """What `apply_pretrained` did with the pretrained state dict."""

    source: str
    head: str  # keep | reinit | map
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model keys left at their initialisation
    unexpected: list[str] = field(default_factory=list)  # pretrained keys the model has no place for
    resized: list[str] = field(default_factory=list)  # interpolated to the new resolution

    def describe(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} (head: {self.head})"]
        for what, keys in (("resized", self.resized), ("allowed missing", self.missing),
                           ("allowed unexpected", self.unexpected)):
            if keys:
                parts.append(f"{what}: {', '.join(keys)}")
        return "; ".join(parts)


def load_pretrained(source: str | os.PathLike, spec: ViTSpec | None = None, cache_dir: Path | None = None,
                    rank: int = 0) -> dict[str, torch.Tensor]:
    """fp32 weights from a `vitc export` .safetensors file or from a run directory's newest complete
    checkpoint (consolidated by DeepSpeed; once into `cache_dir` when given, see `consolidated_once`),
    or a timm checkpoint, whose architecture must be `spec`. Never unpickles: safetensors, or
    weights_only loads."""
    from vitc.weights.export import consolidated_state_dict, load_weights
    from vitc.weights.timm_format import is_timm_checkpoint, load_timm_checkpoint

    path = Path(source)
    if spec is not None and is_timm_checkpoint(path):
        return load_timm_checkpoint(path, spec)
    if path.is_dir():
        return load_weights(consolidated_once(path, cache_dir, rank)) if cache_dir else consolidated_state_dict(path)[0]
    if path.suffix != ".safetensors":
        raise VitcError(f"finetune.init_from: expected a .safetensors file from `vitc export` or a run "
                        f"directory, got '{source}'")
    return load_weights(path)


def consolidated_once(run_dir: Path, cache_dir: Path, rank: int) -> Path:
    """The newest intact checkpoint of `run_dir` as cache_dir/RUN-TAG-DIGEST.safetensors, consolidated by
    rank 0 alone through `vitc export`'s code path (written atomically), once per checkpoint; the
    other ranks wait for the file on the filesystem and then read it. Consolidating in every process
    would read the whole ZeRO optimizer state once per process (8 per node); waiting on a file rather
    than in a barrier keeps a long consolidation outside the collective timeout. Only rank 0 reads
    the checkpoint's files for their checksums (`newest_intact_on_rank0`). Every rank.

    DIGEST names the checkpoint's content, a hash of its completion marker (which records every
    file's size and CRC-32): another run of the same directory name and step, or the same run
    trained again, is consolidated anew instead of being mistaken for the cached one."""
    from vitc.checkpoint.resume_point import newest_intact_on_rank0
    from vitc.checkpoint.store import content_digest
    from vitc.weights.export import export_weights

    info = newest_intact_on_rank0(run_dir, rank)  # the tag export_weights reads
    if info is None:
        raise VitcError(f"finetune.init_from: no complete checkpoint in {run_dir} (train it with `vitc train` first)")
    cache = cache_dir / f"{run_dir.name}-{info.tag}-{content_digest(run_dir, info)}.safetensors"
    if rank == 0 and not cache.is_file():
        export_weights(run_dir, cache)
    while not cache.is_file():  # a failure on rank 0 ends the job (torchrun, srun --kill-on-bad-exit)
        time.sleep(CACHE_POLL_S)
    return cache


def map_head_rows(state: dict[str, torch.Tensor], source_classes: dict[str, int],
                  target_classes: dict[str, int]) -> dict[str, torch.Tensor]:
    """The pretrained head cut to the target classes: row i is the source row of the class that has
    index i in `target_classes` (matched by name, e.g. ImageNet-1k synsets inside ImageNet-21k)."""
    from vitc.data.shards.synsets import map_classes

    rows = map_classes(target_classes, source_classes)
    out = dict(state)
    for key in HEAD_KEYS:
        if key not in state:
            raise VitcError(f"finetune.head=map: the pretrained weights have no '{key}'")
        if max(rows) >= state[key].shape[0]:
            raise VitcError(f"finetune.head=map: the source class map names class index {max(rows)}, "
                            f"but the pretrained head has {state[key].shape[0]} rows")
        out[key] = state[key][rows]
    return out


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
               allow_missing: list[str] = (), allow_unexpected: list[str] = ()) -> tuple[list[str], list[str]]:
    """(allowed missing keys, allowed unexpected keys); raises a VitcError naming every key that is
    missing, unexpected or of another shape and not covered by an allow-list pattern."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(expected) if k in state and state[k].shape != expected[k].shape]
    bad_missing = [k for k in missing if not _matches(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    problems = []
    if bad_missing:
        problems.append(f"missing in the pretrained weights: {_listing(bad_missing)} "
                        "(allow with finetune.allow_missing)")
    if bad_unexpected:
        problems.append(f"not in the model: {_listing(bad_unexpected)} (allow with finetune.allow_unexpected)")
    if shapes:
        hint = " (a head of another class count: set finetune.head=reinit or map)" if any(
            s.startswith("head.") for s in shapes) else ""
        problems.append(f"shape differs: {_listing(shapes)}{hint}")
    if problems:
        raise VitcError("pretrained weights do not fit the model: " + "; ".join(problems))
    return missing, unexpected


def apply_pretrained(model: nn.Module, state: dict[str, torch.Tensor], head: str = "keep",
                     source_classes: dict[str, int] | None = None,
                     target_classes: dict[str, int] | None = None, allow_missing: list[str] = (),
                     allow_unexpected: list[str] = (), source: str = "state dict",
                     keys: list[str] = ()) -> LoadReport:
    """Load `state` into `model` (a VisionTransformer): head handling, position-embedding
    interpolation to `model.spec.image_size`, strict key check; returns what was done. `keys`
    (`finetune.init_keys`): only the keys under these prefixes, strictly; the others are untouched."""
    expected = model.state_dict()
    if keys:
        state = {k: v for k, v in state.items() if matches_prefix(k, keys)}
        expected = {k: v for k, v in expected.items() if matches_prefix(k, keys)}
    if head == "reinit":
        # the model's own fresh head stays: its rows are not a missing-key error
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
        allow_missing = [*allow_missing, *HEAD_KEYS]
    elif head == "map":
        if source_classes is None or target_classes is None:
            raise VitcError("finetune.head=map needs the class maps of both datasets "
                            "(finetune.source_classes and the training shards' manifest)")
        state = map_head_rows(state, source_classes, target_classes)
    elif head != "keep":
        raise VitcError(f"finetune.head: expected one of keep, reinit, map, got {head!r}")
    adapted = adapt_state_dict(state, model.spec)
    resized = [k for k in adapted if adapted[k] is not state[k]]
    missing, unexpected = check_keys(adapted, expected, allow_missing, allow_unexpected)
    model.load_state_dict({k: v for k, v in adapted.items() if k not in unexpected}, strict=False)
    return LoadReport(source, head, len(adapted) - len(unexpected), missing, unexpected, resized)


def init_model(model: nn.Module, cfg: Config, rank: int = 0) -> LoadReport | None:
    """The trainer's hook, called on every rank right after the model is built and before
    `deepspeed.initialize`: load `cfg.finetune.init_from` into `model`. None when it is unset.
    A run directory is consolidated once, by rank 0, into RUN_DIR/init_from/ (`consolidated_once`)."""
    ft = cfg.finetune
    if not ft.init_from:
        return None
    source_classes = target_classes = None
    if ft.head == "map":
        source_classes = source_class_map(ft)
        target_classes = _train_classes(cfg.data.train_shards, cfg.data.train_manifest, "data.train_shards")
    state = load_pretrained(ft.init_from, model.spec, Path(cfg.train.run_dir) / INIT_CACHE, rank)
    report = apply_pretrained(model, state, ft.head, source_classes,
                              target_classes, ft.allow_missing, ft.allow_unexpected, ft.init_from,
                              ft.init_keys)
    log.info("finetune: %s", report.describe())
    return report


def source_class_map(ft: FinetuneConfig) -> dict[str, int]:
    """The pretraining data's class map: `finetune.source_classes`, else the training shards of the
    run directory that `finetune.init_from` names (read from its saved config.yaml)."""
    from vitc.data.shards.synsets import read_class_map

    if ft.source_classes:
        return read_class_map(ft.source_classes)
    run_config = Path(ft.init_from or "") / "config.yaml"
    if not run_config.is_file():
        raise VitcError("finetune.head=map: set finetune.source_classes to the pretraining data's "
                        "class map (its shard directory or manifest.json); it can be found on its "
                        f"own only when finetune.init_from is a run directory ({ft.init_from})")
    from vitc.config import load_config

    pre = load_config(run_config).data
    return _train_classes(pre.train_shards, pre.train_manifest, f"data.train_shards of {run_config}")


def _train_classes(shards: str | list[str] | None, manifest: str | None, key: str) -> dict[str, int]:
    from vitc.data.shards.manifest import resolve_shards

    try:
        return resolve_shards(shards, manifest, "train_shards")[1].classes
    except VitcError as e:
        raise VitcError(f"finetune.head=map: reading the class map of {key}: {e}") from None


def _matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more

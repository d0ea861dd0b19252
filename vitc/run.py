"""What a config means on a given number of ranks: the one resolver of a run.

`resolve_run(cfg, world_size, device_kind)` works out, once, everything that is derived rather
than written: the model spec with its class count (`model.num_classes: auto` reads the training
manifest), the global batch and gradient accumulation, the lr at that global batch, precision
`auto`, the ZeRO section with the `deepspeed:` passthrough over it, and the train/val shard lists.
The trainer, `vitc eval`, `vitc audit`, `vitc plan` and `vitc config show` all call it, so the
planner plans exactly the run the trainer runs. Pure and torch-free: no device, no process group.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vitc.config import merge_dicts, model_spec
from vitc.errors import VitcError
from vitc.models.spec import ViTSpec
from vitc.schema import Config, OptimConfig, TrainConfig

if TYPE_CHECKING:
    from vitc.data.shards.manifest import Manifest, Shard

@dataclass(frozen=True)
class ShardSet:
    """The shards a `data.*_shards` key names, and their manifest."""

    shards: tuple[Shard, ...]
    manifest: Manifest

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass(frozen=True)
class Run:
    """A config resolved for `world_size` ranks of one device kind (see `resolve_run`)."""

    world_size: int
    micro_batch: int
    grad_accum: int
    global_batch: int  # micro_batch × grad_accum × world_size
    lr: float  # optim.base_lr scaled to global_batch
    precision: str  # bf16 | fp16 | fp32
    on_gpu: bool
    zero: dict[str, Any]  # DeepSpeed's zero_optimization section, the passthrough merged over it
    clip_grad: float | None
    passthrough: dict[str, Any]  # the config's `deepspeed:` section
    num_classes: int | None  # None: `auto` and no training shards to count them in
    model: ViTSpec | None  # None exactly when num_classes is
    train: ShardSet | None  # None when not asked for (and not read for `auto`) or unset
    val: ShardSet | None

    @property
    def spec(self) -> ViTSpec:
        """The model; a VitcError when `model.num_classes: auto` had no manifest to count in."""
        if self.model is None:
            raise VitcError("model.num_classes is 'auto' but there is no dataset manifest to take "
                            "the class count from; set model.num_classes to an integer")
        return self.model

    @property
    def zero_stage(self) -> int:
        return int(self.zero["stage"])


def resolve_run(cfg: Config, world_size: int, device_kind: str = "cpu",
                shards: Collection[str] = ("train", "val"), bf16: bool = True, count_classes: bool = True) -> Run:
    """`cfg` on `world_size` ranks of `device_kind` ('gpu' or 'cpu'; `bf16`: the GPU computes in it).

    `shards` names the lists to resolve ('train', 'val'; a key left unset in `data:` stays None);
    the training manifest is read regardless when `model.num_classes` is `auto`, unless
    `count_classes` is False (then the class count and model stay None). Errors a user
    can cause (a batch that does not divide, a manifest that cannot be read) are VitcErrors.
    """
    if device_kind not in ("gpu", "cpu"):
        raise ValueError(f"device_kind must be 'gpu' or 'cpu', got {device_kind!r}")
    on_gpu = device_kind == "gpu"
    accum = grad_accum(cfg.train, world_size)
    global_batch = cfg.train.micro_batch * accum * world_size
    auto = cfg.model.num_classes == "auto" and count_classes
    train = _shard_set(cfg, "train") if "train" in shards or auto else None
    val = _shard_set(cfg, "val") if "val" in shards else None
    num_classes = class_count(cfg, train) if count_classes or cfg.model.num_classes != "auto" else None
    check_classes(cfg, train, val)
    return Run(world_size=world_size, micro_batch=cfg.train.micro_batch, grad_accum=accum,
               global_batch=global_batch, lr=scaled_lr(cfg.optim, global_batch),
               precision=resolve_precision(cfg.train, on_gpu, bf16), on_gpu=on_gpu,
               zero=zero_section(cfg, on_gpu), clip_grad=cfg.train.clip_grad,
               passthrough=cfg.deepspeed, num_classes=num_classes,
               model=model_spec(cfg.model, num_classes) if num_classes is not None else None,
               train=train, val=val)


def class_count(cfg: Config, train: ShardSet | None = None) -> int | None:
    """`model.num_classes`; for `auto` the training manifest's count (`train`, or read now), None
    when the config names no training shards. Eval and audit, which need no batch, call this."""
    if cfg.model.num_classes != "auto":
        return cfg.model.num_classes
    train = train if train is not None else _shard_set(cfg, "train")
    return train.manifest.num_classes if train is not None else None


def check_classes(cfg: Config, train: ShardSet | None, val: ShardSet | None) -> None:
    """The training manifest is the contract on classes. `model.num_classes` (unless `auto`) is its
    count: a 1000-class head on 6-class data would train without a word. The validation classes
    are the training classes by name with the same labels, or a subset of them that keeps the
    training labels (a held-out subset of classes): top-1 is then computed over the full head.
    Validation data that names its classes otherwise is refused rather than remapped, since a
    remapping would silently change what "label 3" means between training and evaluation."""
    if train is None:
        return
    count = train.manifest.num_classes
    if cfg.model.num_classes != "auto" and cfg.model.num_classes != count:
        raise VitcError(f"model.num_classes={cfg.model.num_classes} but the training shards "
                        f"{cfg.data.train_shards} hold {count} classes (their manifest): set "
                        f"model.num_classes={count} or auto")
    if val is not None:
        mismatch = first_class_mismatch(train.manifest.classes, val.manifest.classes)
        if mismatch:
            raise VitcError(f"data.val_shards {cfg.data.val_shards}: {mismatch}; validation classes must "
                            f"be the training classes of {cfg.data.train_shards} (by name and label) or a subset")


def first_class_mismatch(reference: dict[str, int], other: dict[str, int]) -> str | None:
    """The first class of `other` (name -> label) that `reference` lacks or labels otherwise."""
    for name, label in sorted(other.items(), key=lambda item: item[1]):
        if name not in reference:
            return f"class {name!r} (label {label}) is not a training class"
        if reference[name] != label:
            return f"class {name!r} has label {label}, but {reference[name]} in training"
    return None


def grad_accum(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: from `train.global_batch` when set, else `train.grad_accum`."""
    if train.global_batch is None:
        return train.grad_accum or 1
    per_pass = world_size * train.micro_batch
    if train.global_batch % per_pass:
        raise VitcError(f"train.global_batch={train.global_batch} is not a multiple of world size "
                        f"{world_size} × train.micro_batch {train.micro_batch} = {per_pass}")
    accum = train.global_batch // per_pass
    if train.grad_accum is not None and train.grad_accum != accum:
        raise VitcError(f"train.grad_accum={train.grad_accum} disagrees with train.global_batch="
                        f"{train.global_batch} on world size {world_size} × train.micro_batch "
                        f"{train.micro_batch} (accumulation {accum}): set only one of them")
    return accum


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """base_lr scaled by global_batch / reference_batch (`linear`, `sqrt` or `none`); the paper
    states its lr at batch 2048 and scales it linearly with the batch."""
    ratio = global_batch / optim.reference_batch
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[optim.lr_scaling]
    return optim.base_lr * factor


def resolve_precision(train: TrainConfig, on_gpu: bool, bf16: bool = True) -> str:
    """`train.precision`; `auto` = bf16 on GPU (fp16 on one without bf16, e.g. V100), fp32 on CPU.
    fp16 needs a GPU."""
    auto = ("bf16" if bf16 else "fp16") if on_gpu else "fp32"
    precision = train.precision if train.precision != "auto" else auto
    if precision == "fp16" and not on_gpu:
        raise VitcError("train.precision=fp16 needs a GPU; on CPU use fp32 or bf16")
    return precision


def zero_section(cfg: Config, on_gpu: bool) -> dict[str, Any]:
    """DeepSpeed's zero_optimization for `cfg`; `deepspeed.zero_optimization` keys win."""
    train, given = cfg.train, cfg.deepspeed.get("zero_optimization", {})
    stage = given.get("stage", train.zero_stage)
    if stage == "auto":  # the schema's comment says why
        stage = 2 if on_gpu else 1
    if stage == 3 and train.compile:
        # dynamo traces ZeRO-3's per-module gather/release hooks once per module type and stack depth,
        # hits its recompile limit within the first step and runs those frames eagerly (docs/engine.md)
        raise VitcError("train.compile=true with ZeRO-3 is not supported: torch.compile recompiles "
                        "DeepSpeed's per-module ZeRO-3 hooks past its limit; use train.zero_stage 0-2 "
                        "with compile, or train.compile=false at ZeRO-3")
    if stage not in (0, 1, 2, 3):
        raise VitcError(f"deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    zero: dict[str, Any] = {"stage": stage}
    if stage > 0:
        # contiguous_gradients keeps the CUDA caching allocator from fragmenting; on the CPU it is
        # only a copy (docs/engine.md, "DeepSpeed's overhead")
        zero.update(reduce_bucket_size=train.reduce_bucket_size,
                    allgather_bucket_size=train.allgather_bucket_size,
                    overlap_comm=on_gpu, contiguous_gradients=on_gpu)
    if stage == 3:
        # memory_efficient_linear stays on: torch's own linear keeps every gathered weight alive until
        # backward (docs/engine.md, "DeepSpeed's overhead"; tests/test_engine_train.py checks none is)
        zero.update(stage3_prefetch_bucket_size=train.allgather_bucket_size,
                    stage3_param_persistence_threshold=10_000,
                    # `vitc export` consolidates from the optimizer's fp32 partitions
                    stage3_gather_16bit_weights_on_model_save=False)
    return merge_dicts(zero, given)


def _shard_set(cfg: Config, split: str) -> ShardSet | None:
    spec = getattr(cfg.data, f"{split}_shards")
    if spec is None:
        return None
    from vitc.data.shards.manifest import resolve_shards

    shards, manifest = resolve_shards(spec, getattr(cfg.data, f"{split}_manifest"), f"{split}_shards")
    return ShardSet(tuple(shards), manifest)


def derived_values(cfg: Config, world_size: int, device_kind: str) -> dict[str, Any]:
    """What `vitc config show` prints under `derived:`: the run's values that no key states.

    The class count of `model.num_classes: auto` is shown when the training manifest can be read,
    and otherwise says why not (the rest does not depend on it)."""
    unresolved = None
    try:
        run = resolve_run(cfg, world_size, device_kind, shards=())
    except VitcError as e:
        if cfg.model.num_classes != "auto" or cfg.data.train_shards is None:
            raise
        unresolved = f"auto (not resolved: {e})"
        run = resolve_run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_shards=None)),
                          world_size, device_kind, shards=())
    out = {"world_size": run.world_size, "device": device_kind, "micro_batch": run.micro_batch,
           "grad_accum": run.grad_accum, "global_batch": run.global_batch, "lr": run.lr,
           "precision": run.precision, "zero_stage": run.zero_stage,
           "num_classes": run.num_classes if run.num_classes is not None else unresolved or "auto"}
    if run.model is not None:
        out.update(model=run.model.name, patch_size=run.model.patch_size)
    return out

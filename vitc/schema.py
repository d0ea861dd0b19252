"""Every config key vitc knows, with its type and default: the one place defaults live.

A YAML file holds only what differs from here. Each section is a dataclass; the loader in
`vitc.config` rejects unknown keys, wrong types and out-of-range values by reading these
annotations and the range declared beside each number (`bounded`).
"""

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Range:
    """Valid values of a number (of each item, for a list): ge <= x <= le, gt < x < lt."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, x: float) -> bool:
        return not ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                    or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def describe(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        return " and ".join(p for p in (low, high) if p)


def bounded(default: Any, **bounds: float):
    """A field with its default and its valid range (`ge`, `gt`, `le`, `lt`); null is always allowed
    where the type allows it, and a list's range applies to every item."""
    value = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**value, metadata={"range": Range(**bounds)})


@dataclass
class ModelConfig:
    """The network. `name` picks a registry entry (Table 1); any other key set here overrides it."""

    name: str = "vit_c_1gf"
    stem: Literal["patchify", "conv"] | None = None
    width: int | None = bounded(None, ge=1)
    depth: int | None = bounded(None, ge=1)
    heads: int | None = bounded(None, ge=1)
    mlp_ratio: float | None = bounded(None, gt=0)
    # Unset with stem_strides set: the product of the strides (logged when it differs from the
    # registry model's), since a conv stem's total stride is its patch size.
    patch_size: int | None = bounded(None, ge=1)
    stem_channels: list[int] | None = bounded(None, ge=1)
    stem_strides: list[int] | None = bounded(None, ge=1)  # 1 or 2 for 3×3 convs (ViTSpec.validate)
    # the stem as data (Table 3, Fig. 7): each conv's kernel and padding before the final 1×1
    # (unset: 3×3, padding 1), and the norm after each ("batch", or "layer" for ViT_C(ln))
    stem_kernels: list[int] | None = bounded(None, ge=1)
    stem_paddings: list[int] | None = bounded(None, ge=0)
    stem_norm: Literal["batch", "layer"] | None = None
    classifier: Literal["token", "pool"] | None = None
    # layer-norm epsilon; None = the registry's 1e-6 (the released configs' LN.EPS, pycls vitconfigs 206d0db)
    norm_eps: float | None = None
    # `auto` takes the class count from the training shards' manifest.
    num_classes: int | Literal["auto"] = bounded(1000, ge=1)
    image_size: int = bounded(224, ge=1)  # a multiple of the patch size
    drop_path: float = bounded(0.0, ge=0, lt=1)
    act_checkpoint: bool = False


@dataclass
class AuditConfig:
    """Flop/param audit settings."""

    # The paper holds conv-stem and patchify twins within a few percent of each other (§3.1).
    parity_tolerance: float = bounded(0.03, ge=0)


@dataclass
class OptimConfig:
    """Optimizer and learning rate: the paper's AdamW recipe (arXiv 2106.14881; pycls
    `vitconfigs` 206d0db, configs/vitconv_baselines/vit/)."""

    name: Literal["adamw", "sgd"] = "adamw"
    # lr = base_lr × scale(global batch / reference_batch); the paper: 1e-3 at batch 2048.
    base_lr: float = bounded(1e-3, ge=0)  # 0 keeps the weights (e.g. to check what init_from carried)
    reference_batch: int = bounded(2048, ge=1)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: float = bounded(0.24, ge=0)
    betas: list[float] = bounded([0.9, 0.999], ge=0, lt=1)  # two of them
    eps: float = bounded(1e-8, ge=0)
    momentum: float = bounded(0.9, ge=0)  # SGD only
    nesterov: bool = True  # SGD only
    # Fused AdamW kernel: `auto` = on when training on a GPU.
    fused: bool | Literal["auto"] = "auto"
    # EMA of weights (pycls OPTIM.EMA_ALPHA / EMA_UPDATE_PERIOD: 1e-5 every 32 iterations of an
    # epoch, a copy during warmup; vitc/engine/ema.py); 0 = off.
    ema_alpha: float = bounded(0.0, ge=0)
    ema_update_period: int = bounded(32, ge=1)


@dataclass
class ScheduleConfig:
    """lr schedule: linear warmup from a factor, then half-period cosine (the paper's recipe;
    pycls `vitconfigs` 206d0db, pycls/core/optimizer.py), set once per epoch as the authors do or
    at every step (vitc/engine/schedule.py)."""

    epochs: int = bounded(100, ge=1, le=100_000)  # the paper's longest schedules are 300-400 epochs
    warmup_epochs: float = bounded(5.0, ge=0)  # at most schedule.epochs
    warmup_factor: float = bounded(0.1, ge=0, le=1)
    # cosine ends at min_lr_factor × lr (the released configs' OPTIM.MIN_LR: 0.005)
    min_lr_factor: float = bounded(0.005, ge=0, le=1)
    # `epoch`: the lr is set once per epoch (pycls trainer.py `get_epoch_lr(cur_epoch)`, the authors');
    # `step`: the same curve evaluated at every optimizer step (vitc's option)
    lr_update: Literal["epoch", "step"] = "epoch"


@dataclass
class TrainConfig:
    """The DeepSpeed engine and the loop. global batch = micro_batch × grad_accum × world size."""

    run_dir: str = "runs/default"
    micro_batch: int = bounded(64, ge=1)  # images per rank per forward/backward
    # Images per optimizer step over all ranks; set, it fixes grad_accum = global_batch /
    # (world size × micro_batch), which must divide (the paper's runs: 2048; ImageNet-21k: 4096).
    global_batch: int | None = bounded(None, ge=1)
    grad_accum: int | None = bounded(None, ge=1)  # null: 1, or what global_batch gives
    # `auto`: 2 on GPU (gradients reduce-scattered bucket by bucket during backward, overlap_comm),
    # 1 on CPU (gloo has no side stream to overlap on; ZeRO-2 only adds copies there). docs/plan.md
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    # `auto`: bf16 on GPU, fp32 on CPU. fp16 uses DeepSpeed's dynamic loss scaling.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    clip_grad: float | None = bounded(None, gt=0)  # max global gradient norm; null = no clipping
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # A collective (a step's all_reduce, an evaluation) that waits longer than this ends the job,
    # naming this rank and host: a dead or hung peer frees the allocation after minutes, not at its
    # time limit. Checkpoint saves have their own, longer bound (checkpoint.save_timeout_min).
    collective_timeout_min: float = bounded(10.0, gt=0)
    # elements; a bucket is reduced once full, the last after backward: one smaller than the model
    # lets the reduction overlap backward (DeepSpeed's 5e8 holds all of a 72GF model). docs/plan.md
    reduce_bucket_size: int = bounded(50_000_000, ge=1)
    allgather_bucket_size: int = bounded(500_000_000, ge=1)
    channels_last: bool | Literal["auto"] = "auto"  # NHWC stem input: `auto` = on GPU
    # torch.compile the model (inductor; on the CPU it needs a C++ compiler) through DeepSpeed's
    # `engine.compile()`, which compiles the module in place: state-dict keys stay unchanged, so
    # checkpoints and exports load with compile on or off. The first steps pay the compile time.
    compile: bool = False
    seed: int = 0
    # Stop once the run has made this many optimizer steps in total, counted over every
    # invocation (a resumed run at or past it stops at once); the schedule still spans `epochs`.
    max_steps: int | None = bounded(None, ge=1)  # null: no limit
    # Parameters kept fixed: key prefixes (`stem` covers `stem.convs.0.weight`, not `stem_x`). They
    # leave the optimizer and weight decay, and a BatchNorm whose parameters are all frozen keeps its
    # running statistics (eval mode) while the rest trains. Paper Appendix C: ViT_C-72GF's stem.
    freeze: list[str] = field(default_factory=list)
    # Under ZeRO >= 1 (and fp16 loss scaling) DeepSpeed skips an optimizer step whose gradients are
    # not finite, without an error; more than this many skipped in a row end the run as diverged.
    max_skipped_steps: int = bounded(10, ge=0)


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints in RUN_DIR/checkpoints; resume picks the newest complete one."""

    every_steps: int = bounded(1000, ge=1)
    keep_last: int = bounded(2, ge=1)
    # The collectives of a save or a load (and the broadcast in which the other ranks wait while
    # rank 0 checks a checkpoint's files at resume) may wait this long: writing or reading a large
    # model's optimizer shards on a shared filesystem takes minutes.
    save_timeout_min: float = bounded(30.0, gt=0)
    resume: bool = True


@dataclass
class EvalConfig:
    """Top-1/top-5 on the eval shards during training and by `vitc eval`."""

    every_epochs: int = bounded(1, ge=0)  # 0 = never
    weights: str | None = None  # `vitc eval`: a .safetensors file from `vitc export`
    # Before every evaluation, BatchNorm statistics of the model and its EMA are re-estimated over
    # this many training images (pycls BN.USE_PRECISE_STATS / NUM_SAMPLES_PRECISE); 0 = off.
    precise_bn_samples: int = bounded(8192, ge=0)


@dataclass
class LogConfig:
    every_steps: int = bounded(20, ge=1)
    tensorboard: bool = True


@dataclass
class SlurmConfig:
    """`vitc slurm submit`: the allocation and how vitc/resources/slurm/*.sbatch launches it (docs/slurm.md)."""

    template: Literal["pretrain", "finetune"] = "pretrain"
    nodes: int = bounded(1, ge=1)
    # One task per GPU; 0 = one CPU task per node (gloo), for CPU clusters and the test cluster.
    gpus_per_node: int = bounded(8, ge=0)
    cpus_per_task: int = bounded(8, ge=1)
    mem: str | None = None  # sbatch --mem per node, e.g. "500G"; "0" = all of it; null: the site's default
    # srun --cpu-bind / --gpu-bind for the training tasks, e.g. "cores" and "single:1" (one GPU per
    # task, seen as device 0) or "closest"; null: the site's default
    cpu_bind: str | None = None
    gpu_bind: str | None = None
    partition: str | None = None
    account: str | None = None
    # sbatch --time. Quote it in YAML ("72:00:00"): unquoted, YAML 1.1 reads H:M:S as one number.
    time: str = "72:00:00"
    # USR1 this long before the time limit: room to finish a step and write a checkpoint.
    signal_seconds: int = bounded(600, ge=0)
    # srun --wait: once one rank has exited, the rest get this long before the job is ended.
    exit_wait_s: int = bounded(120, ge=1)  # srun --wait=0 would wait forever
    # After a node failure the job script requeues the job (it resumes from its last checkpoint)
    # this many times over the run's life, then gives up with one line; 0 = never.
    node_failure_requeues: int = bounded(3, ge=0)
    # Exported before srun (site NCCL settings such as NCCL_SOCKET_IFNAME go here).
    env: dict[str, str] = field(default_factory=dict)
    sbatch_args: list[str] = field(default_factory=list)  # extra options, e.g. "--exclusive"

    @property
    def tasks_per_node(self) -> int:
        """Training processes per node: one per GPU, or one CPU task when gpus_per_node is 0."""
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        """The ranks the job starts (what the trainer's world size will be)."""
        return self.nodes * self.tasks_per_node


@dataclass
class DataConfig:
    """Shards, the streaming loader and the augmentation recipe (the paper's recipe; docs/loader.md).

    Images per rank per step come from `train.micro_batch`; the image size from `model.image_size`.
    """

    # A shard directory with manifest.json, or a brace pattern / list of paths or `pipe:`/http URLs
    # (then `*_manifest` names the manifest, unless the first shard's directory holds one).
    train_shards: str | list[str] | None = None
    val_shards: str | list[str] | None = None
    train_manifest: str | None = None
    val_manifest: str | None = None
    workers: int = bounded(4, ge=0)  # DataLoader worker processes per rank
    # Keep the workers between epochs (and between evaluations) instead of forking them anew for each
    persistent_workers: bool = True
    # samples held per worker for the streaming shuffle: JPEG bytes, ~110 kB each at ImageNet size
    shuffle_buffer: int = bounded(2000, ge=0)
    seed: int = 0  # with the epoch number: same seed + epoch -> same sample order
    resampled: bool = False  # draw shards with replacement (no epoch boundary in the data)
    crop_scale: list[float] = bounded([0.08, 1.0], gt=0, le=1)  # RandomResizedCrop area [min, max]
    hflip: float = bounded(0.5, ge=0, le=1)
    # AutoAugment (the paper's recipe, from the authors' pycls configs: torchvision's ImageNet policy
    # with pycls's fill and interpolation, docs/paper_runs.md), RandAugment as an option.
    auto_augment: Literal["autoaugment", "randaugment", "none"] = "autoaugment"
    randaugment_magnitude: int = bounded(9, ge=0, le=30)  # torchvision's 31 bins
    randaugment_num_ops: int = bounded(2, ge=1)
    # Off: the paper's recipe (the authors' pycls configs) has no random erasing; DeiT uses 0.25.
    random_erasing: float = bounded(0.0, ge=0, le=1)
    # AlexNet-style PCA lighting noise, std of its three draws; 0 = off. pycls's TRAIN.PCA_STD
    # default, not overridden by the released configs (vitc/data/loading/transforms.py)
    pca_std: float = bounded(0.1, ge=0)
    mixup_alpha: float = bounded(0.8, ge=0)  # the released configs; 0 = off
    cutmix_alpha: float = bounded(1.0, ge=0)  # the released configs; 0 = off
    label_smoothing: float = bounded(0.1, ge=0, le=1)  # the released configs
    # eval: resize to image_size / ratio, center crop image_size
    eval_crop_ratio: float = bounded(0.875, gt=0, le=1)
    # libjpeg-turbo's fast integer IDCT and chroma upsampling (train and eval alike); false = its
    # accurate defaults (PIL's). Speed and pixel difference: docs/loader.md, "Config"
    fast_jpeg_decode: bool = True
    # Skipped (undecodable or unlabeled) samples beyond this fraction of a worker's data stop the run.
    max_bad_fraction: float = bounded(0.001, ge=0, le=1)
    read_timeout_s: float = bounded(120.0, gt=0)  # a shard that sends nothing for this long is an error
    decode_device: Literal["cpu", "cuda"] = "cpu"  # cuda: nvJPEG batch decode (falls back to cpu)
    pin_memory: bool | Literal["auto"] = "auto"  # `auto`: when CUDA is available
    # Where uint8 batches become float (normalize, erasing, MixUp/CutMix): on the GPU a quarter of
    # the bytes cross PCIe and the trainer's CPU is spared that work. `auto`: cuda if available.
    batch_device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class FinetuneConfig:
    """Start from pretrained weights (the paper: 21k pretrain -> 1k finetune; docs/pipelines.md)."""

    # A .safetensors file from `vitc export`, or a run directory (its newest complete checkpoint).
    init_from: str | None = None
    # Load only the keys under these prefixes (as train.freeze reads them); the model's other keys
    # keep their initialisation and init_from's other keys are ignored. Empty: every key.
    init_keys: list[str] = field(default_factory=list)
    # keep: load the head as is (same classes); reinit: keep this model's fresh head;
    # map: the rows of the pretrained head whose class names are this dataset's classes.
    head: Literal["keep", "reinit", "map"] = "keep"
    # head=map: the pretraining data's class map (shard dir, manifest.json, JSON or synset list);
    # default: the data.train_shards of the run directory named by init_from.
    source_classes: str | None = None
    # Strict load: a model key absent from init_from, or an init_from key the model lacks, is an
    # error unless it matches one of these fnmatch patterns (e.g. [head.*]).
    allow_missing: list[str] = field(default_factory=list)
    allow_unexpected: list[str] = field(default_factory=list)
    # Layer-wise lr decay (BEiT): block i (from 0) trains at lr × decay^(depth - i), stem, pos and
    # cls at lr × decay^(depth + 1), final norm and head at lr; null = off.
    layer_decay: float | None = bounded(None, gt=0, le=1)


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Extra DeepSpeed config keys, merged over the generated config (vitc.deepspeed_config).
    deepspeed: dict[str, Any] = field(default_factory=dict)

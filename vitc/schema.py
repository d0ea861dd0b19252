"""Every config key vitc knows, with its type and default: the one place defaults live.

A YAML file holds only what differs from here. Each section is a dataclass; the loader in
`vitc.config` rejects unknown keys and wrong types by reading these annotations.
"""

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    """The network. `name` picks a registry entry (Table 1); any other key set here overrides it."""

    name: str = "vit_c_1gf"
    stem: Literal["patchify", "conv"] | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    patch_size: int | None = None
    stem_channels: list[int] | None = None
    stem_strides: list[int] | None = None
    classifier: Literal["token", "pool"] | None = None
    # `auto` takes the class count from the training shards' manifest.
    num_classes: int | Literal["auto"] = 1000
    image_size: int = 224
    drop_path: float = 0.0
    act_checkpoint: bool = False


@dataclass
class AuditConfig:
    """Flop/param audit settings."""

    # The paper holds conv-stem and patchify twins within a few percent of each other (§3.1).
    parity_tolerance: float = 0.03


@dataclass
class OptimConfig:
    """Optimizer and learning rate (SPEC §2: the paper's AdamW recipe via pycls)."""

    name: Literal["adamw", "sgd"] = "adamw"
    # lr = base_lr × scale(global batch / reference_batch); SPEC §2: 1e-3 at batch 2048.
    base_lr: float = 1e-3
    reference_batch: int = 2048
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: float = 0.24
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    # Fused AdamW kernel: `auto` = on when training on a GPU.
    fused: bool | Literal["auto"] = "auto"
    # EMA of weights (pycls OPTIM.EMA_ALPHA / EMA_UPDATE_PERIOD: 1e-5 every 32 iterations); 0 = off.
    ema_alpha: float = 0.0
    ema_update_period: int = 32


@dataclass
class ScheduleConfig:
    """Per-iteration lr schedule: linear warmup from a factor, then half-period cosine (SPEC §2)."""

    epochs: int = 100
    warmup_epochs: float = 5.0
    warmup_factor: float = 0.1
    # cosine ends at min_lr_factor × lr (SPEC §2: 0.005)
    min_lr_factor: float = 0.005


@dataclass
class TrainConfig:
    """The DeepSpeed engine and the loop. global batch = micro_batch × grad_accum × world size."""

    run_dir: str = "runs/default"
    micro_batch: int = 64  # images per rank per forward/backward
    grad_accum: int = 1
    zero_stage: Literal[0, 1, 2, 3] = 1
    # `auto`: bf16 on GPU, fp32 on CPU. fp16 uses DeepSpeed's dynamic loss scaling.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    clip_grad: float | None = None  # max global gradient norm; null = no clipping
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # A collective that waits longer than this ends the job instead of hanging it.
    dist_timeout_s: int = 1800
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    channels_last: bool | Literal["auto"] = "auto"  # NHWC stem input: `auto` = on GPU
    seed: int = 0
    # Stop this invocation after this many optimizer steps (the schedule still spans `epochs`).
    max_steps: int | None = None
    # Under ZeRO >= 1 (and fp16 loss scaling) DeepSpeed skips an optimizer step whose gradients are
    # not finite, without an error; more than this many skipped in a row end the run as diverged.
    max_skipped_steps: int = 10


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints in RUN_DIR/checkpoints; resume picks the newest complete one."""

    every_steps: int = 1000
    keep_last: int = 2
    resume: bool = True


@dataclass
class EvalConfig:
    """Top-1/top-5 on the eval shards during training and by `vitc eval`."""

    every_epochs: int = 1
    weights: str | None = None  # `vitc eval`: a .safetensors file from `vitc export`


@dataclass
class LogConfig:
    every_steps: int = 20
    tensorboard: bool = True


@dataclass
class SlurmConfig:
    """`vitc slurm submit`: the allocation and how slurm/*.sbatch launches it (docs/slurm.md)."""

    template: Literal["pretrain", "finetune"] = "pretrain"
    nodes: int = 1
    # One task per GPU; 0 = one CPU task per node (gloo), for CPU clusters and the test cluster.
    gpus_per_node: int = 8
    cpus_per_task: int = 8
    partition: str | None = None
    account: str | None = None
    # sbatch --time. Quote it in YAML ("72:00:00"): unquoted, YAML 1.1 reads H:M:S as one number.
    time: str = "72:00:00"
    # USR1 this long before the time limit: room to finish a step and write a checkpoint.
    signal_seconds: int = 600
    # srun --wait: once one rank has exited, the rest get this long before the job is ended.
    exit_wait_s: int = 120
    # Exported before srun (site NCCL settings such as NCCL_SOCKET_IFNAME go here).
    env: dict[str, str] = field(default_factory=dict)
    sbatch_args: list[str] = field(default_factory=list)  # extra options, e.g. "--exclusive"


@dataclass
class DataConfig:
    """Shards, the streaming loader and the augmentation recipe (SPEC §2-§3; docs in vitc/data/loader.py).

    Images per rank per step come from `train.micro_batch`; the image size from `model.image_size`.
    """

    # A shard directory with manifest.json, or a brace pattern / list of paths or `pipe:`/http URLs
    # (then `*_manifest` names the manifest, unless the first shard's directory holds one).
    train_shards: str | list[str] | None = None
    val_shards: str | list[str] | None = None
    train_manifest: str | None = None
    val_manifest: str | None = None
    workers: int = 4  # DataLoader worker processes per rank
    # Keep the workers between epochs (and between evaluations) instead of forking them anew for each
    persistent_workers: bool = True
    # samples held per worker for the streaming shuffle: JPEG bytes, ~110 kB each at ImageNet size
    shuffle_buffer: int = 2000
    seed: int = 0  # with the epoch number: same seed + epoch -> same sample order
    resampled: bool = False  # draw shards with replacement (no epoch boundary in the data)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area
    hflip: float = 0.5
    # SPEC §2: AutoAugment (the paper's pycls recipe), RandAugment as an option.
    auto_augment: Literal["autoaugment", "randaugment", "none"] = "autoaugment"
    randaugment_magnitude: int = 9
    randaugment_num_ops: int = 2
    # Off: SPEC §2's recipe (the authors' pycls configs) has no random erasing; DeiT uses 0.25.
    random_erasing: float = 0.0
    mixup_alpha: float = 0.8  # SPEC §2; 0 = off
    cutmix_alpha: float = 1.0  # SPEC §2; 0 = off
    label_smoothing: float = 0.1  # SPEC §2
    eval_crop_ratio: float = 0.875  # eval: resize to image_size / ratio, center crop image_size
    # libjpeg-turbo's fast integer IDCT and chroma upsampling (train and eval alike): ~10 % faster
    # decode for differences of a grey level or two; false = its accurate defaults (PIL's)
    fast_jpeg_decode: bool = True
    # Skipped (undecodable or unlabeled) samples beyond this fraction of a worker's data stop the run.
    max_bad_fraction: float = 0.001
    read_timeout_s: float = 120.0  # a shard that sends nothing for this long is an error
    decode_device: Literal["cpu", "cuda"] = "cpu"  # cuda: nvJPEG batch decode (falls back to cpu)
    pin_memory: bool | Literal["auto"] = "auto"  # `auto`: when CUDA is available
    # Where uint8 batches become float (normalize, erasing, MixUp/CutMix): on the GPU a quarter of
    # the bytes cross PCIe and the trainer's CPU is spared ~0.7 ms/image. `auto`: cuda if available.
    batch_device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class FinetuneConfig:
    """Start from pretrained weights (SPEC §2: 21k pretrain -> 1k finetune; docs/pipelines.md)."""

    # A .safetensors file from `vitc export`, or a run directory (its newest complete checkpoint).
    init_from: str | None = None
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
    layer_decay: float | None = None


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
    # Extra DeepSpeed config keys, merged over the generated config (vitc.engine.deepspeed_cfg).
    deepspeed: dict[str, Any] = field(default_factory=dict)

"""The resolved config (or a registry model name) + the cluster named on the command line -> RunSetup."""

from dataclasses import dataclass
from pathlib import Path

from vitc.config import load_config
from vitc.deepspeed_config import deepspeed_config
from vitc.errors import VitcError
from vitc.plan.deepspeed_model import DeepSpeedModel
from vitc.plan.gpus import DEFAULT_GPUS_FILE, get_gpu
from vitc.plan.planner import RunSetup
from vitc.run import resolve_run
from vitc.schema import Config


@dataclass(frozen=True)
class Cluster:
    """What the command line says about the machines and the assumptions (None = from the config)."""

    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu: str = "h100"
    mfu: float = 0.4
    dataset_size: int | None = None
    overlap: bool = True
    gpus_file: str | Path = DEFAULT_GPUS_FILE


def load_run_config(target: str, overrides: list[str]) -> Config:
    """A YAML config, or a registry model name with the schema's defaults for everything else."""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        return load_config(target, overrides)
    return load_config(None, [f"model.name={target}", *overrides])


def run_setup(cfg: Config, cluster: Cluster) -> RunSetup:
    """Model, engine choices and schedule from `cfg` resolved as the trainer resolves it
    (vitc.run.resolve_run) for the cluster's world size; nodes and GPUs from `cluster`, falling
    back to the config's `slurm:` section (what `vitc slurm submit` would book)."""
    gpu = get_gpu(cluster.gpu, cluster.gpus_file)
    nodes = cluster.nodes if cluster.nodes is not None else cfg.slurm.nodes
    gpus_per_node = cluster.gpus_per_node
    if gpus_per_node is None:
        if cfg.slurm.gpus_per_node == 0:
            raise VitcError("slurm.gpus_per_node is 0 (one CPU task per node): pass --gpus-per-node")
        gpus_per_node = cfg.slurm.gpus_per_node
    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:  # before the world size they make is resolved
            raise VitcError(f"{flag} must be >= 1, got {value}")
    # the data's size comes from the training manifest unless given on the command line
    shards = ("train",) if cluster.dataset_size is None else ()
    run = resolve_run(cfg, nodes * gpus_per_node, gpu.kind, shards, bf16=bool(gpu.peak_tflops.get("bf16")))
    size = cluster.dataset_size if cluster.dataset_size is not None else (
        run.train.samples if run.train is not None else None)
    return RunSetup(
        spec=run.spec, gpu=gpu, nodes=nodes, gpus_per_node=gpus_per_node,
        micro_batch=run.micro_batch, grad_accum=run.grad_accum, zero_stage=run.zero_stage,
        precision=run.precision, optimizer=cfg.optim.name, act_checkpoint=cfg.model.act_checkpoint,
        epochs=cfg.schedule.epochs, dataset_size=size, mfu=cluster.mfu, overlap=cluster.overlap,
        # the very dict the engine passes to deepspeed.initialize, and what DeepSpeed makes of it
        deepspeed=DeepSpeedModel.from_config(deepspeed_config(run)),
        lr=run.lr, fused_optimizer=fused_adamw(cfg, run.on_gpu), ema=cfg.optim.ema_alpha > 0,
        loader_workers=cfg.data.workers)


def fused_adamw(cfg: Config, on_gpu: bool) -> bool:
    """Whether the engine builds a fused AdamW (vitc/engine/optim.py: `optim.fused`, `auto` = on GPU);
    SGD is never fused."""
    if cfg.optim.name != "adamw":
        return False
    return on_gpu if cfg.optim.fused == "auto" else bool(cfg.optim.fused)

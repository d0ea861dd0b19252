"""The resolved config (or a registry model name) + the cluster named on the command line -> RunSetup."""

from dataclasses import dataclass
from pathlib import Path

from vitc.config import load_config
from vitc.errors import VitcError
from vitc.plan.gpus import DEFAULT_GPUS_FILE, get_gpu
from vitc.plan.planner import RunSetup
from vitc.schema import Config
from vitc.specs import model_spec


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


def dataset_size(cfg: Config) -> int | None:
    """Images in the training shards the config names (their manifest), or None when it names none."""
    if cfg.data.train_shards is None:
        return None
    from vitc.data.shards.manifest import resolve_shards

    shards, _ = resolve_shards(cfg.data.train_shards, cfg.data.train_manifest, "train_shards")
    return sum(s.samples for s in shards)


def _num_classes(cfg: Config) -> int | None:
    if cfg.model.num_classes != "auto" or cfg.data.train_shards is None:
        return None
    from vitc.data.shards.manifest import resolve_shards

    return resolve_shards(cfg.data.train_shards, cfg.data.train_manifest, "train_shards")[1].num_classes


def run_setup(cfg: Config, cluster: Cluster) -> RunSetup:
    """Model, engine choices and schedule from `cfg`; nodes and GPUs from `cluster`, falling back
    to the config's `slurm:` section (what `vitc slurm submit` would book)."""
    gpu = get_gpu(cluster.gpu, cluster.gpus_file)
    precision = cfg.train.precision if cfg.train.precision != "auto" else gpu.auto_precision()
    zero = {**cfg.deepspeed.get("zero_optimization", {})}  # the passthrough wins, as in the engine
    nodes = cluster.nodes if cluster.nodes is not None else cfg.slurm.nodes
    gpus_per_node = cluster.gpus_per_node
    if gpus_per_node is None:
        if cfg.slurm.gpus_per_node == 0:
            raise VitcError("slurm.gpus_per_node is 0 (one CPU task per node): pass --gpus-per-node")
        gpus_per_node = cfg.slurm.gpus_per_node
    size = cluster.dataset_size if cluster.dataset_size is not None else dataset_size(cfg)
    return RunSetup(
        spec=model_spec(cfg.model, _num_classes(cfg)), gpu=gpu, nodes=nodes, gpus_per_node=gpus_per_node,
        micro_batch=cfg.train.micro_batch, grad_accum=cfg.train.grad_accum,
        zero_stage=int(zero.get("stage", cfg.train.zero_stage)), precision=precision,
        optimizer=cfg.optim.name, act_checkpoint=cfg.model.act_checkpoint, epochs=cfg.schedule.epochs,
        # the engine turns DeepSpeed's overlap_comm on only on GPUs (vitc.engine.deepspeed_cfg)
        dataset_size=size, mfu=cluster.mfu, overlap=cluster.overlap and gpu.kind == "gpu",
        reduce_bucket_size=int(zero.get("reduce_bucket_size", cfg.train.reduce_bucket_size)),
        allgather_bucket_size=int(zero.get("stage3_prefetch_bucket_size", cfg.train.allgather_bucket_size)))

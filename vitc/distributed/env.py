"""Who am I in the job: rank, world size, local rank and master, discovered once.

Read from torchrun (RANK/WORLD_SIZE/LOCAL_RANK), Slurm (SLURM_PROCID/SLURM_NTASKS/...) or MPI
(OMPI_COMM_WORLD_*), in that order; a plain process is rank 0 of 1. The Slurm job to requeue on
preemption is read too, whichever launcher started the ranks inside the allocation. The trainer
calls `discover()` once and passes the result down: nothing deeper reads these variables. No torch import here, so
`vitc slurm submit --dry-run` stays instant on a login node.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from vitc.errors import VitcError

DEFAULT_PORT = 29500
# Slurm jobs: a port below Linux's ephemeral range (32768-60999, net.ipv4.ip_local_port_range),
# where an outgoing connection of any process on the node could already hold it.
SLURM_PORTS = range(10000, 30000)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"  # single | torchrun | slurm | mpi
    slurm_job: str | None = None  # the Slurm job (array task: JOB_TASK) this process runs in

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous reads."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(self.local_rank), "LOCAL_WORLD_SIZE": str(self.local_world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise VitcError(f"environment variable {key}={env[key]!r}: expected an integer")


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[003-005,7],cpu1' -> 'gpu003' (what scontrol prints)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise VitcError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def slurm_master_port(job_id: int) -> int:
    """The rendezvous port of Slurm job `job_id`: the same on every node, different for two jobs
    sharing a node unless their ids differ by a multiple of 20000 (vitc/resources/slurm/launch.sh computes the same)."""
    return SLURM_PORTS.start + job_id % len(SLURM_PORTS)


def wants_cuda(device: str, cuda_available: bool) -> bool:
    """Whether `train.device` (auto | cpu | cuda) puts this process on a GPU: the trainer's choice
    (vitc.engine.runtime), and the loader's for pinning and GPU decode."""
    return device == "cuda" or (device == "auto" and cuda_available)


def gpu_index(local_rank: int, local_world_size: int, visible_gpus: int) -> int:
    """Which of the GPUs this process sees it trains on.

    Two ways a site hands GPUs to tasks: every task sees the node's GPUs (torchrun, plain
    `srun --gpus-per-node`) and takes the one at its local rank; or each task is bound to one GPU
    (`--gpus-per-task=1`, `--gpu-bind=single:1`/`map_gpu`, CUDA_VISIBLE_DEVICES set per task) and
    sees only that one, as device 0.
    """
    if visible_gpus == 1:
        return 0
    if visible_gpus >= local_world_size and local_rank < visible_gpus:
        return local_rank
    raise VitcError(f"local rank {local_rank} of {local_world_size} tasks on this node sees {visible_gpus} "
                    "GPU(s): expected each task to see one GPU, or every task all of the node's GPUs "
                    "(check --gpus-per-task / --gpu-bind / CUDA_VISIBLE_DEVICES)")


def slurm_job(env: Mapping[str, str]) -> str | None:
    """The id `scontrol` knows this job by: '<array job>_<task>' for an array task, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    return env.get("SLURM_JOB_ID") or None


def discover(env: Mapping[str, str] | None = None) -> DistEnv:
    """The DistEnv of this process, from whichever launcher started it."""
    env = os.environ if env is None else env
    return replace(_launcher(env), slurm_job=slurm_job(env))


def _launcher(env: Mapping[str, str]) -> DistEnv:
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_PORT
    if "RANK" in env and "WORLD_SIZE" in env:
        local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1
        return DistEnv(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                       local_world, _int(env, "GROUP_RANK") if "GROUP_RANK" in env else 0,
                       env.get("MASTER_ADDR", "127.0.0.1"), port, "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        # Slurm names nodes, but names need not resolve on the training network: the sbatch
        # script exports MASTER_ADDR as the first node's address; the node name is a fallback.
        master = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            port = slurm_master_port(_int(env, "SLURM_JOB_ID"))
        # SLURM_NTASKS_PER_NODE reads like '4' or '4(x16)'
        per_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
        local_world = int(per_node) if per_node.isdigit() else 1
        return DistEnv(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                       _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0, local_world,
                       _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0, master, port, "slurm")
    if "OMPI_COMM_WORLD_RANK" in env:
        return DistEnv(_int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE"),
                       _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"), _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
                       0, env.get("MASTER_ADDR", "127.0.0.1"), port, "mpi")
    return DistEnv(master_port=port)

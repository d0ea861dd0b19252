"""Where and how this process trains: device, precision, process group, seeds, environment.

Reads the launcher's facts only from the `DistEnv` that `vitc.distributed.env.discover()` returned at
the top of the program; `process_group` exports them while a run lasts because DeepSpeed itself
reads LOCAL_RANK from the environment.
"""

import atexit
import os
import platform
import random
import socket
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as tdist

from vitc.distributed.env import DistEnv, gpu_index, wants_cuda
from vitc.errors import VitcError
from vitc.run import Run, resolve_run
from vitc.schema import Config, TrainConfig


@dataclass(frozen=True)
class Runtime:
    """Resolved `auto` choices for this process."""

    device: torch.device
    bf16: bool  # the device computes in bf16 (the run's precision rule reads it: vitc.run)
    backend: str  # nccl | gloo
    channels_last: bool

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def resolve_runtime(train: TrainConfig, dist: DistEnv) -> Runtime:
    """Device, backend, channels-last: NCCL/channels-last on GPU, gloo on CPU unless set. The
    precision is the run's (`run_on`), from whether this device computes in bf16."""
    want_gpu = wants_cuda(train.device, torch.cuda.is_available())
    if want_gpu and not torch.cuda.is_available():
        raise VitcError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    device = torch.device("cpu")
    if want_gpu:  # one GPU per task, or all of the node's GPUs per task (vitc.distributed.env.gpu_index)
        device = torch.device("cuda", gpu_index(dist.local_rank, dist.local_world_size, torch.cuda.device_count()))
    backend = train.dist_backend if train.dist_backend != "auto" else ("nccl" if want_gpu else "gloo")
    if backend == "nccl" and not want_gpu:
        raise VitcError("train.dist_backend=nccl needs GPUs; on CPU use gloo (or auto)")
    channels_last = want_gpu if train.channels_last == "auto" else train.channels_last
    return Runtime(device, want_gpu and gpu_has_bf16(), backend, channels_last)


def run_on(cfg: Config, dist: DistEnv, rt: Runtime, shards: Collection[str] = ("train", "val")) -> Run:
    """The run `cfg` describes on this job's ranks and this process's device (vitc.run.resolve_run)."""
    return resolve_run(cfg, dist.world_size, "gpu" if rt.on_gpu else "cpu", shards, bf16=rt.bf16)


def gpu_has_bf16() -> bool:
    """This GPU computes in bf16 natively (not emulated: a V100 has no bf16 units)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_GROUP: DistEnv | None = None  # the process group's rendezvous, once created


@contextmanager
def process_group(dist: DistEnv, rt: Runtime, timeout_s: float) -> Iterator[DistEnv]:
    """Join (or, for a lone process, create) the process group, and export the launcher
    variables for the duration of the block. Every rank calls this.

    The group is created once and lives until the process exits (DeepSpeed keeps references to
    it). The variables are exported only inside the block, because DeepSpeed reads LOCAL_RANK
    from the environment, and restored after it: a process started later (the next sweep run, an
    `sbatch` from this shell) must not inherit this rank and a port this group holds.
    """
    global _GROUP
    if _GROUP is None:
        if dist.world_size == 1 and dist.source == "single":
            # no launcher: a 1-process group on a free port, so two lone runs never collide
            dist = DistEnv(master_port=free_port())
        if rt.on_gpu:
            torch.cuda.set_device(rt.device)
            # fp32 means fp32: an fp32 run, `vitc eval` and the fp32 EMA model's evaluation. PyTorch
            # lets cuDNN convs use TF32 by default; bf16/fp16 tensors never use TF32 anyway.
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        tdist.init_process_group(rt.backend, init_method=f"tcp://{dist.master_addr}:{dist.master_port}",
                                 rank=dist.rank, world_size=dist.world_size,
                                 timeout=timedelta(seconds=timeout_s))
        atexit.register(_leave_group)
        _GROUP = dist
    exported = _GROUP.export()
    if rt.on_gpu:  # DeepSpeed takes LOCAL_RANK for the device ordinal (engine.py `_set_distributed_vars`)
        exported["LOCAL_RANK"] = str(rt.device.index)
    saved = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)
    try:
        yield _GROUP
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _leave_group() -> None:
    """At exit, while the interpreter still runs: let Gloo's worker threads finish, then drop the group.

    A Gloo worker thread frees each finished collective's tensors itself, which takes the GIL. If
    the program ends right after a collective (the last evaluation), that thread may still be
    waiting for the GIL when the interpreter finalizes; it is then made to exit mid-destructor and
    the process aborts with "terminate called without an active exception" after a successful run
    (seen in about one in five two-rank ZeRO-3 runs here; pytorch/pytorch#179291, #190489).
    destroy_process_group() does not join those threads while DeepSpeed still holds the group, so
    give them the GIL for a moment first.
    """
    time.sleep(0.2)  # releases the GIL: a finished collective's destructor needs microseconds
    tdist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states, as plain values (tensors, ints, lists) for a checkpoint."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def environment_summary(dist: DistEnv, rt: Runtime) -> dict:
    """What ran where: written to the run directory next to the resolved config."""
    import deepspeed

    return {
        "host": socket.gethostname(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "deepspeed": deepspeed.__version__, "cuda": torch.version.cuda,
        "gpus_visible": torch.cuda.device_count(), "threads": torch.get_num_threads(),
        "launcher": dist.source, "world_size": dist.world_size,
        "device": str(rt.device), "backend": rt.backend,
    }

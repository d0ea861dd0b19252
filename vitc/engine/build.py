"""The one place DeepSpeed wraps a model: the process group with DeepSpeed's distributed state on
it (`engine_session`), and `build_engine` - optimizer over the model's parameter groups, lr
schedule, generated DeepSpeed config, `deepspeed.initialize`. The trainer and `vitc bench engine`
both build their engines here, so a benchmark times the engine `vitc train` runs.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import deepspeed
import torch
from deepspeed.utils import set_z3_leaf_modules

from vitc.deepspeed_config import deepspeed_config
from vitc.distributed.env import DistEnv
from vitc.engine.optim import build_optimizer, optimizer_param_groups
from vitc.engine.runtime import Runtime, process_group
from vitc.engine.schedule import warmup_cosine
from vitc.run import Run
from vitc.schema import Config


@contextmanager
def engine_session(dist: DistEnv, rt: Runtime, timeout_s: float) -> Iterator[None]:
    """The process group, with DeepSpeed's distributed state on it, for engines built inside the
    block. Every rank."""
    if not rt.on_gpu:
        skip_shm_comm_build()
    with process_group(dist, rt, timeout_s):
        deepspeed.init_distributed(dist_backend=rt.backend)
        yield


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op (`deepspeed_shm_comm`) when the
    process group starts on the CPU: our collectives go through gloo, which needs no C++ build, and
    the JIT build costs 20-130 s (minutes when several processes wait on its lock) and prints noise.
    DeepSpeed's own switch for an op it must not build is `deepspeed.ops.__compatible_ops__`
    (read by deepspeed/comm/torch.py `build_shm_op`)."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def wrap(model: torch.nn.Module, optimizer, scheduler, ds_config: dict):
    """The one call to `deepspeed.initialize`: ZeRO, precision, accumulation and clipping."""
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=ds_config)
    return engine


def build_engine(model: torch.nn.Module, cfg: Config, run: Run, rt: Runtime,
                 steps_per_epoch: int | None = None, load_universal: bool = False):
    """(engine, DeepSpeed config) of `model` trained as `cfg` resolved to `run` says: the optimizer
    over the model's parameter groups at the run's lr, the warmup + cosine schedule when
    `steps_per_epoch` is given (else a constant lr, as benchmarks want), wrapped once, compiled
    when `train.compile` says so. Every rank."""
    ds_config = deepspeed_config(run, load_universal=load_universal)
    lr = run.lr
    optimizer = build_optimizer(model, cfg.optim, lr, rt.on_gpu, optimizer_param_groups(model, cfg, lr))
    leaves = getattr(model, "zero3_leaf_modules", ())
    if run.zero_stage == 3 and any(isinstance(m, leaves) for m in model.modules()):
        set_z3_leaf_modules(model, list(leaves))  # before `initialize`, which sets ZeRO-3's hooks
    scheduler = None
    if steps_per_epoch is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.schedule, steps_per_epoch))
    engine = wrap(model, optimizer, scheduler, ds_config)
    if cfg.train.compile:
        engine.compile()  # `nn.Module.compile` in place: no `_orig_mod.` prefix in any state dict
    return engine, ds_config

"""Run `vitc train` and write the trainer's full state, gathered, to OUT (rank 0) once it stands.

Usage (under torchrun or alone): python tests/world_size_probe.py OUT (train|resume) vitc-train-args...
`train`: the state after the run's last step (its checkpoint saved). `resume`: the state right after
the trainer restored the newest checkpoint, before any step. The state: every parameter's fp32
master and optimizer state (Adam's moments, SGD's momentum) (gathered from the ZeRO partitions with DeepSpeed's safe_get_full_*
helpers, which every rank calls), every buffer, the EMA weights, the lr of the next step and the
position in the schedule and the epoch.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as tdist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from vitc.checkpoint.ema_files import full_ema_state
from vitc.cli import main
from vitc.engine.trainer import Trainer

out, mode, train_args = sys.argv[1], sys.argv[2], sys.argv[3:]
fit = Trainer.fit


def full_state(trainer: Trainer) -> dict:
    module, state = trainer.engine.module, {}
    zero = trainer.engine.optimizer
    if hasattr(zero, "_hp_optimizer_states_linked"):
        # ZeRO-1/2 link each parameter to its Adam moments after the first step, for every param
        # group at once while only the first group has moments yet (DeepSpeed 0.19): link again
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()
    for name, param in module.named_parameters():
        state[f"param/{name}"] = safe_get_full_fp32_param(param).clone()
        for key in ("exp_avg", "exp_avg_sq") if trainer.cfg.optim.name == "adamw" else ("momentum_buffer",):
            state[f"{key}/{name}"] = safe_get_full_optimizer_state(param, key).clone()
    state.update({f"buffer/{k}": v.clone() for k, v in module.named_buffers()})
    if trainer.ema is not None:  # written as a checkpoint writes it (shards under ZeRO-3), then joined
        ema_dir = Path(out).with_suffix(".ema")
        trainer.ema.save(ema_dir, trainer.dist.rank, trainer.dist.world_size)
        tdist.barrier()
        state.update({f"ema/{k}": v for k, v in full_ema_state(ema_dir).items()})
    state["next_lr"] = torch.tensor(trainer.engine.get_lr(), dtype=torch.float64)
    state["schedule_fraction"] = torch.tensor(trainer.engine.lr_scheduler.last_epoch / (
        trainer.cfg.schedule.epochs * trainer.steps_per_epoch), dtype=torch.float64)
    state["epoch_position"] = torch.tensor(
        trainer.epoch + trainer.micro_in_epoch / (trainer.steps_per_epoch * trainer.accum), dtype=torch.float64)
    return state


def probed_fit(self: Trainer) -> str:
    stopped = fit(self) if mode == "train" else "max_steps"
    state = full_state(self)
    if self.dist.rank == 0:
        torch.save(state, out)
    return stopped


Trainer.fit = probed_fit
sys.exit(main(["train", *train_args]))

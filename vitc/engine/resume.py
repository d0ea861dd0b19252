"""What a checkpoint holds besides DeepSpeed's own state, and how a trainer gets it back: the
position, every rank's RNG and loader state, the buffers, the last evaluations, and the rules for
a checkpoint saved on another number of ranks. Mixed into `vitc.engine.trainer.Trainer`, whose
attributes these methods read and set."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as tdist

from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.ema_files import ema_saved
from vitc.checkpoint.store import CheckpointInfo
from vitc.config import config_to_dict
from vitc.engine.runtime import rng_state, seed_everything, set_rng_state
from vitc.errors import VitcError
from vitc.outcome import read_outcome

log = logging.getLogger(__name__)


class Resuming:
    """The checkpoint-content half of the trainer."""

    def _client_state(self) -> dict:
        """Position, config, and the RNG and loader state of every rank (gathered). Every rank."""
        mine = {"rng": rng_state(), "loader": self.loader.state_dict()}
        ranks: list = [None] * self.dist.world_size
        tdist.all_gather_object(ranks, mine)
        return {"epoch": self.epoch, "step": self.step, "micro_in_epoch": self.micro_in_epoch,
                "micro_per_epoch": self.steps_per_epoch * self.accum, "world_size": self.dist.world_size, "ranks": ranks,
                "config": config_to_dict(self.cfg), "buffers": checkpoint.buffer_state(self.engine.module),
                "architecture": checkpoint.architecture(self.run.spec),
                "classes": self.run.train.manifest.classes if self.run.train else None}

    def _restore(self, info: CheckpointInfo, tag: str) -> None:
        """Load weights, optimizer, schedule, position, RNG, loader and EMA; log one line saying
        what was loaded. Every rank."""
        root = checkpoint.checkpoint_root(self.run_dir)
        fresh = checkpoint.schedule_before_load(self.engine.lr_scheduler)
        universal = tag != info.tag
        with quiet_deepspeed(universal):
            path, client = self.engine.load_checkpoint(str(root), tag=tag)
        if path is None or not client:
            raise VitcError(f"could not load checkpoint {root / tag}: DeepSpeed found no loadable state")
        steps_per_parameter(self.engine.optimizer)
        self.step, self.epoch = client["step"], client["epoch"]
        if "buffers" in client:  # absent from checkpoints written before buffers travelled there
            checkpoint.restore_buffers(self.engine.module, client["buffers"])
        ranks = client["ranks"]
        detail = ""
        if len(ranks) == self.dist.world_size:
            self.micro_in_epoch = client["micro_in_epoch"]
            set_rng_state(ranks[self.dist.rank]["rng"])
            self.loader.load_state_dict(ranks[self.dist.rank]["loader"])
            if universal:  # another stage: DeepSpeed's ZeRO-3 universal load mixes up group hyperparameters
                checkpoint.continue_schedule(self.engine.lr_scheduler, fresh,
                                             self.epoch * self.steps_per_epoch + self.micro_in_epoch // self.accum)
        else:
            detail = self._restore_resized(client, fresh)
        if self.ema is not None and ema_saved(root / info.tag):  # else: the EMA starts here
            self.ema.load(root / info.tag, self.dist.rank, self.dist.world_size)
        self.last_saved = info
        self._restore_evaluations()
        log.info("resumed tag %s step %d, world %d→%d, stage %d→%d%s%s", info.tag, self.step, info.world_size,
                 self.dist.world_size, info.zero_stage, self.run.zero_stage,
                 " (universal checkpoint)" if universal else "", detail)

    def _restore_evaluations(self) -> None:
        """The last evaluations of the previous invocation's outcome, when not newer than the
        restored position (checkpoints are saved before an epoch's evaluation)."""
        previous = read_outcome(self.run_dir)
        if previous is not None:
            kept = [s if s is not None and s.epoch <= self.epoch else None
                    for s in (previous.evaluation, previous.ema_evaluation)]
            self.evaluation, self.ema_evaluation = kept

    def _restore_resized(self, client: dict, fresh: checkpoint.FreshSchedule) -> str:
        """Another world size: weights and optimizer state came through the universal checkpoint;
        the loader resumes the epoch at the same fraction (per-rank positions do not map onto a
        new sharding) and the RNG is re-seeded per rank from (seed, step). The lr schedule is this
        run's, continued at the same epoch position: with train.global_batch set that is the saved
        schedule itself; without it the global batch, its lr and the steps per epoch are the new
        world's, and the run ends after the steps that remain of the new schedule. Returns what
        the resume line adds about it."""
        fraction = client["micro_in_epoch"] / client["micro_per_epoch"]
        self.micro_in_epoch = int(fraction * self.steps_per_epoch) * self.accum
        self.loader.load_state_dict(client["ranks"][0]["loader"])
        seed_everything(self.cfg.train.seed + 1_000_003 * self.step + self.dist.rank)
        position = self.epoch * self.steps_per_epoch + self.micro_in_epoch // self.accum
        lr = checkpoint.continue_schedule(self.engine.lr_scheduler, fresh, position)
        self.total_steps = self.step + self.total_steps - position  # the optimizer step the run ends at
        return (f": epoch {self.epoch + 1} continues at {100 * fraction:.0f} %, schedule step {position} of "
                f"{self.cfg.schedule.epochs * self.steps_per_epoch} at global batch {self.global_batch} "
                f"(next lr {lr:.3g})")


def steps_per_parameter(optimizer) -> None:
    """Give every parameter its own `step` tensor where the torch optimizer wants it. A universal
    load sets `step` as DeepSpeed saved it: a number or a CPU tensor, and under ZeRO-3 one tensor
    object shared by every parameter group (stage3.py `load_hp_checkpoint_state_from_checkpoint_dir_stage3`),
    which AdamW's in-place `step += 1` would then advance once per group. Fused (and capturable)
    AdamW requires the tensor on the parameter's device (a CUDA run fails at its first step with
    it on the CPU); the others keep it on the CPU (torch's own rule: optim/optimizer.py
    `_process_value_according_to_param_policy`)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO wrapper, or torch's own at ZeRO-0
    for group in inner.param_groups:
        on_param = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            state = inner.state.get(param)
            if state and "step" in state:
                device = param.device if on_param else torch.device("cpu")
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32, device=device)


@contextmanager
def quiet_deepspeed(quiet: bool) -> Iterator[None]:
    """DeepSpeed's warnings while it loads a universal checkpoint ("MPU is not provided ...") say
    nothing about vitc's runs: raised to errors only for the block."""
    logger = logging.getLogger("DeepSpeed")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

"""What a checkpoint holds besides DeepSpeed's own state, and how a trainer gets it back: the
position, every rank's RNG and loader state, the buffers, the last evaluations, and the rules for
a checkpoint saved on another number of ranks. The trainer applies what `restore` returns."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.ema_files import ema_saved
from vitc.checkpoint.resume_point import ResumePoint
from vitc.config import config_to_dict
from vitc.data.ledger import RECORD, position_record
from vitc.engine.runtime import rng_state, seed_everything, set_rng_state
from vitc.errors import VitcError
from vitc.outcome import Score, read_outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """What a resume gives back to the trainer: its position, its schedule's end and the previous
    invocation's last evaluations."""

    step: int
    epoch: int
    micro_in_epoch: int
    total_steps: int  # the optimizer step the run ends at (moves when the world size changed)
    evaluation: Score | None
    ema_evaluation: Score | None


def log_data_position(trainer, event: str, resumed_from: int | None = None) -> None:
    """Where training is in its data (rank 0's loader state) into metrics.jsonl, at start and with
    every checkpoint: `vitc data ledger` replays the run from these records. Rank 0 writes."""
    if trainer.metrics is not None:
        trainer.metrics.write(RECORD, trainer.step, position_record(
            event, trainer.epoch, trainer.micro_in_epoch, trainer.steps_per_epoch * trainer.accum,
            trainer.loader.state_dict(), resumed_from))


def client_state(trainer) -> dict:
    """Position, config, and the RNG and loader state of every rank (gathered), for `trainer`'s
    next checkpoint. Every rank."""
    mine = {"rng": rng_state(), "loader": trainer.loader.state_dict()}
    ranks: list = [None] * trainer.dist.world_size
    tdist.all_gather_object(ranks, mine)
    run = trainer.run
    return {"epoch": trainer.epoch, "step": trainer.step, "micro_in_epoch": trainer.micro_in_epoch,
            "micro_per_epoch": trainer.steps_per_epoch * trainer.accum, "world_size": trainer.dist.world_size,
            "ranks": ranks, "config": config_to_dict(trainer.cfg),
            "buffers": checkpoint.buffer_state(trainer.engine.module),
            "architecture": checkpoint.architecture(run.spec),
            "classes": run.train.manifest.classes if run.train else None}


def restore(trainer, point: ResumePoint) -> Restored:
    """Load `point` into `trainer`'s engine, loader and EMA (weights, optimizer, schedule, RNG,
    loader position, buffers) and return where the run stands; log one line saying what was
    loaded. Reads the trainer; sets none of its attributes. Every rank."""
    engine, dist = trainer.engine, trainer.dist
    root = checkpoint.checkpoint_root(trainer.run_dir)
    fresh = checkpoint.schedule_before_load(engine.lr_scheduler)
    info, tag, universal = point.info, point.tag, point.universal
    with quiet_deepspeed(universal):
        path, client = engine.load_checkpoint(str(root), tag=tag)
    if path is None or not client:
        raise VitcError(f"could not load checkpoint {root / tag}: DeepSpeed found no loadable state")
    steps_per_parameter(engine.optimizer)
    step, epoch = client["step"], client["epoch"]
    if "buffers" in client:  # absent from checkpoints written before buffers travelled there
        checkpoint.restore_buffers(engine.module, client["buffers"])
    ranks = client["ranks"]
    detail, total_steps = "", trainer.total_steps
    if len(ranks) == dist.world_size:
        micro_in_epoch = client["micro_in_epoch"]
        set_rng_state(ranks[dist.rank]["rng"])
        trainer.loader.load_state_dict(ranks[dist.rank]["loader"])
        if universal:  # another stage: DeepSpeed's ZeRO-3 universal load mixes up group hyperparameters
            checkpoint.continue_schedule(engine.lr_scheduler, fresh,
                                         epoch * trainer.steps_per_epoch + micro_in_epoch // trainer.accum)
    else:
        micro_in_epoch, total_steps, detail = _restore_resized(trainer, client, fresh, step, epoch)
    if trainer.ema is not None and ema_saved(root / info.tag):  # else: the EMA starts here
        trainer.ema.load(root / info.tag, dist.rank, dist.world_size)
    log.info("resumed tag %s step %d, world %d→%d, stage %d→%d%s%s", info.tag, step, info.world_size,
             dist.world_size, info.zero_stage, trainer.run.zero_stage,
             " (universal checkpoint)" if universal else "", detail)
    return Restored(step, epoch, micro_in_epoch, total_steps, *_last_evaluations(trainer.run_dir, epoch))


def _last_evaluations(run_dir, epoch: int) -> tuple[Score | None, Score | None]:
    """The last evaluations of the previous invocation's outcome, when not newer than the
    restored position (checkpoints are saved before an epoch's evaluation)."""
    previous = read_outcome(run_dir)
    if previous is None:
        return None, None
    kept = [s if s is not None and s.epoch <= epoch else None for s in (previous.evaluation, previous.ema_evaluation)]
    return kept[0], kept[1]


def _restore_resized(trainer, client: dict, fresh: checkpoint.FreshSchedule, step: int,
                     epoch: int) -> tuple[int, int, str]:
    """Another world size: weights and optimizer state came through the universal checkpoint;
    the loader resumes the epoch at the same fraction (per-rank positions do not map onto a
    new sharding) and the RNG is re-seeded per rank from (seed, step). The lr schedule is this
    run's, continued at the same epoch position: with train.global_batch set that is the saved
    schedule itself; without it the global batch, its lr and the steps per epoch are the new
    world's, and the run ends after the steps that remain of the new schedule. Returns the
    micro-batch position in the epoch, the step the run ends at, and what the resume line adds."""
    fraction = client["micro_in_epoch"] / client["micro_per_epoch"]
    micro_in_epoch = int(fraction * trainer.steps_per_epoch) * trainer.accum
    trainer.loader.load_state_dict(client["ranks"][0]["loader"])
    seed_everything(trainer.cfg.train.seed + 1_000_003 * step + trainer.dist.rank)
    position = epoch * trainer.steps_per_epoch + micro_in_epoch // trainer.accum
    lr = checkpoint.continue_schedule(trainer.engine.lr_scheduler, fresh, position)
    total_steps = step + trainer.total_steps - position
    return micro_in_epoch, total_steps, (
        f": epoch {epoch + 1} continues at {100 * fraction:.0f} %, step {step}/{total_steps} as the step "
        f"lines count them, at global batch {trainer.global_batch} (next lr {lr:.3g})")


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

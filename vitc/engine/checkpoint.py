"""DeepSpeed checkpoints in RUN_DIR/checkpoints/step_XXXXXXXX, trusted only when complete.

A save is a collective: every rank writes its ZeRO partitions through `engine.save_checkpoint`,
with its own files (a ZeRO-3 EMA shard); then, after a barrier, rank 0 alone writes the shared
files and the completeness marker, atomically, last. Resume takes the newest tag with a marker, so
a save cut short by a kill -9 is never chosen. A tag saved on another number of ranks is first
converted by DeepSpeed's universal-checkpoint tool (`deepspeed.checkpoint.ds_to_universal`), which
needs `universal_checkpoint_info` in the client state; buffers travel in the client state beside it.
"""

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as tdist

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "vitc_complete.json"
UNIVERSAL_SUFFIX = "_universal"
# Required by deepspeed.checkpoint.ds_to_universal; 0.2 is the version DeepSpeed's own trainers write.
UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}
CONVERT_POLL_S = 2.0  # how often ranks other than 0 look for a finished conversion


@dataclass(frozen=True)
class CheckpointInfo:
    """The completeness marker of one saved tag."""

    tag: str
    step: int
    epoch: int
    world_size: int
    zero_stage: int


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Every complete checkpoint of a run, oldest first; tags without a marker are ignored."""
    found = []
    for marker in checkpoint_root(run_dir).glob(f"step_*/{MARKER}"):
        try:
            found.append(CheckpointInfo(**json.loads(marker.read_text())))
        except (json.JSONDecodeError, TypeError) as e:
            raise VitcError(f"checkpoint marker {marker} is unreadable ({e}); delete its directory")
    return sorted(found, key=lambda c: c.step)


def newest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def save(engine, run_dir: Path, info: CheckpointInfo, client_state: dict, rank: int,
         keep_last: int, shared_files: dict[str, Callable[[Path], None]] | None = None,
         rank_files: Callable[[Path], None] | None = None) -> None:
    """Save one checkpoint. Every rank calls this; `shared_files` (name -> writer(path)) are
    written by rank 0 into the tag directory before the marker, `rank_files(tag_dir)` by every
    rank (its own files, e.g. its EMA shard) before the marker too."""
    root = checkpoint_root(run_dir)
    if rank == 0 and (root / info.tag).exists():
        # never complete (resume takes the newest complete tag): a save cut short, whose stray
        # files (e.g. another world size's partitions) must not mix with this one's
        shutil.rmtree(root / info.tag)
    tdist.barrier()
    state = {**client_state, "universal_checkpoint_info": UNIVERSAL_INFO}
    engine.save_checkpoint(str(root), tag=info.tag, client_state=state, save_latest=False)
    if rank_files is not None:
        rank_files(root / info.tag)
    tdist.barrier()  # every rank's partitions are on disk before the marker says so
    if rank == 0:
        for name, write in (shared_files or {}).items():
            write(root / info.tag / name)
        atomic_write_text(root / info.tag / MARKER, json.dumps(asdict(info)) + "\n")
        prune(run_dir, keep_last)
        log.info("saved checkpoint %s (epoch %d, step %d)", root / info.tag, info.epoch, info.step)
    tdist.barrier()


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and any incomplete tag older
    than the newest complete one (a save that was cut short). Rank 0 only."""
    done = complete_checkpoints(run_dir)
    if not done:
        return
    keep = {c.tag for c in done[-max(keep_last, 1):]}
    newest = done[-1].step
    for path in checkpoint_root(run_dir).glob("step_*"):
        base = path.name.removesuffix(UNIVERSAL_SUFFIX)
        step = int(base.removeprefix("step_")) if base.removeprefix("step_").isdigit() else None
        if base not in keep and step is not None and step <= newest:
            shutil.rmtree(path, ignore_errors=True)


def loadable_tag(run_dir: Path, info: CheckpointInfo, world_size: int, zero_stage: int, rank: int) -> tuple[str, bool]:
    """(tag to load, whether it is a universal checkpoint). A ZeRO checkpoint saved on another
    number of ranks (or at another stage) is converted once, by rank 0, into TAG_universal while
    the other ranks wait for it on the filesystem: no collective, so no collective timeout bounds
    a conversion (`vitc train` calls this before the process group forms). Every rank calls this."""
    same_layout = info.world_size == world_size and info.zero_stage == zero_stage
    if same_layout or (info.zero_stage == 0 and zero_stage == 0):
        return info.tag, False  # ZeRO-0 keeps whole optimizer state: any world size loads it
    if info.zero_stage == 0 or zero_stage == 0:
        raise VitcError(f"checkpoint {info.tag} was saved at ZeRO stage {info.zero_stage}; this run "
                        f"uses train.zero_stage={zero_stage}. DeepSpeed's universal checkpoints "
                        "convert between ZeRO stages 1-3 only: set train.zero_stage accordingly")
    universal = checkpoint_root(run_dir) / (info.tag + UNIVERSAL_SUFFIX)
    if rank == 0 and not universal.is_dir():
        log.info("checkpoint %s was saved on %d rank(s), this run has %d: converting it to a "
                 "universal checkpoint", info.tag, info.world_size, world_size)
        convert_to_universal(checkpoint_root(run_dir), info.tag)
    while not universal.is_dir():  # rank 0 converts; a failure there ends the job (torchrun, srun --kill-on-bad-exit)
        time.sleep(CONVERT_POLL_S)
    return universal.name, True


def convert_to_universal(root: Path, tag: str, workers: int | None = None) -> Path:
    """Run `python -m deepspeed.checkpoint.ds_to_universal` on root/tag into root/TAG_universal with
    `workers` parallel extract and merge processes (default: this process's CPUs), its progress in
    the log. It works in root/.convert-TAG, renamed at the end: a finished conversion is a
    TAG_universal directory and is kept; a half one is the work directory, which is redone."""
    workers = workers or len(os.sched_getaffinity(0))
    work = root / f".convert-{tag}"
    if work.exists():
        log.warning("an unfinished conversion of %s was left in %s: converting again", tag, work)
        shutil.rmtree(work)
    out = work / (tag + UNIVERSAL_SUFFIX)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(root / tag),
           "--output_folder", str(out), "--num_extract_workers", str(workers),
           # merging holds whole tensors per worker: DeepSpeed advises fewer merge than extract workers
           "--num_merge_workers", str(max(1, workers // 2))]
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.info("ds_to_universal: %s", line[-300:])
                tail = [*tail[-4:], line]
    if proc.returncode != 0:
        raise VitcError(f"converting checkpoint {root / tag} to a universal checkpoint failed "
                        f"(kept for a retry in {work}):\n" + "\n".join(tail))
    os.replace(out, root / out.name)
    shutil.rmtree(work, ignore_errors=True)
    return root / out.name


def buffer_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer of `module` (BatchNorm statistics), on the CPU, for the client state: a universal
    checkpoint carries parameters and optimizer state only, and DeepSpeed skips the module's
    state dict when it loads one. ZeRO-3 partitions parameters, not buffers: they are whole here."""
    return {name: buffer.detach().cpu().clone() for name, buffer in module.named_buffers()}


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy `buffer_state`'s tensors back into `module`; every buffer must be there."""
    own = dict(module.named_buffers())
    if own.keys() != saved.keys():
        raise VitcError(f"checkpoint buffers {sorted(saved)[:4]}... do not match the model's {sorted(own)[:4]}...")
    with torch.no_grad():
        for name, value in saved.items():
            own[name].copy_(value)


@dataclass(frozen=True)
class FreshSchedule:
    """The lr schedule and optimizer hyperparameters as built for this run, before a checkpoint
    overwrote them with the saving run's (`schedule_before_load`)."""

    lambdas: list
    base_lrs: list[float]
    groups: list[dict]  # each param group's hyperparameters, without its parameters


def schedule_before_load(scheduler) -> FreshSchedule:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in scheduler.optimizer.param_groups]
    # copies: loading a LambdaLR state updates its lambda objects in place
    return FreshSchedule([copy.copy(f) for f in scheduler.lr_lambdas], list(scheduler.base_lrs), groups)


def continue_schedule(scheduler, fresh: FreshSchedule, position: int) -> float:
    """Put this run's own schedule (its length, its lr at its global batch) back on `scheduler`,
    at optimizer step `position` of it; returns the lr of the next step. A checkpoint from another
    world size carries the saving run's schedule, and DeepSpeed's ZeRO-3 universal load gives every
    param group the first group's hyperparameters (no-decay groups would decay): both are undone."""
    scheduler.lr_lambdas, scheduler.base_lrs = list(fresh.lambdas), list(fresh.base_lrs)
    scheduler.last_epoch = position
    for group, hyper, base, multiplier in zip(scheduler.optimizer.param_groups, fresh.groups,
                                              fresh.base_lrs, fresh.lambdas):
        group.update(hyper)
        group["lr"] = base * multiplier(position)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    return scheduler._last_lr[0]

"""DeepSpeed checkpoints in RUN_DIR/checkpoints/step_XXXXXXXX, trusted only when complete.

A save is a collective: every rank writes its ZeRO partitions through `engine.save_checkpoint`,
with its own files (a ZeRO-3 EMA shard); then, after a barrier, rank 0 alone writes the shared
files and the completeness marker, atomically, last. Resume takes the newest tag with a marker, so
a save cut short by a kill -9 is never chosen. A tag saved on another number of ranks is first
converted by DeepSpeed's universal-checkpoint tool (`deepspeed.checkpoint.ds_to_universal`), which
needs `universal_checkpoint_info` in the client state.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed as tdist

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "vitc_complete.json"
UNIVERSAL_SUFFIX = "_universal"
# Required by deepspeed.checkpoint.ds_to_universal; 0.2 is the version DeepSpeed's own trainers write.
UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}


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
    number of ranks (or at another stage) is converted once, by rank 0, into TAG_universal.
    Every rank calls this (it ends in a barrier)."""
    same_layout = info.world_size == world_size and info.zero_stage == zero_stage
    if same_layout or (info.zero_stage == 0 and zero_stage == 0):
        return info.tag, False  # ZeRO-0 keeps whole optimizer state: any world size loads it
    if info.zero_stage == 0 or zero_stage == 0:
        raise VitcError(f"checkpoint {info.tag} was saved at ZeRO stage {info.zero_stage}; this run "
                        f"uses train.zero_stage={zero_stage}. DeepSpeed's universal checkpoints "
                        "convert between ZeRO stages 1-3 only: set train.zero_stage accordingly")
    universal = info.tag + UNIVERSAL_SUFFIX
    if rank == 0 and not (checkpoint_root(run_dir) / universal).is_dir():
        log.info("checkpoint %s was saved on %d rank(s), this run has %d: converting it to a "
                 "universal checkpoint", info.tag, info.world_size, world_size)
        convert_to_universal(checkpoint_root(run_dir), info.tag)
    tdist.barrier()
    return universal, True


def convert_to_universal(root: Path, tag: str) -> Path:
    """Run `python -m deepspeed.checkpoint.ds_to_universal` on root/tag into root/TAG_universal,
    through a temporary directory renamed at the end (a reader never sees half a conversion)."""
    work = root / f".convert-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / (tag + UNIVERSAL_SUFFIX)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
           "--input_folder", str(root / tag), "--output_folder", str(out), "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise VitcError(f"converting checkpoint {root / tag} to a universal checkpoint failed:\n{tail}")
    os.replace(out, root / out.name)
    shutil.rmtree(work, ignore_errors=True)
    return root / out.name

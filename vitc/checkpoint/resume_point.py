"""Which checkpoint a starting run resumes from and which tag DeepSpeed loads: decided once per start.

A checkpoint of another layout (world size or ZeRO stage) is found and converted before the process
group forms (`before_joining`), so no collective timeout bounds the conversion; otherwise rank 0
reads the newest intact checkpoint once the group exists and every rank takes its answer (`agreed`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch.distributed as tdist

from vitc.checkpoint.store import (
    CheckpointInfo,
    newest_checkpoint,
    newest_intact_checkpoint,
)
from vitc.checkpoint.universal import loadable_tag


@dataclass(frozen=True)
class ResumePoint:
    info: CheckpointInfo  # the newest intact checkpoint
    tag: str  # what DeepSpeed loads: info.tag, or its universal conversion
    universal: bool


def before_joining(run_dir: Path, world_size: int, zero_stage: int, rank: int,
                   optimizer: str) -> ResumePoint | None:
    """Every rank, before the process group forms: when the newest checkpoint has another layout,
    the newest intact one (every rank reads the same files; rank 0 says what it skipped) and its
    universal conversion (rank 0 converts, the others wait on the filesystem). None when there is
    nothing to convert: `agreed` decides then."""
    saved = newest_checkpoint(run_dir)
    if saved is None or (saved.world_size, saved.zero_stage) == (world_size, zero_stage):
        return None
    info = newest_intact_checkpoint(run_dir, quiet=rank != 0)
    return _point(run_dir, info, world_size, zero_stage, rank, optimizer)


def agreed(run_dir: Path, world_size: int, zero_stage: int, rank: int, optimizer: str) -> ResumePoint | None:
    """Every rank, in the process group: rank 0's newest intact checkpoint (one integrity read),
    shared with every rank."""
    found: list = [newest_intact_checkpoint(run_dir) if rank == 0 else None]
    tdist.broadcast_object_list(found, src=0)
    # same layout: the tag itself; an older intact tag of another layout is converted here
    return _point(run_dir, found[0], world_size, zero_stage, rank, optimizer)


def _point(run_dir: Path, info: CheckpointInfo | None, world_size: int, zero_stage: int, rank: int,
           optimizer: str) -> ResumePoint | None:
    if info is None:
        return None
    tag, universal = loadable_tag(run_dir, info, world_size, zero_stage, rank, optimizer)
    return ResumePoint(info, tag, universal)

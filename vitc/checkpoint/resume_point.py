"""Which checkpoint a starting run resumes from and which tag DeepSpeed loads: decided once per start.

Rank 0 alone reads the checkpoints' files against their markers (the integrity check reads every
file of a tag: at 128 ranks on a 14 GB checkpoint, one read instead of 128) and picks the newest
intact one; every rank takes its answer through one broadcast, then the same tag (`agreed`). A tag
of another layout (world size or ZeRO stage) is converted after that broadcast, by rank 0, while
the other ranks wait for the converted directory on the filesystem: no collective is pending then,
so no collective timeout bounds a conversion.
"""

from dataclasses import dataclass
from pathlib import Path

import torch.distributed as tdist

from vitc.checkpoint.store import CheckpointInfo, newest_intact_checkpoint
from vitc.checkpoint.universal import loadable_tag
from vitc.errors import VitcError


@dataclass(frozen=True)
class ResumePoint:
    info: CheckpointInfo  # the newest intact checkpoint
    tag: str  # what DeepSpeed loads: info.tag, or its universal conversion
    universal: bool


def agreed(run_dir: Path, world_size: int, zero_stage: int, rank: int, optimizer: str) -> ResumePoint | None:
    """Every rank, in the process group: rank 0's newest intact checkpoint (its one integrity read,
    and its one line naming what it skipped), shared with every rank; then the tag to load, a
    universal conversion when its layout differs (rank 0 converts, the others wait on the
    filesystem, outside any collective). None when there is nothing to resume."""
    info = newest_intact_on_rank0(run_dir, rank)
    if info is None:
        return None
    tag, universal = loadable_tag(run_dir, info, world_size, zero_stage, rank, optimizer)
    return ResumePoint(info, tag, universal)


def newest_intact_on_rank0(run_dir: Path, rank: int) -> CheckpointInfo | None:
    """The newest intact checkpoint of `run_dir` as rank 0 reads it (the integrity check's one read
    of every file, its one line naming what it skipped), given to every rank by one broadcast; in a
    process without a process group, its own read. A run directory with nothing intact raises the
    same one-line error on every rank: none waits for rank 0. Who reads is the process group's rank 0
    (`rank` says only which rank logs what was skipped without a group)."""
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return newest_intact_checkpoint(run_dir, quiet=rank != 0)
    found: list = [_newest_intact(run_dir) if tdist.get_rank() == 0 else None]
    tdist.broadcast_object_list(found, src=0)
    if isinstance(found[0], VitcError):
        raise found[0]
    return found[0]


def _newest_intact(run_dir: Path) -> CheckpointInfo | VitcError | None:
    try:
        return newest_intact_checkpoint(run_dir)
    except VitcError as error:
        return error

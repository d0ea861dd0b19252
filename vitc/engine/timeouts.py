"""How long a collective may wait: a step's collectives briefly (train.collective_timeout_min), a
checkpoint's save or load longer (checkpoint.save_timeout_min), and a peer lost in between named
in one line.

torch bounds every collective of a process group by the group's timeout (gloo raises, NCCL aborts
the communicator under TORCH_NCCL_ASYNC_ERROR_HANDLING); `set_timeout` changes it for what follows,
so the long bound holds only while files are written or read.
"""

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as tdist

from vitc.distributed.env import DistEnv
from vitc.errors import VitcError
from vitc.schema import Config

# how gloo and NCCL word a peer that died or stopped answering (torch raises RuntimeError/DistError)
PEER_LOST = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe",
             "nccl communicator was aborted", "watchdog caught collective operation timeout")


def collective_failure(error: BaseException, dist: DistEnv, cfg: Config) -> VitcError | None:
    """A collective that failed because a peer rank died or hung, as one line naming this rank, its
    host and the timeout; None for any other error."""
    if not isinstance(error, RuntimeError) or isinstance(error, VitcError):
        return None
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not any(marker in str(error).lower() for marker in PEER_LOST):
        return None
    return VitcError(f"rank {dist.rank} of {dist.world_size} on {socket.gethostname()}: a collective failed "
                     f"({text[:200]}): another rank died or stopped answering for more than "
                     f"train.collective_timeout_min={cfg.train.collective_timeout_min:g} min; the job ends "
                     f"here and resumes from the newest complete checkpoint in {cfg.train.run_dir}")


@contextmanager
def collectives_may_wait(minutes: float, after_min: float) -> Iterator[None]:
    """Collectives in the block (a checkpoint's save or load through a shared filesystem) may wait
    `minutes`; `after_min` (train.collective_timeout_min) again after it. Every rank."""
    tdist.distributed_c10d.set_timeout(timedelta(minutes=minutes))
    try:
        yield
    finally:
        tdist.distributed_c10d.set_timeout(timedelta(minutes=after_min))

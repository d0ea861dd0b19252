"""One `vitc train` per run directory: an exclusive lock on RUN_DIR/.vitc.lock, held by rank 0.

Two trainings writing one run directory interleave their metrics and overwrite each other's
checkpoints. The lock is a POSIX record lock (lockf, fcntl(F_SETLK)), which belongs to the process:
the kernel releases it when the holder ends, a kill -9 included, so a stale lock file never blocks
the next run; and the loader workers the trainer forks do not hold it. (An flock(2) lock belongs to
the open file, which forked workers share: after a kill -9 of the trainer its orphaned workers kept
the directory locked until they noticed, seconds later, and an immediate resume was refused.) A
POSIX lock is also released when its process closes any descriptor of the file: only this module
opens it. The file holds the holder's host and pid for the error line of the one that is refused.
"""

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitc.errors import VitcError

LOCK_FILE = ".vitc.lock"


@contextmanager
def run_lock(run_dir: Path, held: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the block (`held` False: a rank other than 0, no lock).
    Raises a one-line VitcError naming the holder when another process has it."""
    if not held:
        yield
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise VitcError(f"train.run_dir {run_dir} is a file: expected a directory (or a path that does not exist)")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):  # those two: held by another process
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise VitcError(f"{run_dir} is in use by another `vitc train` ({holder}, lock {path}): wait "
                            "for it to end, or set train.run_dir to another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

"""One `vitc train` per run directory: an exclusive lock on RUN_DIR/.vitc.lock, held by rank 0.

Two trainings writing one run directory interleave their metrics and overwrite each other's
checkpoints. The lock is a POSIX record lock (lockf, fcntl(F_SETLK)), which belongs to the process:
the kernel releases it when the holder ends, a kill -9 included, so a stale lock file never blocks
the next run; and the loader workers the trainer forks do not hold it. (An flock(2) lock belongs to
the open file, which forked workers share: after a kill -9 of the trainer its orphaned workers kept
the directory locked until they noticed, seconds later, and an immediate resume was refused.) A
POSIX lock is also released when its process closes any descriptor of the file: only this module
opens it. The file holds the holder's host and pid for the error line of the one that is refused.

Lustre and NFS mounts without lock support refuse lockf with ENOSYS, ENOLCK or EOPNOTSUPP. There
the lock is RUN_DIR/.vitc.lock.held, created exclusively (O_CREAT | O_EXCL, atomic on NFSv3+ and
Lustre) holding the holder's host, pid and Slurm job, and removed when the block ends. A kill -9
leaves it behind, so it is stale, and taken over, when its holder is gone: a pid that no longer
runs on this host, or the same Slurm job as ours (a requeued job keeps its id, and one job runs
once at a time). A file left by another host and job is named in the error line, to be removed by
hand once no `vitc train` runs there.
"""

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitc.errors import VitcError

log = logging.getLogger(__name__)

LOCK_FILE = ".vitc.lock"
HELD_FILE = ".vitc.lock.held"  # the fallback where the filesystem has no POSIX locks
UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


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
            if e.errno in UNSUPPORTED:
                log.info("%s: the filesystem has no POSIX locks (%s); locking with %s instead",
                         run_dir, errno.errorcode.get(e.errno, e.errno), HELD_FILE)
                with held_file(run_dir):
                    yield
                return
            if e.errno not in (errno.EACCES, errno.EAGAIN):  # those two: held by another process
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise _in_use(run_dir, holder, path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _in_use(run_dir: Path, holder: str, path: Path) -> VitcError:
    return VitcError(f"{run_dir} is in use by another `vitc train` ({holder}, lock {path}): wait "
                     "for it to end, or set train.run_dir to another directory")


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}


@contextmanager
def held_file(run_dir: Path) -> Iterator[None]:
    """The lock as an exclusively created file holding host, pid and Slurm job (see the module)."""
    path = run_dir / HELD_FILE
    me = _me()
    for _ in range(2):  # a stale file is removed once, then created again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _holder(path)
            why = _stale(holder, me)
            if why is None:
                raise _in_use(run_dir, _describe(holder) + "; if no `vitc train` runs there, remove the "
                              "lock file", path) from None
            log.warning("%s: taking over the lock of %s (%s)", run_dir, _describe(holder), why)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    else:
        raise _in_use(run_dir, _describe(_holder(path)), path)
    try:
        yield
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written, or not ours: treated as held


def _describe(holder: dict) -> str:
    job = f", Slurm job {holder['job']}" if holder.get("job") else ""
    return f"host {holder.get('host', 'unknown')}, pid {holder.get('pid', 'unknown')}{job}"


def _stale(holder: dict, me: dict) -> str | None:
    """Why the lock file's holder is gone; None when it may still run."""
    if holder.get("job") and holder["job"] == me["job"] and holder.get("pid") != me["pid"]:
        return f"an earlier run of this Slurm job {me['job']}"
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"pid {holder['pid']} no longer runs on this host"
        except PermissionError:
            return None  # runs, as another user
    return None

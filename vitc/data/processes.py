"""Worker processes (loader workers, shard-build workers) leave signals to their parent and end with it.

Slurm's `scancel` (and many sites' preemption) signals every process of a job step, and a
terminal's Ctrl-C the whole foreground process group: a loader worker that dies of it makes
DataLoader raise "worker killed by signal" in the trainer while it saves its checkpoint, and a
shard-build worker that outlives its parent finishes a shard nobody collects. So workers ignore
SIGINT, SIGTERM and SIGUSR1 (the parent decides: the trainer saves and exits, a build stops), and
ask Linux to SIGKILL them when their parent ends (prctl PR_SET_PDEATHSIG), whatever ends it.
"""

import atexit
import contextlib
import ctypes
import multiprocessing
import multiprocessing.util  # its exit handler must be registered before ours
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
JOB_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def follow_parent(parent_pid: int) -> None:
    """In a freshly started worker of `parent_pid`: ignore the job's signals and die with the parent.

    PR_SET_PDEATHSIG fires when the thread that forked the worker ends: loader workers and
    `imap_unordered`'s are forked by their parent's main thread. Elsewhere than Linux only the
    signals are ignored.
    """
    for signum in JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent ended before the request took effect
        os._exit(1)


def stop_children(deadline_s: float = 3.0) -> list[int]:
    """End every child process multiprocessing started that is still alive: SIGTERM, a join bounded
    by `deadline_s` in all, then SIGKILL for the ones left (workers ignore SIGTERM while their parent
    lives, see above). Returns the pids that had to be killed.

    multiprocessing's own exit handler SIGTERMs its daemonic children and then joins them without a
    deadline, so one child that outlives it (a loader worker waiting for a pass that never comes)
    would hold the process, and a cluster job its GPUs, until the time limit. Every exit path of
    `vitc` calls this first (vitc.cli.main and the exit handler below).
    """
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    end = time.monotonic() + deadline_s
    for child in children:
        child.join(max(0.0, end - time.monotonic()))
    killed = [child.pid for child in children if child.is_alive()]
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(1.0)
    return killed


# registered after multiprocessing.util's exit handler (imported above), so it runs before it: atexit is LIFO
atexit.register(stop_children)


def imap_unordered(fn: Callable[[T], R], tasks: list[T], workers: int) -> Iterator[R]:
    """`fn` over `tasks` in `workers` processes, results as they finish; an exception in `fn` is raised here.

    multiprocessing.Pool cannot be stopped safely once a worker is killed (its workers share queue
    locks, and a worker killed while holding one deadlocks `Pool.terminate`); these workers share
    nothing but one pipe each with this process, so when it stops (a signal, an error, the caller
    leaving the loop) it kills them outright and none finishes a task after it.
    """
    context = multiprocessing.get_context()
    todo, procs, conns, busy = list(reversed(tasks)), [], [], set()
    try:
        for _ in range(min(workers, len(tasks))):
            mine, theirs = context.Pipe()
            procs.append(context.Process(target=_serve, args=(fn, theirs, os.getpid()), daemon=True))
            procs[-1].start()
            theirs.close()
            conns.append(mine)
            mine.send(todo.pop())
            busy.add(mine)
        while busy:
            for conn in wait(list(busy)):
                ok, value = _receive(conn)
                busy.discard(conn)
                if todo:
                    conn.send(todo.pop())
                    busy.add(conn)
                if not ok:
                    raise value
                yield value
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for conn in conns:  # not the pipe's end: workers forked later hold copies of this end
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        for proc in procs:
            proc.join()


def _receive(conn) -> tuple[bool, object]:
    try:
        return conn.recv()
    except EOFError:  # killed from outside (the OOM killer): its task is lost
        return False, RuntimeError("a worker process ended without finishing its task")


def _serve(fn: Callable, conn, parent_pid: int) -> None:
    follow_parent(parent_pid)
    while True:
        task = conn.recv()
        if task is None:
            return
        try:
            conn.send((True, fn(task)))
        except Exception as e:  # sent as data: the parent raises it (VitcError, BadInput, ...)
            conn.send((False, e))

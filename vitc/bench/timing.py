"""Contenders timed alike: each in its own fresh process, rounds interleaved A B A B.

A contender shares nothing with another: not a global patch (ZeRO-3 replaces
`torch.nn.functional.linear` for its whole process), not an allocator's state, not a thread pool.
Each child sets vitc's heap settings (`vitc.heap`), builds its step, warms up, then waits; the
parent asks the children for one round each in turn, so only one runs at a time and a shared
machine's drift hits all alike; each round starts with the next contender, so that no place in a
round favours one loop. (On this 2-core VM the same plain loop timed twice still differed by
20-33 % with rotation: the difference follows the process, not its place; `vitc bench engine`
prints it as the noise floor.) A round is timed inside its child, by wall clock and by the CPU
time of the child and every process under it (a loader's workers), the same accounting for all.
"""

import importlib
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass, field

import psutil

from vitc.errors import VitcError
from vitc.heap import retain_freed_memory


@dataclass(frozen=True)
class Contender:
    """`factory` ('module:function') called with `kwargs` in the child returns the step: a callable
    returning how many items (images) it processed; its optional `details()` returns extra floats."""

    name: str
    factory: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Timing:
    """Medians over the rounds: items per wall-clock second and per CPU-second (per core)."""

    rate: float
    per_core: float
    startup_s: float  # building the step and its warm-up (torch.compile's compile time lands here)
    details: dict[str, float]


def cpu_seconds() -> float:
    """CPU time of this process and all its children: the finished ones (reaped) and the live ones
    (persistent DataLoader workers), whose time the kernel adds to RUSAGE_CHILDREN only once reaped."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:  # ended between listing and reading
            continue
        total += times.user + times.system
    return total


def _child(conn, factory: str, kwargs: dict, warmup: int) -> None:
    retain_freed_memory()  # vitc's heap settings, in every contender alike
    start = time.perf_counter()
    module, function = factory.split(":")
    step = getattr(importlib.import_module(module), function)(**kwargs)
    for _ in range(warmup):
        step()
    conn.send(time.perf_counter() - start)
    while (iters := conn.recv()) is not None:
        cpu, wall = cpu_seconds(), time.perf_counter()
        items = sum(step() for _ in range(iters))
        conn.send((items / (time.perf_counter() - wall), items / max(cpu_seconds() - cpu, 1e-9)))
    conn.send(step.details() if hasattr(step, "details") else {})


def _receive(conn, process, name: str):
    """The child's next message; a child that died (an exception, out of memory) ends the bench."""
    while not conn.poll(1.0):
        if not process.is_alive():
            raise VitcError(f"benchmark contender '{name}' exited with code {process.exitcode} "
                            "(its traceback is above)")
    return conn.recv()


def time_in_processes(contenders: list[Contender], warmup: int, iters: int, rounds: int) -> dict[str, Timing]:
    """Each contender in a fresh spawned process; started one after another (no two warm up at
    once), then `rounds` rounds of `iters` steps each, interleaved; medians per contender."""
    ctx = multiprocessing.get_context("spawn")
    children, startup, details = {}, {}, {}
    try:
        for c in contenders:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_child, args=(child, c.factory, c.kwargs, warmup))
            process.start()
            children[c.name] = (parent, process)
            startup[c.name] = _receive(parent, process, c.name)
        samples: dict[str, list[tuple[float, float]]] = {c.name: [] for c in contenders}
        names = list(children)
        for r in range(rounds):  # each round starts one later: every contender takes every place
            for name in names[r % len(names):] + names[:r % len(names)]:
                conn, process = children[name]
                conn.send(iters)
                samples[name].append(_receive(conn, process, name))
        for name, (conn, process) in children.items():
            conn.send(None)
            details[name] = _receive(conn, process, name)
    finally:  # after an error the other children wait for a round that will not come
        for conn, process in children.values():
            process.join(timeout=30 if len(details) == len(children) else 0)
            if process.is_alive():
                process.terminate()
    return {name: Timing(statistics.median(s[0] for s in samples[name]),
                         statistics.median(s[1] for s in samples[name]), startup[name], details[name])
            for name in samples}


"""Contenders timed alike: each in fresh processes of its own, rounds interleaved A B A B.

A contender shares nothing with another: not a global patch (ZeRO-3 replaces
`torch.nn.functional.linear` for its whole process), not an allocator's state, not a thread pool.
Each child sets vitc's heap settings (`vitc.heap`), builds its step, warms up, then waits; the
parent asks the children for one round each in turn, so only one runs at a time and a shared
machine's drift hits all alike; each round starts with the next child, so that no place in a
round favours one loop. A round is timed inside its child, by wall clock and by the CPU time of
the child and every process under it (a loader's workers), the same accounting for all.

On this 2-core VM the same plain loop in two processes differed by 7-33 % with rotation, the
difference following the process (and the order processes were started in), not its place in a
round: a speed each process keeps for its life. One process per contender measures that as much
as the contender, so each contender may run in `processes` processes, in groups one after another
(A1 B1 C1, then B2 C2 A2, then C3 A3 B3: every contender takes every start position; only one
group is alive at a time, so memory stays one group's), and its figure is its median process;
a ratio of two contenders is taken group by group and the median over the groups (`paired_ratio`),
so that the machine's drift from one group to the next (10 % over the 10 minutes of a 3-group
`vitc bench engine` here) cancels.

That speed was mostly where a process's memory came from: the first processes got the scattered
pages of small free blocks (vitc.bench.fragments). The parent now holds those before each group
starts; the start-order trend is gone and six identical loops agree within 2.9 % (docs/engine.md).
"""

import importlib
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass, field

import psutil

from vitc.bench.fragments import FragmentHold
from vitc.errors import VitcError
from vitc.heap import retain_freed_memory
from vitc.log import setup_logging


@dataclass(frozen=True)
class Contender:
    """`factory` ('module:function') called with `kwargs` in the child returns the step: a callable
    returning how many items (images) it processed; its optional `details()` returns extra floats."""

    name: str
    factory: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Timing:
    """One contender: per process (one per group, in group order) its median over the rounds of
    items per wall-clock second and per CPU-second (per core); the figures are its median process's."""

    startup_s: float  # building the step and its warm-up (torch.compile's compile time lands here)
    details: dict[str, float]
    group_rates: tuple[float, ...]
    group_per_core: tuple[float, ...]
    round_per_core: tuple[tuple[float, ...], ...] = ()  # per process, its rounds' items per CPU-second

    @property
    def rate(self) -> float:
        return statistics.median(self.group_rates)

    @property
    def per_core(self) -> float:
        return statistics.median(self.group_per_core)

    @property
    def processes(self) -> int:
        return len(self.group_rates)

    @property
    def spread(self) -> float:
        """Its fastest process's rate / its slowest's - 1 (0 with one process)."""
        return max(self.group_rates) / min(self.group_rates) - 1.0

    @property
    def per_core_spread(self) -> float:
        return max(self.group_per_core) / min(self.group_per_core) - 1.0


def paired_ratio(a: Timing, b: Timing, per_core: bool = False) -> float:
    """a's rate over b's, group by group (two processes timed side by side, rounds interleaved),
    median over the groups: the machine's drift between groups cancels, as it does not in a ratio
    of the two medians. With one group, a.rate / b.rate."""
    xs, ys = (a.group_per_core, b.group_per_core) if per_core else (a.group_rates, b.group_rates)
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True))


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
    # vitc's logging and warning filters, as in `vitc train` (a spawned child starts without them):
    # warnings only, and not DeepSpeed's deprecation warning printed at every ZeRO-3 step
    setup_logging(rank=1)
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


def _median_process(samples: list[list[tuple[float, float]]], startups: list[float],
                    details: list[dict[str, float]]) -> Timing:
    """One contender's figures from its processes' rounds: the median process's (median of the
    per-process medians, for the rate and the per-core rate alike)."""
    return Timing(statistics.median(startups), {k: statistics.median(d[k] for d in details) for k in details[0]},
                  tuple(statistics.median(s[0] for s in per) for per in samples),
                  tuple(statistics.median(s[1] for s in per) for per in samples),
                  tuple(tuple(s[1] for s in per) for per in samples))


def _time_group(contenders: list[Contender], warmup: int, iters: int, rounds: int):
    """One fresh process per contender, started in the order given (no two warm up at once), then
    `rounds` interleaved rounds: per contender, its samples, start-up time and details."""
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
    return {name: (samples[name], startup[name], details[name]) for name in samples}


def time_in_processes(contenders: list[Contender], warmup: int, iters: int, rounds: int,
                      processes: int = 1) -> dict[str, Timing]:
    """Every contender timed in `processes` fresh processes of its own: `processes` groups one
    after another, each a process per contender, started in an order rotated from group to group
    (every contender takes every start position) and timed in `rounds` interleaved rounds; only
    one group is alive at a time. Per contender, its median process (see the module docstring)."""
    if processes < 1:
        raise VitcError(f"processes must be >= 1, got {processes}")
    groups = []
    with FragmentHold() as fragments:
        for k in range(processes):
            fragments.take()  # what the last group's processes left fragmented too
            groups.append(_time_group(contenders[k % len(contenders):] + contenders[:k % len(contenders)],
                                      warmup, iters, rounds))
    return {c.name: _median_process(*zip(*(group[c.name] for group in groups))) for c in contenders}

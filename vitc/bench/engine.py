"""`vitc bench engine`: a training step through DeepSpeed (ZeRO 0-3) vs the same step in plain PyTorch.

Same model weights, AdamW with the same parameter groups, same batch. Every loop - the plain one
too - runs in its own fresh process with vitc's heap settings, rounds interleaved
(`vitc.bench.timing`): building a ZeRO-3 engine replaces `torch.nn.functional.linear` for its whole
process, which in a shared process slowed the plain loop and understated ZeRO-3's overhead (+4.7 %
printed, +7.6 % against a clean plain loop). Each step is split into forward, backward and
optimizer step so an overhead shows where it lives (an earlier measurement of DeepSpeed 0.19.8 on
a 2-core CPU found ~12 %: forward +20 %, backward +10 %; docs/engine.md has vitc's figures). The
engines come from the builder `vitc train` uses (`vitc.engine.build`), with its DeepSpeed config.
"""

import logging
import statistics
import time
from collections.abc import Callable, Sequence

from vitc.bench.timing import Contender, Timing, paired_ratio, time_in_processes

log = logging.getLogger(__name__)

PHASES = ("forward", "backward", "step")
NOISE = "plain2"  # the plain loop timed twice: what two identical loops differ by in this run


class PhasedStep:
    """One training step of `batch` images whose phases are timed on every call."""

    def __init__(self, batch: int, forward: Callable, backward: Callable, step: Callable):
        self.batch = batch
        self.parts = dict(zip(PHASES, (forward, backward, step)))
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}

    def __call__(self) -> int:
        value = None
        for phase, fn in self.parts.items():
            start = time.perf_counter()
            value = fn(value)
            self.times[phase].append(time.perf_counter() - start)
        return self.batch

    def details(self) -> dict[str, float]:
        """Median ms per phase."""
        return {p: 1000 * statistics.median(t) for p, t in self.times.items()}


def _setup(name: str, batch: int, stage: int, overrides: Sequence[str] = ()):
    """(config, run, model, images, labels): the same weights and batch in every process."""
    import torch

    from vitc.config import load_config
    from vitc.models.vit import VisionTransformer
    from vitc.run import resolve_run

    cfg = load_config(None, [f"model.name={name}", f"train.micro_batch={batch}", "train.precision=fp32",
                             "train.device=cpu", "model.num_classes=1000", f"train.zero_stage={stage}",
                             *overrides])
    run = resolve_run(cfg, 1, "cpu", shards=())
    torch.manual_seed(0)
    model = VisionTransformer(run.spec)
    images = torch.randn(batch, 3, cfg.model.image_size, cfg.model.image_size)
    labels = torch.randint(0, cfg.model.num_classes, (batch,))
    return cfg, run, model, images, labels


def plain_step(name: str, batch: int) -> PhasedStep:
    """The step in plain PyTorch: the optimizer `vitc train` builds, no engine."""
    import torch.nn.functional as F

    from vitc.engine.optim import build_optimizer

    cfg, run, model, images, labels = _setup(name, batch, 0)
    optimizer = build_optimizer(model, cfg.optim, run.lr, False)

    def step(_):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return PhasedStep(batch, lambda _: F.cross_entropy(model(images), labels), lambda loss: loss.backward(), step)


def engine_step(name: str, batch: int, stage: int, overrides: Sequence[str] = (),
                block_leaves: bool = True) -> PhasedStep:
    """The step through the engine `vitc train` builds at ZeRO `stage`, with config `overrides`;
    `block_leaves=False`: ZeRO-3 hooks on every linear and norm (tools/bench_engine_variants.py)."""
    import torch.nn.functional as F

    from vitc.engine.build import build_engine

    cfg, run, model, images, labels = _setup(name, batch, stage, overrides)
    if not block_leaves:
        model.zero3_leaf_modules = ()  # hides the class's tuple: vitc.engine.build sets no leaves
    session, rt = bench_session(cfg)
    engine, _ = build_engine(model, cfg, run, rt)
    step = PhasedStep(batch, lambda _: F.cross_entropy(engine(images), labels), engine.backward,
                      lambda _: engine.step())
    step.session = session
    return step


def bench_session(cfg):
    """(session, runtime): the process group and DeepSpeed's state as `vitc train` starts them, for
    this benchmark process. Entered, never left: whoever builds on it holds the session, whose exit,
    on garbage collection, would unset the launcher variables."""
    from vitc.distributed.env import DistEnv
    from vitc.engine.build import engine_session
    from vitc.engine.runtime import resolve_runtime

    rt = resolve_runtime(cfg.train, DistEnv())
    session = engine_session(DistEnv(), rt, cfg.train.collective_timeout_min * 60)
    session.__enter__()
    return session, rt


def bench_engine(name: str = "vit_p_1gf", batch: int = 32, iters: int = 5, rounds: int = 5,
                 stages: str = "0,1,2,3", processes: int = 1, warmup: int = 2) -> dict[str, Timing]:
    """Images/s and per-phase median ms of plain PyTorch and of DeepSpeed at each ZeRO stage."""
    plain = {"name": name, "batch": batch}
    contenders = [Contender("plain", f"{__name__}:plain_step", plain)]
    contenders += [Contender(f"zero{s}", f"{__name__}:engine_step", {"name": name, "batch": batch, "stage": int(s)})
                   for s in stages.split(",")]
    # the same plain loop again, in a process of its own: its "overhead" is the run's noise floor
    contenders.append(Contender(NOISE, f"{__name__}:plain_step", plain))
    log.info("timing %s: %s at batch %d, each in its own process", ", ".join(c.name for c in contenders),
             name, batch)
    return time_in_processes(contenders, warmup, iters, rounds, processes)


def format_engine_bench(results: dict[str, Timing]) -> str:
    plain, w = results["plain"], max(8, *map(len, results))
    head = (f"{'loop':<{w}} {'images/s':>9} {'overhead':>9} {'img/CPU-s':>10} {'CPU overhead':>12} "
            + " ".join(f"{p + ' ms':>12}" for p in PHASES))
    lines = [head]
    for name, r in results.items():
        overhead = paired_ratio(plain, r) - 1.0
        phases = " ".join(f"{r.details[p]:>7.1f} ({r.details[p] / max(plain.details[p], 1e-9) - 1:+4.0%})"
                          if name != "plain" else f"{r.details[p]:>12.1f}" for p in PHASES)
        cpu_overhead = paired_ratio(plain, r, per_core=True) - 1.0
        lines.append(f"{name:<{w}} {r.rate:>9.2f} {overhead:>+9.1%} {r.per_core:>10.2f} {cpu_overhead:>+12.1%} "
                     f"{phases}")
    noise = paired_ratio(plain, results[NOISE]) - 1.0 if NOISE in results else None
    if noise is not None:
        lines.append(f"noise floor: the plain loop timed twice differs by {noise:+.1%}; an overhead "
                     "within it is not measured by this run")
    if plain.processes > 1:
        lines.append(f"each loop is its median of {plain.processes} processes, overheads the median over their "
                     "groups of the overhead within a group; the processes' spread (the machine's drift between "
                     "groups included): "
                     + ", ".join(f"{n} {r.spread:+.1%}" for n, r in results.items()))
    lines.append("overhead = plain images/s ÷ engine images/s − 1; img/CPU-s = images per CPU-second of the "
                 "loop's process (what other jobs on a shared machine distort least); each loop in its own "
                 "process, rounds interleaved, medians; phase times are medians per step (% vs plain)")
    return "\n".join(lines)

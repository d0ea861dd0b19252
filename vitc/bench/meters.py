"""`vitc bench meters`: what vitc's MFU and goodput metering costs a training step.

The metering is the trainer's own per-step bookkeeping with `meters` given
(`vitc.engine.bookkeeping.StepBook`, the class the trainer runs): the data-wait timing around each
batch fetch, the image count in the flags all_reduce, and at each log line the MFU and goodput
summaries. Without it the same bookkeeping runs without them: the flags all_reduce, every
`log.every_steps` steps one read of the flags and a log line (`console_line`, `MetricsLog.write`).

Two measurements, every contender in its own fresh process, timed alike (`vitc.bench.timing`):
- the bookkeeping alone, with the engine step replaced by nothing, with and without metering, by
  CPU time (steadier than wall time on a shared machine) over many interleaved rounds: the
  metering's µs per step is the median of the per-round differences (the two rounds of a pair
  run one after the other);
- the whole step (the engine `vitc train` builds, `vitc.bench.engine.engine_step`) with the
  bookkeeping, with and without metering, and without it a second time (the run's noise floor):
  the step's time, and the end-to-end ratios, whose run-to-run noise (up to 17 %, once 47 %, by
  wall clock on this shared 2-core VM; docs/engine.md) is far above the metering's share.
The cost printed is the first over the second: metering µs / step ms (the step's wall or CPU time,
whichever is smaller).
"""

import itertools
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitc.bench.timing import Contender, Timing, paired_ratio, time_in_processes

log = logging.getLogger(__name__)


class BookedStep:
    """`micro_step` (the engine's forward, backward and optimizer step, or nothing) inside the
    trainer's per-step bookkeeping, with or without MFU/goodput metering: one optimizer step a call."""

    def __init__(self, name: str, batch: int, log_every: int, meters: bool,
                 micro_step: Callable | None = None):
        import torch

        from vitc.bench.engine import bench_session
        from vitc.engine.bookkeeping import StepBook
        from vitc.engine.meters import Goodput, MetricsLog, RunMeters
        from vitc.models.cost import model_cost

        if micro_step is None:  # no engine: the bookkeeping alone, in a process group of its own
            cfg = _config(name, batch)
            self.session, _ = bench_session(cfg)
            loss = torch.zeros(())
            micro_step, self.items = (lambda batch: loss), 1
        else:
            cfg, self.items = _config(name, batch), batch
        run_dir = Path(tempfile.mkdtemp())
        run_meters = None
        if meters:
            from vitc.config import model_spec

            run_meters = RunMeters(Goodput(), model_cost(model_spec(cfg.model, 1000)).flops, False,
                                   torch.device("cpu"), "fp32", run_dir, 0, False, False)
        self.book = StepBook(torch.device("cpu"), 1, 1, run_meters)
        self.metrics = MetricsLog(run_dir, tensorboard=False)
        # the loader's place: a batch in hand (the bookkeeping reads only its length)
        self.batches = itertools.repeat((torch.empty(batch), torch.empty(batch)))
        self.micro_step, self.log_every, self.steps = micro_step, log_every, 0
        self.last_record: dict = {}

    def __call__(self) -> int:
        """As `Trainer._train_epoch` and `Trainer._log` run a step without accumulation."""
        from vitc.engine.meters import console_line

        batch = self.book.next_batch(self.batches)
        self.book.add_loss(self.micro_step(batch))
        self.steps += 1
        self.book.end_step(False)
        if self.steps % self.log_every == 0:
            self.book.read()
            record = {**self.book.record(self.steps), "epoch": 0, "epochs": 1, "total_steps": 10**6,
                      "lr": 1e-3, "grad_norm": None}
            record["eta_s"] = record["step_s"] * (10**6 - self.steps)
            log.info(console_line({**record, "step": self.steps}))
            self.metrics.write("train", self.steps, record)
            self.last_record = record
        return self.items

    def details(self) -> dict[str, float]:
        """Whether its log lines carried MFU and goodput: what the contenders differ by."""
        return {"mfu": float("mfu" in self.last_record), "goodput": float("goodput" in self.last_record)}


def _config(name: str, batch: int):
    from vitc.config import load_config

    return load_config(None, [f"model.name={name}", "model.num_classes=1000", f"train.micro_batch={batch}",
                              "train.device=cpu", "train.precision=fp32"])


def bookkeeping(name: str, batch: int, log_every: int, meters: bool) -> BookedStep:
    """The step's bookkeeping alone (the engine step replaced by nothing): returns 1 step a call."""
    return BookedStep(name, batch, log_every, meters)


def engine_booked_step(name: str, batch: int, stage: int, log_every: int, meters: bool) -> BookedStep:
    """The ZeRO-`stage` step of the engine `vitc train` builds, inside the bookkeeping."""
    from vitc.bench.engine import engine_step

    phased = engine_step(name, batch, stage)
    forward, backward, step = phased.parts.values()

    def micro_step(_batch):
        loss = forward(None)
        backward(loss)
        step(None)
        return loss.detach()

    booked = BookedStep(name, batch, log_every, meters, micro_step)
    booked.session = phased.session
    return booked


@dataclass
class MetersBench:
    book: dict[str, Timing]  # "without", "with": the bookkeeping alone, 1 item a step
    step: dict[str, Timing]  # "without", "with", "without2" (its noise floor): the whole step, images
    batch: int

    def book_us(self, key: str) -> float:
        """CPU µs per step of the bookkeeping alone (its median process)."""
        return 1e6 / self.book[key].per_core

    def metering_us(self) -> list[float]:
        """CPU µs per step metering adds, paired round by round (the two ran one after the other)."""
        with_, without = self.book["with"].round_per_core, self.book["without"].round_per_core
        return [1e6 / w - 1e6 / o for ws, os in zip(with_, without, strict=True)
                for w, o in zip(ws, os, strict=True)]

    def step_ms(self) -> tuple[float, float]:
        """The whole step without metering: (wall ms, CPU ms over all its threads), median process."""
        t = self.step["without"]
        return 1e3 * self.batch / t.rate, 1e3 * self.batch / t.per_core


def bench_meters(name: str = "vit_p_1gf", batch: int = 32, iters: int = 20, rounds: int = 5,
                 processes: int = 1, stage: int = 1, log_every: int = 20, book_steps: int = 500,
                 book_rounds: int = 101) -> MetersBench:
    """The bookkeeping alone with and without MFU/goodput (CPU time), then the whole step with and
    without (images/s), each contender in its own processes."""
    kwargs = {"name": name, "batch": batch, "log_every": log_every}
    book = [Contender(key, f"{__name__}:bookkeeping", {**kwargs, "meters": key == "with"})
            for key in ("without", "with")]
    # "without" twice, in processes of their own: what two identical steps differ by in this run
    step = [Contender(key, f"{__name__}:engine_booked_step", {**kwargs, "stage": stage, "meters": key == "with"})
            for key in ("without", "with", "without2")]
    log.info("timing the step's bookkeeping alone with and without MFU/goodput: %d rounds of %d steps",
             book_rounds, book_steps)
    book_timings = time_in_processes(book, 200, book_steps, book_rounds, processes)
    log.info("timing the ZeRO-%d step of %s at batch %d with and without MFU/goodput, log line every %d steps",
             stage, name, batch, log_every)
    return MetersBench(book_timings, time_in_processes(step, 2, iters, rounds, processes), batch)


def format_meters_bench(bench: MetersBench) -> str:
    step_wall, step_cpu = bench.step_ms()
    diffs = sorted(bench.metering_us())
    metering = statistics.median(diffs)
    q1, _, q3 = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else (diffs[0],) * 3
    lines = ["the step's bookkeeping alone, engine step replaced by nothing (CPU µs per step):"]
    for key, t in bench.book.items():
        per_round = sorted(1e6 / r for rs in t.round_per_core for r in rs)
        lines.append(f"  {key:<8} {bench.book_us(key):>8.2f} µs  (rounds {per_round[0]:.2f}..{per_round[-1]:.2f})")
    lines.append(f"  metering {metering:>8.2f} µs/step  (paired rounds: quartiles {q1:.2f}..{q3:.2f}, "
                 f"{diffs[0]:.2f}..{diffs[-1]:.2f}, {len(diffs)} pairs)")
    lines.append("the whole step with the bookkeeping:")
    lines.append(f"  {'contender':<9} {'images/s':>9} {'spread':>7} {'wall ms':>9} {'CPU ms':>9}")
    for key, t in bench.step.items():
        lines.append(f"  {key:<9} {t.rate:>9.2f} {t.spread:>6.1%} {1e3 * bench.batch / t.rate:>9.1f} "
                     f"{1e3 * bench.batch / t.per_core:>9.1f}")
    for label, per_core in (("images/s", False), ("images per CPU-second", True)):
        ratio = paired_ratio(bench.step["with"], bench.step["without"], per_core)
        noise = paired_ratio(bench.step["without2"], bench.step["without"], per_core)
        lines.append(f"  end to end with/without {label}: {ratio:.4f} ({1 - ratio:+.2%}); "
                     f"without timed twice: {noise:.4f} ({1 - noise:+.2%})")
    lines.append("  (a whole step's run-to-run noise: not resolved at 1 %; the bookkeeping above is)")
    step_ms = min(step_wall, step_cpu)  # the smaller: the larger share
    lines.append(f"cost of MFU and goodput metering: {metering:.2f} µs / {step_ms:.1f} ms per step = "
                 f"{metering / (1e3 * step_ms):.4%}")
    return "\n".join(lines)

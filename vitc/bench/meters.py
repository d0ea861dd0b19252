"""`vitc bench meters`: the training step with vitc's MFU and goodput metering against without.

Both contenders run the same engine step (`vitc.bench.engine.engine_step`, the engine `vitc train`
builds) and the trainer's per-step bookkeeping around it: the flags all_reduce and, every
`log.every_steps` steps, one read of the flags and a log line written to a file. "with" adds what
MFU and goodput cost: the data-wait events around fetching the batch (`vitc.engine.meters.DataWait`),
the image count in the flags, and at each log line the MFU and goodput summaries
(`Window.summary` with the flop audit and the peak, `Goodput.summary`). Each contender runs in its
own fresh process, timed alike (`vitc.bench.timing`).
"""

import json
import logging
import tempfile
import time
from pathlib import Path

from vitc.bench.timing import Contender, Timing, paired_ratio, time_in_processes

log = logging.getLogger(__name__)


class MeteredStep:
    """One optimizer step of `engine_step` plus the trainer's bookkeeping, with or without MFU/goodput."""

    def __init__(self, name: str, batch: int, stage: int, log_every: int, meters: bool):
        import torch

        from vitc.bench.engine import engine_step
        from vitc.config import load_config, model_spec
        from vitc.engine.meters import DataWait, Goodput, Window, device_peak_flops
        from vitc.models.cost import model_cost

        self.step = engine_step(name, batch, stage)
        self.batch, self.log_every, self.meters = batch, log_every, meters
        self.flags = torch.zeros(4 if meters else 3)
        self.window, self.goodput, self.data_wait = Window(), Goodput(), DataWait(torch.device("cpu"))
        cfg = load_config(None, [f"model.name={name}", "model.num_classes=1000"])
        self.flops = 3 * model_cost(model_spec(cfg.model, 1000)).flops
        self.peak = device_peak_flops(torch.device("cpu"), "fp32")[0] if meters else 0.0
        self.log_file = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        self.steps = 0

    def __call__(self) -> int:
        import torch
        import torch.distributed as tdist

        from vitc.engine.meters import Window

        if self.meters:
            self.data_wait.before_batch()
            self.data_wait.after_batch()
        self.step()  # forward, backward, optimizer step
        self.steps += 1
        parts = [torch.full((), 0.0), torch.zeros(()), torch.zeros(())]
        if self.meters:
            parts.append(torch.full((), float(self.batch)))
        flags = torch.stack(parts)
        tdist.all_reduce(flags)
        self.flags += flags
        self.window.add(0 if self.meters else self.batch)
        if self.steps % self.log_every == 0:
            values = self.flags.tolist()
            self.flags.zero_()
            if self.meters:
                self.window.images += round(values[3])
                self.window.data_s += self.data_wait.read()
                record = {**self.window.summary(self.flops, self.peak, 1), **self.goodput.summary()}
            else:
                record = self.window.summary()
            with open(self.log_file, "a") as f:
                f.write(json.dumps({"kind": "train", "step": self.steps, "time": time.time(), **record}) + "\n")
            self.window = Window()
        return self.batch


def bench_meters(name: str = "vit_p_1gf", batch: int = 32, iters: int = 20, rounds: int = 5,
                 processes: int = 1, stage: int = 1, log_every: int = 20) -> dict[str, Timing]:
    """Images/s of the step with MFU/goodput metering and without, each in its own processes."""
    kwargs = {"name": name, "batch": batch, "stage": stage, "log_every": log_every}
    contenders = [Contender("without", f"{__name__}:MeteredStep", {**kwargs, "meters": False}),
                  Contender("with", f"{__name__}:MeteredStep", {**kwargs, "meters": True})]
    log.info("timing the ZeRO-%d step of %s at batch %d with and without MFU/goodput, log line every %d steps",
             stage, name, batch, log_every)
    return time_in_processes(contenders, 2, iters, rounds, processes)


def format_meters_bench(timings: dict[str, Timing]) -> str:
    without, with_ = timings["without"], timings["with"]
    ratio = paired_ratio(with_, without)
    lines = [f"{'contender':<10} {'images/s':>10} {'spread':>8}"]
    for key, t in timings.items():
        lines.append(f"{key:<10} {t.rate:>10.2f} {t.spread:>7.1%}")
    lines.append(f"with/without images/s: {ratio:.4f} (cost of MFU and goodput metering {1 - ratio:+.2%})")
    return "\n".join(lines)

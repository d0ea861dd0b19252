"""Training metrics: a window of steps, MFU and goodput, the console line, JSONL and TensorBoard.

Nothing here reads the device during a step: the loss and the image count arrive summed over
ranks in the trainer's one flags all_reduce and are read at log time; the data wait on a GPU is
measured with CUDA events (the GPU's idle gap between a step's last kernel and the next batch's
first), read at log time too. Only rank 0 builds a `MetricsLog`; the other ranks log nothing.
"""

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FLOPS_PER_MULTIPLY_ADD = 2  # the audit counts a multiply-add as one flop, device peaks as two


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    images: int = 0  # real images of every micro-batch on every rank (from the summed flags)
    loss_sum: float = 0.0
    data_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, images: int = 0, loss: float = 0.0) -> None:
        """One optimizer step; images and loss may arrive later, when the flags are read."""
        self.steps += 1
        self.images += images
        self.loss_sum += loss

    def summary(self, flops_per_image: float = 0.0, peak_flops: float = 0.0, world_size: int = 1) -> dict:
        """Loss, images/s, data-wait share, step time; MFU when the flops and the peak are given:
        audit flops per trained image (multiply-adds) × images/s over world × peak (datasheet flops)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        images_per_s = self.images / elapsed
        out = {"loss": self.loss_sum / max(self.steps, 1), "images_per_s": images_per_s,
               "data_wait": min(self.data_s / elapsed, 1.0), "step_s": elapsed / max(self.steps, 1)}
        if peak_flops > 0:
            out["mfu"] = images_per_s * flops_per_image * FLOPS_PER_MULTIPLY_ADD / (world_size * peak_flops)
        return out


class DataWait:
    """Time the device spends waiting for the next batch.

    On CPU that is the host's time inside the loader. On a GPU the host's time in the loader is not
    it: the host runs ahead of the GPU, and a copy from pageable memory inside the loader waits for
    the queued step (a GPU sync counted as data wait). So an event is recorded after a step's work is
    queued and another when the next batch is in hand; the gap between them on the GPU's timeline is
    time the GPU sat idle for data. The pairs are read at log time, when the device is synced anyway."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list[tuple] = []
        self.host_s = 0.0
        self._start = 0.0
        self._done = None

    def before_batch(self) -> None:
        self._start = time.perf_counter()
        if self.cuda:
            self._done = torch.cuda.Event(enable_timing=True)
            self._done.record()

    def after_batch(self) -> None:
        self.host_s += time.perf_counter() - self._start
        if self.cuda:
            ready = torch.cuda.Event(enable_timing=True)
            ready.record()
            self.pairs.append((self._done, ready))

    def read(self) -> float:
        """Seconds of data wait since the last read (syncs on the recorded events on a GPU)."""
        if self.cuda:
            waited = sum(done.elapsed_time(ready) for done, ready in self.pairs) / 1e3
        else:
            waited = self.host_s
        self.pairs, self.host_s = [], 0.0
        return waited


GOODPUT_PARTS = ("data_wait", "checkpoint", "evaluation", "startup", "lost_to_restarts")


class Goodput:
    """Where this invocation's wall time went: productive steps, and the rest by cause.

    goodput = productive / wall time, productive = wall − data wait − checkpoint saves −
    evaluation (with precise BN) − start-up (process start to the first step) − the steps a restart
    repeats (steps past the checkpoint it resumed from that an earlier invocation had logged, at
    this invocation's mean step time)."""

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.seconds = dict.fromkeys(GOODPUT_PARTS, 0.0)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds

    def timed(self, part: str):
        goodput = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                goodput.add(part, time.perf_counter() - self.t)

        return _Timer()

    def summary(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.start, 1e-9)
        lost = {part: min(s / wall, 1.0) for part, s in self.seconds.items()}
        return {"goodput": max(0.0, 1.0 - sum(lost.values())), "wall_s": wall,
                **{f"{part}_share": share for part, share in lost.items()}}


class RunMeters:
    """What MFU and goodput are computed from: vitc's flop audit per trained image (forward × 3;
    `hfu` adds activation checkpointing's recomputed forward), the device's peak, and the steps a
    resumed run repeats."""

    def __init__(self, goodput: Goodput, forward_flops: int, act_checkpoint: bool, device: torch.device,
                 precision: str, run_dir: Path, step: int, resumed: bool, is_main: bool):
        self.goodput = goodput
        self.flops_per_image = 3 * forward_flops
        self.hardware_flops_per_image = (4 if act_checkpoint else 3) * forward_flops
        self.peak_flops, source = device_peak_flops(device, precision)
        self.repeated = repeated_steps(run_dir, step) if resumed else 0
        self.first_step = step
        if is_main:
            log.info("MFU against a peak of %.3g TFLOP/s (%s)", self.peak_flops / 1e12, source)

    def performance(self, step: int) -> dict[str, float]:
        """Goodput and its parts; the repeated steps cost this invocation's mean productive step."""
        done = step - self.first_step
        summary = self.goodput.summary()
        if done and self.repeated:
            step_s = summary["wall_s"] * summary["goodput"] / done
            self.goodput.seconds["lost_to_restarts"] = min(self.repeated, done) * step_s
            summary = self.goodput.summary()
        return summary

    def record(self, window: Window, world_size: int, step: int) -> dict[str, float]:
        """A log line's figures: the window's summary with MFU and HFU, and the goodput so far."""
        summary = window.summary(self.flops_per_image, self.peak_flops, world_size)
        if "mfu" in summary:
            summary["hfu"] = summary["mfu"] * self.hardware_flops_per_image / self.flops_per_image
        return {**summary, **self.performance(step)}


def repeated_steps(run_dir: Path, resumed_step: int) -> int:
    """Steps an earlier invocation logged past the checkpoint this one resumes from: work lost."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    last = resumed_step
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if record.get("kind") == "train":
                last = max(last, int(record.get("step", 0)))
    return last - resumed_step


def device_peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The device's peak (datasheet flops/s) in `precision`, and where it comes from: a GPU's
    from the GPU table by its name (0 when not listed), a CPU's measured on a matmul."""
    if device.type == "cuda":
        from vitc.plan.gpus import load_gpus

        name = torch.cuda.get_device_name(device).lower()
        for key, gpu in load_gpus().items():
            words = [w for w in re.split(r"[-_ ]", key) if w]
            if gpu.kind == "gpu" and all(w in name for w in words) and gpu.peak_tflops.get(precision):
                return gpu.peak_tflops[precision] * 1e12, f"gpus.yaml '{key}' for {name}"
        return 0.0, f"{name} is not in the GPU table (vitc/resources/gpus.yaml): no MFU"
    return measured_matmul_peak(), "a measured fp32 matmul on this CPU"


_CPU_PEAK: list[float] = []


def measured_matmul_peak(size: int = 512, repeats: int = 8) -> float:
    """flops/s of a square fp32 matmul on the CPU, the best of a few (measured once a process)."""
    if not _CPU_PEAK:
        own = torch.Generator().manual_seed(0)  # not the global generator: a resumed run restored it
        a, b = torch.randn(size, size, generator=own), torch.randn(size, size, generator=own)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        _CPU_PEAK.append(2 * size**3 / best)
    return _CPU_PEAK[0]


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def console_line(record: dict) -> str:
    gnorm = record.get("grad_norm")
    mfu = record.get("mfu")
    return (f"epoch {record['epoch'] + 1}/{record['epochs']} step {record['step']}/{record['total_steps']} "
            f"loss {record['loss']:.4f} lr {record['lr']:.3e} "
            f"gnorm {'-' if gnorm is None else f'{gnorm:.3f}'} {record['images_per_s']:.1f} img/s "
            f"data {100 * record['data_wait']:.0f}% mfu {'-' if mfu is None else f'{100 * mfu:.1f}%'} "
            f"goodput {100 * record.get('goodput', 0):.0f}% eta {format_eta(record['eta_s'])}")


class MetricsLog:
    """Appends one JSON object per record to RUN_DIR/metrics.jsonl and mirrors scalars to
    TensorBoard (RUN_DIR/tensorboard)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict) -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        with open(self.path, "a") as f:  # one line per write: a reader sees whole records
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

"""Training metrics: a window of step timings, the console line, JSONL and TensorBoard.

Only rank 0 builds a `MetricsLog`; the other ranks log nothing.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    data_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, images: int, loss: float) -> None:
        """One optimizer step; the time spent waiting for data is added to `data_s` as it passes."""
        self.steps += 1
        self.images += images
        self.loss_sum += loss

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"loss": self.loss_sum / max(self.steps, 1), "images_per_s": self.images / elapsed,
                "data_wait": self.data_s / elapsed, "step_s": elapsed / max(self.steps, 1)}


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def console_line(record: dict) -> str:
    gnorm = record.get("grad_norm")
    return (f"epoch {record['epoch'] + 1}/{record['epochs']} step {record['step']}/{record['total_steps']} "
            f"loss {record['loss']:.4f} lr {record['lr']:.3e} "
            f"gnorm {'-' if gnorm is None else f'{gnorm:.3f}'} {record['images_per_s']:.1f} img/s "
            f"data {100 * record['data_wait']:.0f}% eta {format_eta(record['eta_s'])}")


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

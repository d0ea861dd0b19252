"""RUN_DIR/outcome.json: how a training run ended, written by the trainer at every end.

Chains of trainings (`vitc pipeline`, `vitc sweep run|collect`) decide from this record what
happened to a run, never from the wording of its log. Rank 0 writes it atomically when `train()`
returns or raises; it then describes the last invocation that ended (a `kill -9` leaves the one
before). No torch here: sweeps read it on a login node.
"""

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text

log = logging.getLogger(__name__)

OUTCOME_FILE = "outcome.json"
# finished: the schedule's last epoch; max_steps: train.max_steps; preempted: a signal, saved
# (and requeued under Slurm); diverged: a non-finite loss or too many skipped steps in a row
# (the paper counts such runs as failures); failed: any other error.
STATUSES = ("finished", "max_steps", "preempted", "diverged", "failed")
FAILURES = ("diverged", "failed")


class Diverged(VitcError):
    """Training stopped because it diverged; the run's outcome is 'diverged', not 'failed'."""


@dataclass(frozen=True)
class Score:
    """Top-1/top-5 (percent) of one evaluation, after `epoch` epochs, over `count` images."""

    top1: float
    top5: float
    count: int
    epoch: int

    @classmethod
    def of(cls, accuracy, epoch: int) -> "Score":
        """From an `evaluate.Accuracy` (anything with top1, top5 and count)."""
        return cls(accuracy.top1, accuracy.top5, accuracy.count, epoch)


@dataclass(frozen=True)
class RunOutcome:
    status: str  # one of STATUSES
    step: int | None  # optimizer steps done; None when the run failed before it was built
    epoch: int | None  # epochs completed
    skipped_steps: int  # optimizer steps DeepSpeed skipped (non-finite gradients), over the run
    evaluation: Score | None  # the last evaluation of the trained weights, if any
    ema_evaluation: Score | None  # ... and of their EMA
    error: str | None  # the error's one line when diverged or failed
    wall_s: float  # of this invocation
    # goodput (share of wall time in productive steps) and the shares lost to data wait,
    # checkpoint saves, evaluation, start-up and steps a restart repeated (vitc/engine/meters.py)
    performance: dict | None = None

    def describe(self) -> str:
        where = f" at epoch {self.epoch}, step {self.step}" if self.step is not None else ""
        line = f"{self.status}{where} in {self.wall_s:.0f} s"
        if self.skipped_steps:
            line += f" ({self.skipped_steps} skipped steps)"
        for name, score in (("", self.evaluation), ("EMA ", self.ema_evaluation)):
            if score is not None:
                line += f"; {name}top-1 {score.top1:.2f}% top-5 {score.top5:.2f}% ({score.count} images)"
        return line + (f": {self.error}" if self.error else "")


def error_line(error: BaseException) -> str:
    """The error's one line: a VitcError's message, else its type and first line."""
    text = str(error).strip().splitlines()
    if isinstance(error, VitcError) and text:
        return text[0]
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def write_outcome(run_dir: str | os.PathLike, outcome: RunOutcome) -> None:
    if outcome.status not in STATUSES:
        raise ValueError(f"outcome status {outcome.status!r} is not one of {STATUSES}")
    atomic_write_text(Path(run_dir) / OUTCOME_FILE, json.dumps(asdict(outcome), indent=1) + "\n")


def read_outcome(run_dir: str | os.PathLike) -> RunOutcome | None:
    """The run's outcome; None when no invocation has ended yet (or the last one was killed)."""
    path = Path(run_dir) / OUTCOME_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        scores = {k: Score(**record[k]) if record[k] is not None else None
                  for k in ("evaluation", "ema_evaluation")}
        return RunOutcome(**{**record, **scores})
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise VitcError(f"{path}: not a run outcome written by `vitc train` ({e})") from None


class RunEnding:
    """How one `train()` invocation ends: the trainer's position, DeepSpeed's skipped-step count
    and the last evaluations once the trainer is built; the wall time since this object was made."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main, self.start = run_dir, is_main, time.perf_counter()
        self.trainer = None  # the Trainer, once built

    def outcome(self, status: str, error: str | None = None) -> RunOutcome:
        wall_s = round(time.perf_counter() - self.start, 1)
        t = self.trainer
        if t is None:  # failed before the model, data and engine were built
            return RunOutcome(status, None, None, 0, None, None, error, wall_s)
        return RunOutcome(status, t.step, t.epoch, t.engine.skipped_steps, t.evaluation,
                          t.ema_evaluation, error, wall_s, t.performance())

    def record(self, status: str, error: str | None = None) -> RunOutcome:
        """The outcome; rank 0 writes it."""
        outcome = self.outcome(status, error)
        if self.is_main:
            write_outcome(self.run_dir, outcome)
        return outcome

    def record_failure(self, error: BaseException) -> None:
        status = "diverged" if isinstance(error, Diverged) else "failed"
        try:
            self.record(status, error_line(error))
        except OSError as e:  # an unwritable run directory: the error itself matters more
            log.error("could not write %s: %s", self.run_dir / OUTCOME_FILE, e)

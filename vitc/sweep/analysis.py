"""What a collected sweep says: each run's error, the curves' summaries, the good (lr, wd) range.

The analysis reads SWEEP/results.csv (written by `vitc sweep collect`) and needs these columns:
id, model, stem, optimizer, lr, weight_decay, status and best_ema_top1 (the highest top-1 of the
run's EMA model over its evaluations, empty when it has none).

The error of a run is 100 - best_ema_top1:
- the EMA model, because the paper evaluates it ("For inference, we use an exponential moving
  average (EMA) of the model weights", in all its experiments, the sweep of §5.3 included);
- its best evaluation, not its last, because the authors' sweep analysis does so (pycls branch
  vitconfigs, commit 206d0db, pycls/sweep/analysis.py: `metrics_info["error"]` is the min over
  `test_ema_epoch.min_top1_err`), and the paper's EDFs come from that tooling. Both evaluate after
  every epoch; under a cosine schedule a healthy run's best is (nearly) its last, while a run that
  degrades late is counted by what it reached, as in the paper's curves.
A diverged run (status "diverged", a non-finite loss or too many skipped steps) counts as 100 %
error: a setting that does not train is what the EDF measures. A crashed run (status "failed": the
process died for another reason, after `vitc sweep run`'s retries) says nothing about its setting:
it is counted apart and left out of the curves, as are runs without a final outcome yet.
"""

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitc.errors import VitcError
from vitc.sweep.make import RESULTS_CSV, read_table

COLUMNS = ("id", "model", "stem", "optimizer", "lr", "weight_decay", "status", "best_ema_top1")
DIVERGED_ERROR = 100.0  # the paper counts a diverged run as 100 % error
WITHIN = (1.0, 2.0, 5.0)  # points of Δerror the summary counts runs within


@dataclass(frozen=True)
class SweepRun:
    id: str
    model: str
    stem: str
    optimizer: str
    lr: float  # normalised to optim.reference_batch (2048 in the paper's sweep)
    weight_decay: float
    status: str
    error: float | None  # percent; None for crashed runs and runs without an outcome


def run_error(status: str, best_ema_top1: float | None, run_id: str) -> float | None:
    """A run's error by the rules of the module docstring."""
    if status == "diverged":
        return DIVERGED_ERROR
    if status != "finished":
        return None
    if best_ema_top1 is None:
        raise VitcError(f"run {run_id} finished without an EMA evaluation (results.csv best_ema_top1 is "
                        "empty): the sweep's error is the EMA model's, set optim.ema_alpha > 0")
    return 100.0 - best_ema_top1


def load_runs(sweep_dir: str | Path) -> list[SweepRun]:
    """The runs of SWEEP/results.csv, with their errors."""
    rows = read_table(Path(sweep_dir) / RESULTS_CSV, COLUMNS, f"run `vitc sweep collect {sweep_dir}` first",
                      f"re-collect it with `vitc sweep collect {sweep_dir}`")
    return [SweepRun(r["id"], r["model"], r["stem"], r["optimizer"], float(r["lr"]), float(r["weight_decay"]),
                     r["status"], run_error(r["status"], float(r["best_ema_top1"]) if r["best_ema_top1"] else None,
                                            r["id"]))
            for r in rows]


@dataclass(frozen=True)
class Curve:
    """The runs of one model with one optimizer: one EDF curve."""

    model: str
    stem: str
    optimizer: str
    runs: list[SweepRun]
    # best error of this model with this optimizer: Δerror's origin (the paper's EDFs of Δ, §5.3,
    # are per model and optimizer, each curve against its own best run)
    curve_best: float | None

    @property
    def label(self) -> str:
        return f"{self.model} {self.optimizer}"

    @property
    def errors(self) -> list[float]:
        """Errors of the runs that count (finished and diverged), sorted."""
        return sorted(r.error for r in self.runs if r.error is not None)

    @property
    def deltas(self) -> list[float]:
        """Δerror against the curve's own best run (the paper's EDFs plot Δtop-1 error per model and
        optimizer, §5.3)."""
        return [e - self.curve_best for e in self.errors]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    @property
    def incomplete(self) -> int:
        return sum(r.status not in ("finished", "diverged", "failed") for r in self.runs)


def curves(runs: list[SweepRun]) -> list[Curve]:
    """One curve per (model, optimizer), in the order the models and optimizers first appear."""
    best = {}
    for r in runs:
        if r.error is not None:
            best[r.model, r.optimizer] = min(best.get((r.model, r.optimizer), math.inf), r.error)
    keys = list(dict.fromkeys((r.model, r.optimizer) for r in runs))
    return [Curve(model, next(r.stem for r in runs if r.model == model), optimizer,
                  [r for r in runs if (r.model, r.optimizer) == (model, optimizer)], best.get((model, optimizer)))
            for model, optimizer in keys]


@dataclass(frozen=True)
class Summary:
    """One row of the report's summary table."""

    runs: int
    finished: int
    diverged: int
    crashed: int
    incomplete: int
    best: float | None
    median: float | None
    within: tuple[float, ...]  # share of counted runs with Δerror < each of WITHIN


def summarize(curve: Curve) -> Summary:
    errors, deltas = curve.errors, curve.deltas
    within = tuple(sum(d < k for d in deltas) / len(deltas) if deltas else 0.0 for k in WITHIN)
    return Summary(len(curve.runs), curve.count("finished"), curve.count("diverged"), curve.count("failed"),
                   curve.incomplete, errors[0] if errors else None,
                   statistics.median(errors) if errors else None, within)


GOOD_RANGE_METRICS = {"lr": lambda r: math.log10(r.lr), "wd": lambda r: math.log10(r.weight_decay),
                      "lr·wd": lambda r: math.log10(r.lr * r.weight_decay)}


def good_range(runs: list[SweepRun], seed: int = 0, alpha: float = 5.0, sample: float = 0.25,
               draws: int = 2500) -> dict[str, tuple[float, float, float]] | None:
    """log10 (low, best, high) of lr, wd and lr·wd where the best runs lie: the authors' bootstrap
    (pycls/sweep/analysis.py `get_filters`): `draws` times, take a random `sample` share of the
    runs (with replacement) and keep the best of them; the range is the central 100 - `alpha` %
    of the kept runs' values, the best their median. Seeded, so a report is reproducible."""
    counted = [r for r in runs if r.error is not None]
    if not counted:
        return None
    errors = np.array([r.error for r in counted])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counted), size=(draws, max(1, int(len(counted) * sample))))
    winners = picks[np.arange(draws), np.argmin(errors[picks], axis=1)]
    out = {}
    for name, metric in GOOD_RANGE_METRICS.items():
        values = np.array([metric(r) for r in counted])[winners]
        low, mid, high = np.percentile(values, [alpha / 2, 50, 100 - alpha / 2])
        out[name] = (float(low), float(mid), float(high))
    return out


def summary_line(curve: Curve) -> str:
    """One line of `vitc sweep collect`'s output: the curve's runs by status, best and median error."""
    s = summarize(curve)
    counts = {"finished": s.finished, "diverged": s.diverged, "crashed": s.crashed, "no outcome yet": s.incomplete}
    errors = f"best {s.best:.1f}%, median {s.median:.1f}%" if s.best is not None else "no results"
    return (f"{curve.model:>16} {curve.optimizer:<6} " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            + f"; error {errors}")

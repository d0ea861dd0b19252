"""`vitc sweep collect`: each run's fate and its EMA model's best top-1 -> SWEEP/results.csv.

Each run's fate is the outcome.json its trainer left in runs/<id>/ (vitc/outcome.py), locally
or in a Slurm array task alike: `finished` (its schedule's last epoch), `diverged` (a non-finite
loss or too many skipped steps) or `failed` (crashed, after `vitc sweep run`'s retries). A run
with no final outcome yet (not started, running, preempted, stopped at train.max_steps) is
`incomplete`. best_ema_top1 is the highest `ema_top1` over the eval records of the run's
metrics.jsonl, empty when it has none. What these mean for the error of a run, and which runs a
curve counts, is vitc/sweep/analysis.py's, shared by `vitc sweep report` and `vitc sweep plot`.
"""

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vitc.fileio import atomic_write_text
from vitc.outcome import FAILURES, read_outcome
from vitc.sweep.make import RESULTS_CSV, RunPlan, RunSetting, read_runs
from vitc.sweep.run import run_dir

METRICS_FILE = "metrics.jsonl"  # the trainer's records (vitc/engine/meters.py)


@dataclass(frozen=True)
class RunResult(RunSetting):
    status: str  # finished | diverged | failed | incomplete
    best_ema_top1: float | None  # percent; None when no evaluation of the EMA model was logged


def best_ema_top1(directory: Path) -> float | None:
    """The highest `ema_top1` of the eval records in DIRECTORY/metrics.jsonl (None without any).
    A line cut short by a killed writer is skipped: the records before it still count."""
    path = directory / METRICS_FILE
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "eval" and isinstance(record.get("ema_top1"), (int, float)):
            best = record["ema_top1"] if best is None else max(best, record["ema_top1"])
    return best


def run_result(sweep_dir: Path, plan: RunPlan) -> RunResult:
    directory = run_dir(sweep_dir, plan)
    outcome = read_outcome(directory)
    status = "incomplete"
    if outcome is not None and outcome.status in FAILURES:
        status = outcome.status
    elif outcome is not None and outcome.status == "finished" and outcome.epoch == plan.epochs:
        status = "finished"
    base = {f.name: getattr(plan, f.name) for f in fields(RunSetting)}
    return RunResult(**base, status=status, best_ema_top1=best_ema_top1(directory))


def collect(sweep_dir: str | Path) -> tuple[Path, list[RunResult]]:
    """Write SWEEP/results.csv; returns its path and the rows."""
    sweep_dir = Path(sweep_dir)
    results = [run_result(sweep_dir, plan) for plan in read_runs(sweep_dir)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(RunResult)], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in asdict(r).items()} for r in results)
    path = sweep_dir / RESULTS_CSV
    atomic_write_text(path, out.getvalue())
    return path, results

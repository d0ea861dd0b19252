"""`vitc sweep collect`: each run's final top-1 error -> SWEEP/results.csv.

Each run's fate is the outcome.json its trainer left in runs/<id>/ (vitc/engine/outcome.py), locally
or in a Slurm array task alike. The error of a finished run is 100 - the top-1 of its last
evaluation (after the final epoch). A diverged or failed run counts as 100 % error, as in the
paper. A run with no final outcome yet (not started, running, stopped early, or finished without
an evaluation after its last epoch) is listed as `incomplete`, has no error and is left out of the
EDF: counting a run still training as a failure would be wrong.
"""

import csv
import io
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vitc.engine.outcome import FAILURES, read_outcome
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.sweep.make import RESULTS_CSV, RunPlan, RunSetting, read_runs
from vitc.sweep.run import run_dir


FAILED_ERROR = 100.0  # the paper counts a run that diverged or failed as 100 % error


@dataclass(frozen=True)
class RunResult(RunSetting):
    status: str  # finished | diverged | failed | incomplete
    top1: float | None
    error: float | None  # percent; None when incomplete


def run_result(sweep_dir: Path, plan: RunPlan) -> RunResult:
    outcome = read_outcome(run_dir(sweep_dir, plan))
    status, top1 = "incomplete", None
    if outcome is not None and outcome.status in FAILURES:
        status = outcome.status
    elif outcome is not None and outcome.status == "finished" and outcome.evaluation is not None \
            and outcome.evaluation.epoch == plan.epochs:
        status, top1 = "finished", outcome.evaluation.top1
    error = 100.0 - top1 if top1 is not None else (FAILED_ERROR if status != "incomplete" else None)
    base = {f.name: getattr(plan, f.name) for f in fields(RunSetting)}
    return RunResult(**base, status=status, top1=top1, error=error)


def collect(sweep_dir: str | Path) -> tuple[Path, list[RunResult]]:
    """Write SWEEP/results.csv; returns its path and the rows."""
    sweep_dir = Path(sweep_dir)
    results = [run_result(sweep_dir, plan) for plan in read_runs(sweep_dir)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(RunResult)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in results)
    path = sweep_dir / RESULTS_CSV
    atomic_write_text(path, out.getvalue())
    return path, results


def summarize(results: list[RunResult]) -> str:
    """One line per (model, optimizer): runs by status and the best and median error."""
    lines = []
    for key in sorted({(r.model, r.optimizer) for r in results}):
        group = [r for r in results if (r.model, r.optimizer) == key]
        counts = {s: sum(r.status == s for r in group) for s in ("finished", "diverged", "failed", "incomplete")}
        errors = sorted(r.error for r in group if r.error is not None)
        best = f"best {errors[0]:.1f}%, median {statistics.median(errors):.1f}%" if errors else "no results"
        lines.append(f"{key[0]:>16} {key[1]:<6} " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                     + f"; error {best}")
    return "\n".join(lines)


def read_results(sweep_dir: str | Path) -> list[RunResult]:
    """The rows of SWEEP/results.csv (written by `collect`)."""
    path = Path(sweep_dir) / RESULTS_CSV
    if not path.is_file():
        raise VitcError(f"{path} not found: run `vitc sweep collect {sweep_dir}` first")
    types = {"lr": float, "weight_decay": float, "epochs": int, "seed": int, "top1": float, "error": float}
    with open(path, newline="") as f:
        return [RunResult(**{k: (types.get(k, str)(v) if v != "" else None) for k, v in row.items()})
                for row in csv.DictReader(f)]

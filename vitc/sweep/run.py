"""`vitc sweep run`: train a sweep's runs locally one after another, or as a Slurm job array.

Locally every run trains in its own `vitc train` process (vitc/pipelines/train_process.py), its output in
runs/<id>/train.log, and ends with runs/<id>/sweep_status.json: finished, diverged (a non-finite
loss stopped it: the paper counts it as 100 % error), failed (any other error) or stopped
(preempted, train.max_steps). Re-running skips finished and diverged runs (their outcome is
fixed by the config) and resumes or retries the others.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vitc.config import load_config
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.sweep.make import RunPlan, read_runs

log = logging.getLogger(__name__)

STATUS_FILE = "sweep_status.json"
TRAIN_LOG = "train.log"
DIVERGED_MESSAGE = "loss is not finite"  # the trainer's VitcError when the loss blows up
DONE = ("finished", "diverged")
ARRAY_INDEX = "slurm/array.json"


@dataclass(frozen=True)
class RunStatus:
    status: str  # finished | diverged | failed | stopped
    exit_code: int
    seconds: float
    message: str = ""


def run_dir(sweep_dir: Path, plan: RunPlan) -> Path:
    return Path(sweep_dir) / "runs" / plan.id


def read_status(sweep_dir: Path, plan: RunPlan) -> RunStatus | None:
    path = run_dir(sweep_dir, plan) / STATUS_FILE
    return RunStatus(**json.loads(path.read_text())) if path.is_file() else None


def pending_runs(sweep_dir: Path) -> list[RunPlan]:
    """The runs without a final outcome (finished or diverged), in runs.csv order."""
    return [p for p in read_runs(sweep_dir) if (s := read_status(sweep_dir, p)) is None or s.status not in DONE]


def classify(exit_code: int, finished: bool, log_text: str) -> tuple[str, str]:
    """(status, the error line) from a finished `vitc train` process and its output."""
    errors = [line for line in log_text.splitlines() if "vitc: error:" in line or "Error" in line]
    message = errors[-1].strip() if errors else ""
    if exit_code == 0:
        return ("finished" if finished else "stopped"), message
    if DIVERGED_MESSAGE in log_text:
        return "diverged", message
    return "failed", message or f"exit code {exit_code}"


def run_one(sweep_dir: Path, plan: RunPlan) -> RunStatus:
    """Train one run in a child process and record its status."""
    from vitc.pipelines.train_process import train_in_subprocess, training_finished

    cfg = load_config(Path(sweep_dir) / plan.config)
    log_path = run_dir(sweep_dir, plan) / TRAIN_LOG
    start = time.perf_counter()
    code = train_in_subprocess(Path(sweep_dir) / plan.config, log_path)
    status, message = classify(code, code == 0 and training_finished(cfg), log_path.read_text())
    result = RunStatus(status, code, round(time.perf_counter() - start, 1), message)
    atomic_write_text(run_dir(sweep_dir, plan) / STATUS_FILE, json.dumps(asdict(result)) + "\n")
    return result


def run_local(sweep_dir: str | Path) -> dict[str, RunStatus]:
    """Run every run that is not finished or diverged, in runs.csv order; one log line per run
    with its status and the sweep's ETA."""
    sweep_dir = Path(sweep_dir)
    todo = pending_runs(sweep_dir)
    log.info("sweep %s: %d runs, %d to train", sweep_dir, len(read_runs(sweep_dir)), len(todo))
    outcomes, start = {}, time.perf_counter()
    for k, plan in enumerate(todo, 1):
        outcomes[plan.id] = status = run_one(sweep_dir, plan)
        eta = (time.perf_counter() - start) / k * (len(todo) - k)
        log.info("[%d/%d] %s: %s in %.0f s%s; eta %.0f s", k, len(todo), plan.id, status.status,
                 status.seconds, f" ({status.message})" if status.message else "", eta)
    return outcomes


def slurm_array(sweep_dir: str | Path, parallel: int, dry_run: bool = False) -> tuple[str, str | None]:
    """(job script, job id) of a Slurm job array over the runs that are not finished or diverged;
    the allocation comes from the runs' `slurm:` section. A dry run only renders the script."""
    from vitc.launch.slurm import submit_sweep

    sweep_dir = Path(sweep_dir).resolve()
    todo = pending_runs(sweep_dir)
    if not todo:
        raise VitcError(f"sweep {sweep_dir}: every run is finished or diverged; nothing to submit")
    configs = [sweep_dir / p.config for p in todo]
    submission = submit_sweep(configs, sweep_dir, load_config(configs[0]).slurm, parallel, dry_run)
    if submission.job_id is None:
        return submission.script, None
    # collect finds each array task's log (slurm/<name>-<job>_<index>.out) through this index
    arrays = json.loads((sweep_dir / ARRAY_INDEX).read_text()) if (sweep_dir / ARRAY_INDEX).is_file() else []
    arrays.append({"job_id": submission.job_id, "runs": [p.id for p in todo]})
    atomic_write_text(sweep_dir / ARRAY_INDEX, json.dumps(arrays) + "\n")
    log.info("submitted job array %s (%d runs)", submission.job_id, len(todo))
    return submission.script, submission.job_id

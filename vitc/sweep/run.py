"""`vitc sweep run`: train a sweep's runs locally one after another, or as a Slurm job array.

Locally every run trains in its own `vitc train` process (vitc/pipelines/train_process.py), its
output in runs/<id>/train.log. Whether it trained locally or as a Slurm array task, a run's fate
is the outcome.json the trainer leaves in runs/<id>/ (vitc/engine/outcome.py): finished, diverged
(the paper counts it as 100 % error), failed, or stopped early (preempted, max_steps). Re-running
skips finished and diverged runs (their outcome is fixed by the config) and resumes or retries the
others.
"""

import logging
import time
from pathlib import Path

from vitc.config import load_config
from vitc.engine.outcome import RunOutcome, read_outcome
from vitc.errors import VitcError
from vitc.sweep.make import RunPlan, read_runs

log = logging.getLogger(__name__)

TRAIN_LOG = "train.log"
DONE = ("finished", "diverged")


def run_dir(sweep_dir: Path, plan: RunPlan) -> Path:
    return Path(sweep_dir) / "runs" / plan.id


def pending_runs(sweep_dir: Path) -> list[RunPlan]:
    """The runs without a final outcome (finished or diverged), in runs.csv order."""
    return [p for p in read_runs(sweep_dir)
            if (o := read_outcome(run_dir(sweep_dir, p))) is None or o.status not in DONE]


def run_one(sweep_dir: Path, plan: RunPlan) -> RunOutcome:
    """Train one run in a child process; its outcome."""
    from vitc.pipelines.train_process import train_in_subprocess

    directory = run_dir(sweep_dir, plan)
    return train_in_subprocess(Path(sweep_dir) / plan.config, directory, directory / TRAIN_LOG)


def run_local(sweep_dir: str | Path) -> dict[str, RunOutcome]:
    """Run every run that is not finished or diverged, in runs.csv order; one log line per run
    with its status and the sweep's ETA."""
    sweep_dir = Path(sweep_dir)
    todo = pending_runs(sweep_dir)
    log.info("sweep %s: %d runs, %d to train", sweep_dir, len(read_runs(sweep_dir)), len(todo))
    outcomes, start = {}, time.perf_counter()
    for k, plan in enumerate(todo, 1):
        outcomes[plan.id] = outcome = run_one(sweep_dir, plan)
        eta = (time.perf_counter() - start) / k * (len(todo) - k)
        log.info("[%d/%d] %s: %s; eta %.0f s", k, len(todo), plan.id, outcome.describe(), eta)
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
    if submission.job_id is not None:
        log.info("submitted job array %s (%d runs)", submission.job_id, len(todo))
    return submission.script, submission.job_id

"""`vitc sweep run`: train a sweep's runs locally one after another, or as a Slurm job array.

Locally every run trains in its own `vitc train` process (vitc/pipelines/train_process.py), its
output in runs/<id>/train.log. Whether it trained locally or as a Slurm array task, a run's fate
is the outcome.json the trainer leaves in runs/<id>/ (vitc/engine/outcome.py): finished, diverged
(the paper counts it as 100 % error), failed, or stopped early (preempted, max_steps). Re-running
skips finished and diverged runs (their outcome is fixed by the config) and resumes or retries the
others.

A crashed run (outcome "failed": the process died of something other than divergence, say a lost
node or an out-of-memory kill) says nothing about its optimizer setting, so locally it is retried
at once, up to `retries` more times (it resumes from its last checkpoint), as the authors' sweep
tooling retries a failed job (pycls tools/sweep_launch.py, 3 retries). A diverged run is never
retried: its setting does not train, which is what the sweep measures. Under Slurm a re-run of
`vitc sweep run --slurm` is the retry: it resubmits every run without a finished or diverged
outcome.
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
RETRIES = 3  # the authors' sweep tooling retries a crashed job 3 times


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


def run_with_retries(sweep_dir: Path, plan: RunPlan, retries: int = RETRIES) -> RunOutcome:
    """Train one run; a crash ("failed") is retried up to `retries` more times, nothing else is."""
    outcome = run_one(sweep_dir, plan)
    for attempt in range(1, retries + 1):
        if outcome.status != "failed":
            break
        log.warning("%s crashed (%s); retry %d of %d", plan.id, outcome.error, attempt, retries)
        outcome = run_one(sweep_dir, plan)
    return outcome


def run_local(sweep_dir: str | Path, retries: int = RETRIES) -> dict[str, RunOutcome]:
    """Run every run that is not finished or diverged, in runs.csv order, each retried up to
    `retries` times when it crashes; one log line per run with its status and the sweep's ETA."""
    if retries < 0:
        raise VitcError(f"vitc sweep run: --retries must be >= 0, got {retries}")
    sweep_dir = Path(sweep_dir)
    todo = pending_runs(sweep_dir)
    log.info("sweep %s: %d runs, %d to train", sweep_dir, len(read_runs(sweep_dir)), len(todo))
    outcomes, start = {}, time.perf_counter()
    for k, plan in enumerate(todo, 1):
        outcomes[plan.id] = outcome = run_with_retries(sweep_dir, plan, retries)
        eta = (time.perf_counter() - start) / k * (len(todo) - k)
        log.info("[%d/%d] %s: %s; eta %.0f s", k, len(todo), plan.id, outcome.describe(), eta)
        if outcome.status == "preempted":  # the signal was meant for the sweep: the same command resumes it
            log.warning("sweep %s stopped at %s by a signal; run the same command to continue", sweep_dir, plan.id)
            break
    return outcomes


def slurm_array(sweep_dir: str | Path, max_concurrent: int, dry_run: bool = False) -> tuple[str, str | None, int]:
    """(job script, job id, runs submitted) of one Slurm job array over the runs that are not
    finished or diverged, at most `max_concurrent` of them running at once (`--array=0-N%K`); the
    allocation comes from the runs' `slurm:` section. A dry run only renders the script."""
    from vitc.launch.slurm import submit_sweep

    sweep_dir = Path(sweep_dir).resolve()
    todo = pending_runs(sweep_dir)
    if not todo:
        raise VitcError(f"sweep {sweep_dir}: every run is finished or diverged; nothing to submit")
    configs = [sweep_dir / p.config for p in todo]
    submission = submit_sweep(configs, sweep_dir, load_config(configs[0]).slurm, max_concurrent, dry_run)
    if submission.job_id is not None:
        log.info("submitted job array %s (%d runs, at most %d at once)", submission.job_id, len(todo),
                 max_concurrent)
    return submission.script, submission.job_id, len(todo)

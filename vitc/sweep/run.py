"""`vitc sweep run`: train a sweep's runs locally (one or `--jobs` at a time), or as a Slurm job array.

Locally every run trains in its own `vitc train` process (vitc/pipelines/train_process.py), its
output in runs/<id>/train.log. Whether it trained locally or as a Slurm array task, a run's fate
is the outcome.json the trainer leaves in runs/<id>/ (vitc/outcome.py): finished, diverged
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
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vitc.config import load_config
from vitc.distributed.signals import Interrupted
from vitc.errors import VitcError
from vitc.outcome import RunOutcome, read_outcome
from vitc.sweep.make import RunPlan, read_runs

if TYPE_CHECKING:
    from vitc.pipelines.train_process import TrainChild

log = logging.getLogger(__name__)

TRAIN_LOG = "train.log"
DONE = ("finished", "diverged")
RETRIES = 3  # the authors' sweep tooling retries a crashed job 3 times
POLL_S = 0.5  # how often running runs are checked for an end


def run_dir(sweep_dir: Path, plan: RunPlan) -> Path:
    return Path(sweep_dir) / "runs" / plan.id


def pending_runs(sweep_dir: Path) -> list[RunPlan]:
    """The runs without a final outcome (finished or diverged), in runs.csv order."""
    return [p for p in read_runs(sweep_dir)
            if (o := read_outcome(run_dir(sweep_dir, p))) is None or o.status not in DONE]


def start_run(sweep_dir: Path, plan: RunPlan, threads: int | None) -> "TrainChild":
    """Start training one run in a child process (its output in runs/<id>/train.log)."""
    from vitc.pipelines.train_process import start_train

    directory = run_dir(sweep_dir, plan)
    return start_train(Path(sweep_dir) / plan.config, directory, directory / TRAIN_LOG, threads=threads)


def threads_per_run(jobs: int) -> int | None:
    """Intra-op threads for each of `jobs` runs at once: the cores shared out, so that no two runs'
    OpenMP threads contend for a core (torch's threads spin-wait: measured on 2 cores, a 2-thread
    run fell from 248 to 36 images/s beside a 1-thread run). One run at a time keeps torch's own."""
    return None if jobs == 1 else max(1, len(os.sched_getaffinity(0)) // jobs)


def run_local(sweep_dir: str | Path, retries: int = RETRIES, jobs: int = 1) -> dict[str, RunOutcome]:
    """Train every run that is not finished or diverged, in runs.csv order, `jobs` at a time, each
    retried up to `retries` times when it crashes; one log line per run with its status and the
    sweep's ETA. A preemption signal goes to every running run (each checkpoints), and no run
    starts after it: the same command continues the sweep."""
    from vitc.pipelines.train_process import forwarding_signals

    if retries < 0:
        raise VitcError(f"vitc sweep run: --retries must be >= 0, got {retries}")
    if jobs < 1:
        raise VitcError(f"vitc sweep run: --jobs must be >= 1, got {jobs}")
    sweep_dir = Path(sweep_dir)
    todo = pending_runs(sweep_dir)
    check_pending(sweep_dir, todo)
    log.info("sweep %s: %d runs, %d to train, %d at a time", sweep_dir, len(read_runs(sweep_dir)), len(todo), jobs)
    threads, outcomes, start = threads_per_run(jobs), {}, time.perf_counter()
    running: dict[str, tuple[RunPlan, "TrainChild", int]] = {}  # id -> (plan, child, retries used)
    children: list = []
    with forwarding_signals(children) as received:
        while running or (todo and not received):
            while todo and not received and len(running) < jobs:
                plan = todo.pop(0)
                running[plan.id] = (plan, start_run(sweep_dir, plan, threads), 0)
            children[:] = [child for _, child, _ in running.values()]
            time.sleep(POLL_S)
            for plan, child, used in [r for r in running.values() if r[1].process.poll() is not None]:
                outcome = child.outcome()
                if outcome.status == "failed" and used < retries and not received:
                    log.warning("%s crashed (%s); retry %d of %d", plan.id, outcome.error, used + 1, retries)
                    running[plan.id] = (plan, start_run(sweep_dir, plan, threads), used + 1)
                    continue
                del running[plan.id]
                outcomes[plan.id] = outcome
                eta = (time.perf_counter() - start) / len(outcomes) * (len(todo) + len(running)) / jobs
                log.info("[%d/%d] %s: %s; eta %.0f s", len(outcomes), len(outcomes) + len(todo) + len(running),
                         plan.id, outcome.describe(), eta)
    if received:  # the signal was meant for the sweep: the same command resumes it (exit 128 + signal)
        raise Interrupted(f"sweep {sweep_dir} stopped by a signal ({signal.Signals(received[0]).name}); run "
                          "the same command to continue", received[0])
    return outcomes


def check_pending(sweep_dir: Path, todo: list[RunPlan]) -> None:
    """Every run's config and inputs (shards, manifests, init_from), before the first run starts: a
    bad one is one line now, not a crash retried `retries` times after the runs before it trained."""
    from vitc.distributed.env import discover
    from vitc.preflight import check_run_inputs

    world_size = discover().world_size
    for plan in todo:
        try:
            check_run_inputs(load_config(Path(sweep_dir) / plan.config), world_size)
        except VitcError as e:
            raise VitcError(f"sweep run {plan.id} ({plan.config}): {e}") from None


def failed_summary(outcomes: dict[str, RunOutcome]) -> str | None:
    """One line naming the runs that failed (crashed after their retries), or None."""
    failed = sorted(run_id for run_id, o in outcomes.items() if o.status == "failed")
    if not failed:
        return None
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    return (f"{len(failed)} of {len(outcomes)} runs failed ({shown}); see runs/<id>/{TRAIN_LOG}, then "
            "run the same command to retry them")


def slurm_array(sweep_dir: str | Path, max_concurrent: int, dry_run: bool = False) -> tuple[str, str | None, int]:
    """(job script, job id, runs submitted) of one Slurm job array over the runs that are not
    finished or diverged, at most `max_concurrent` of them running at once (`--array=0-N%K`); the
    allocation comes from the runs' `slurm:` section. A dry run only renders the script."""
    from vitc.slurm.submit import submit_sweep

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

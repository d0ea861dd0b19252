"""Preemption: a signal before the time limit asks the trainer to checkpoint and requeue.

Slurm sends SIGUSR1 (`--signal=B:USR1@N`; the sbatch script forwards it to every task) and
SIGTERM on cancellation. The handler only sets a flag: the trainer polls it between steps and
all ranks agree (an all_reduce in the trainer) so every rank stops at the same step.
"""

import logging
import re
import signal
import subprocess

from vitc.errors import VitcError

log = logging.getLogger(__name__)


class PreemptionSignal:
    """Installs handlers for `signals`; `requested` turns True once one arrives."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)):
        self.requested = False
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.requested = True
        self.received = signum


def requeue_job(job: str | None) -> bool:
    """Ask Slurm to requeue `job` (this process's, `DistEnv.slurm_job`) if it is still running;
    False (and a log line) when it is not, or when not running under Slurm (`job` None).

    A job that is no longer RUNNING was cancelled (`scancel` sends SIGTERM too), timed out, or is
    being preempted by Slurm itself: requeueing it would undo the user's cancel, so the
    checkpoint is kept and the job left to end. Call only after the checkpoint is complete:
    `scontrol requeue` ends the running job at once.
    """
    if not job:
        log.info("preempted outside Slurm: checkpoint saved, not requeueing")
        return False
    state = _scontrol(job, "show", "job", "-o", job)
    state = re.search(r"JobState=(\S+)", state).group(1) if "JobState=" in state else "unknown"
    if state != "RUNNING":
        log.info("Slurm job %s is %s (cancelled, timed out or preempted by Slurm): checkpoint "
                 "saved, not requeueing", job, state)
        return False
    log.info("requeueing Slurm job %s", job)
    _scontrol(job, "requeue", job)  # on success Slurm ends this job at once: may never return
    return True


def _scontrol(job: str, *args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise VitcError(f"`scontrol {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}; "
                        f"the checkpoint is saved: resubmit job {job}'s script to resume from it")
    return done.stdout

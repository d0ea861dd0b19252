"""Preemption: a signal before the time limit asks the trainer to checkpoint and requeue.

Slurm sends SIGUSR1 (`--signal=B:USR1@N`; the sbatch script forwards it to every task) and
SIGTERM on cancellation. The handler only sets a flag: the trainer polls it between steps and
all ranks agree (an all_reduce in the trainer) so every rank stops at the same step.
"""

import logging
import os
import signal
import subprocess

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


def requeue_job(env: dict[str, str] | None = None) -> bool:
    """Ask Slurm to requeue this job; False (and a log line) when not running under Slurm.

    Call only after the checkpoint is complete: `scontrol requeue` ends the running job at once.
    """
    env = os.environ if env is None else env
    job = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    job = job or env.get("SLURM_JOB_ID")
    if not job:
        log.info("preempted outside Slurm: checkpoint saved, not requeueing")
        return False
    log.info("requeueing Slurm job %s", job)
    subprocess.run(["scontrol", "requeue", job], check=True)
    return True

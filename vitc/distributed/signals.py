"""Preemption: a signal before the time limit asks the trainer to checkpoint and requeue.

Slurm sends SIGUSR1 (`--signal=B:USR1@N`; the sbatch script forwards it to every task) and
SIGTERM on cancellation; Ctrl-C sends SIGINT, which is handled alike (the steps since the last
checkpoint are saved, not lost to a KeyboardInterrupt) except that the job is not requeued. A run
that saved and was requeued exits 0; one that saved and was not (Ctrl-C, outside Slurm, a
cancelled job) exits 128 + the signal, the shell's code for a process a signal ended. The handler only sets a flag: the trainer polls it between steps and
all ranks agree (an all_reduce in the trainer) so every rank stops at the same step.
"""

import logging
import re
import signal
import subprocess

from vitc.errors import VitcError

log = logging.getLogger(__name__)


SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
INTERRUPTED_EXIT = 128 + signal.SIGINT


class Interrupted(Exception):
    """Training stopped by a signal after saving and was not requeued; `vitc` prints the message and
    exits 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process
    that a signal ended."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class PreemptionSignal:
    """Installs handlers for `signals`; `requested` turns True once one arrives."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self.requested = False
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.requested = True
        self.received = signum

    @property
    def interrupted(self) -> bool:
        """Ctrl-C: saved like a preemption, but neither requeued nor a success (exit 130)."""
        return self.received == signal.SIGINT


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

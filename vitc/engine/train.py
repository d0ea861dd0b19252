"""`vitc train`: one training invocation for one CPU process, torchrun, and Slurm srun alike.

`train(cfg)` discovers the launcher once, takes the run directory's lock, resolves the run, then
runs a `Trainer` inside the process group (which decides the checkpoint it resumes from,
vitc/checkpoint/resume_point.py). Every end leaves RUN_DIR/outcome.json
(vitc/outcome.py); a run that saved after a signal and was not requeued exits 128 + the signal.
"""

import signal
from pathlib import Path

import torch.distributed as tdist

from vitc.checkpoint.lock import run_lock
from vitc.distributed.env import DistEnv, discover
from vitc.distributed.signals import SIGNALS, Interrupted, PreemptionSignal, requeue_job
from vitc.engine.build import engine_session
from vitc.engine.runtime import resolve_runtime, run_on
from vitc.engine.timeouts import collective_failure
from vitc.engine.trainer import Trainer
from vitc.log import run_log
from vitc.outcome import RunEnding, RunOutcome
from vitc.schema import Config


def train(cfg: Config, dist: DistEnv | None = None) -> RunOutcome:
    """Train as `cfg` says; every rank of the job calls this. Rank 0 writes RUN_DIR/outcome.json
    at every end (vitc/outcome.py), an error's too, which then propagates."""
    dist = discover() if dist is None else dist
    with run_lock(Path(cfg.train.run_dir), dist.is_main), run_log(cfg.train.run_dir, dist.is_main):
        return _train(cfg, dist)  # the lock before anything writes the run directory


def _train(cfg: Config, dist: DistEnv) -> RunOutcome:
    ending = RunEnding(Path(cfg.train.run_dir), dist.is_main)
    try:
        rt = resolve_runtime(cfg.train, dist)
        run = run_on(cfg, dist, rt)  # before anything heavy starts
        handlers = {s: signal.getsignal(s) for s in SIGNALS}
        with engine_session(dist, rt, cfg.train.collective_timeout_min * 60):
            try:
                preempt = PreemptionSignal()
                ending.trainer = Trainer(cfg, dist, rt, preempt, run)
                outcome = ending.record(ending.trainer.fit())
                tdist.barrier()  # a rank returns once outcome.json is on disk: its caller reads it
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
    except BaseException as error:
        failure = collective_failure(error, dist, cfg)  # a dead or stuck peer: say so in one line
        ending.record_failure(failure or error)
        if failure is not None:
            raise failure from None
        raise
    if outcome.status != "preempted":
        return outcome
    # requeue_job ends this Slurm job at once when it requeues: only after the checkpoint and the outcome
    if not preempt.interrupted and dist.is_main and requeue_job(dist.slurm_job):
        return outcome
    if dist.slurm_job and not dist.is_main:  # rank 0's exit code speaks for the job
        return outcome
    signum = preempt.received or signal.SIGTERM  # a peer's signal: this rank got none itself
    raise Interrupted(f"interrupted ({signal.Signals(signum).name}): {cfg.train.run_dir} saved at step "
                      f"{outcome.step}; `vitc train` with the same config resumes from it", signum)

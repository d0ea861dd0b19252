"""`vitc train` in a child process, for chains (vitc pipeline) and sweeps (vitc sweep run).

Why a process per run: each run starts from a clean DeepSpeed and torch state (DeepSpeed keeps
process groups and other module-level state between `deepspeed.initialize` calls, and a
sweep's runs differ in optimizer and schedule); a crash in one run (a segfault, an
out-of-memory kill) cannot take the chain or the sweep down with it; and each run's output can
go to its own log. The cost is the start-up, about 10 s on CPU.
The child inherits the environment, so under torchrun or srun each rank's child joins the same
job. SIGUSR1/SIGTERM (preemption) are forwarded to every child, which checkpoints and requeues as
`vitc train` does. What happened is read from the run's outcome.json (vitc/outcome.py),
never from the child's output.
"""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from vitc.outcome import FAILURES, OUTCOME_FILE, RunOutcome, read_outcome, write_outcome

FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


@dataclass
class TrainChild:
    """A running `vitc train CONFIG` process and what its outcome is read from."""

    config_path: Path
    run_dir: Path
    log_path: Path | None
    is_main: bool
    process: subprocess.Popen
    log_file: IO | None
    start: float = field(default_factory=time.perf_counter)

    def outcome(self) -> RunOutcome:
        """Once the child has ended: the outcome it wrote, or 'failed' when it wrote none.

        A child that ends with an error exit and no error outcome (killed, crashed, out of memory)
        is 'failed' with its exit code; rank 0 records that in `run_dir` too, so the run is not
        taken for one that ended well."""
        if self.log_file is not None:
            self.log_file.close()
        code, outcome = self.process.returncode, read_outcome(self.run_dir)
        # a run that saved after a signal and was not requeued exits 128 + the signal (vitc.cli)
        saved_after_signal = outcome is not None and outcome.status == "preempted" and code > 128
        if outcome is None or (code != 0 and outcome.status not in FAILURES and not saved_after_signal):
            where = f"; see {self.log_path}" if self.log_path is not None else ""
            outcome = RunOutcome("failed", None, None, 0, None, None,
                                 f"`vitc train {self.config_path}` ended with exit code {code} and "
                                 f"reported no error (killed or crashed){where}",
                                 round(time.perf_counter() - self.start, 1))
            if self.is_main:
                write_outcome(self.run_dir, outcome)
        return outcome


def start_train(config_path: Path, run_dir: Path, log_path: Path | None = None, is_main: bool = True,
                threads: int | None = None) -> TrainChild:
    """Start `vitc train config_path`; output to `log_path` (appended) when given, else to this
    process's stdout/stderr. `threads` caps the child's intra-op threads (OMP_NUM_THREADS) unless
    the user has set them. Rank 0 removes the previous invocation's outcome before the start."""
    if is_main:
        (Path(run_dir) / OUTCOME_FILE).unlink(missing_ok=True)
    env = None
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log_file = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a")
    process = subprocess.Popen([sys.executable, "-m", "vitc.cli", "train", str(config_path)], env=env,
                               stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    return TrainChild(Path(config_path), Path(run_dir), log_path, is_main, process, log_file)


@contextmanager
def forwarding_signals(children: list[TrainChild]) -> Iterator[list[int]]:
    """Forward preemption signals to every child in `children` (a list the caller may change)
    while the block runs, then restore the previous handlers. Yields the list of the signals
    received so far."""
    received: list[int] = []

    def forward(sig: int, _frame) -> None:
        received.append(sig)
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_in_subprocess(config_path: Path, run_dir: Path, log_path: Path | None = None,
                        is_main: bool = True) -> RunOutcome:
    """Run `vitc train config_path` to its end and return the outcome it wrote to `run_dir`."""
    child = start_train(config_path, run_dir, log_path, is_main)
    with forwarding_signals([child]):
        child.process.wait()
    return child.outcome()

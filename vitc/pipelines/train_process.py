"""`vitc train` in a child process, for chains (vitc pipeline) and sweeps (vitc sweep run).

Why a process per run: each run starts from a clean DeepSpeed and torch state (DeepSpeed keeps
process groups and other module-level state between `deepspeed.initialize` calls, and a
sweep's runs differ in optimizer and schedule); a crash in one run (a segfault, an
out-of-memory kill) cannot take the chain or the sweep down with it; and each run's output can
go to its own log. The cost is the start-up, about 10 s on CPU.
The child inherits the environment, so under torchrun or srun each rank's child joins the same
job. SIGUSR1/SIGTERM (preemption) are forwarded to the child, which checkpoints and requeues as
`vitc train` does. What happened is read from the run's outcome.json (vitc/engine/outcome.py),
never from the child's output.
"""

import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from vitc.engine.outcome import FAILURES, OUTCOME_FILE, RunOutcome, read_outcome, write_outcome

FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


def train_in_subprocess(config_path: Path, run_dir: Path, log_path: Path | None = None,
                        is_main: bool = True) -> RunOutcome:
    """Run `vitc train config_path` and return the outcome it wrote to `run_dir`. Output goes to
    `log_path` (appended) when given, else to this process's stdout/stderr.

    A child that ends with an error exit and no error outcome (killed, crashed, out of memory) is
    'failed' with its exit code; rank 0 records that in `run_dir` too, so the run is not taken
    for one that ended well. Rank 0 removes the previous invocation's outcome before the start.
    """
    if is_main:
        (Path(run_dir) / OUTCOME_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    code = _run_child([sys.executable, "-m", "vitc.cli", "train", str(config_path)], log_path)
    outcome = read_outcome(run_dir)
    if outcome is None or (code != 0 and outcome.status not in FAILURES):
        where = f"; see {log_path}" if log_path is not None else ""
        outcome = RunOutcome("failed", None, None, 0, None, None,
                             f"`vitc train {config_path}` ended with exit code {code} and reported "
                             f"no error (killed or crashed){where}", round(time.perf_counter() - start, 1))
        if is_main:
            write_outcome(run_dir, outcome)
    return outcome


def _run_child(cmd: list[str], log_path: Path | None) -> int:
    """Run `cmd`, forwarding preemption signals to it; its exit code."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") if log_path is not None else nullcontext() as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
        previous = {sig: signal.signal(sig, lambda s, _: child.send_signal(s)) for sig in FORWARDED}
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

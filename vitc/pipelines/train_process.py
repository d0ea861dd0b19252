"""`vitc train` in a child process, for chains (vitc pipeline) and sweeps (vitc sweep run).

Why a process per run: each run starts from a clean DeepSpeed and torch state (DeepSpeed keeps
process groups and other module-level state between `deepspeed.initialize` calls, and a
sweep's runs differ in optimizer and schedule); a crash in one run (a segfault, an
out-of-memory kill) cannot take the chain or the sweep down with it; and each run's output can
go to its own log, where a sweep reads why it failed. The cost is the start-up, about 10 s on CPU.
The child inherits the environment, so under torchrun or srun each rank's child joins the same
job. SIGUSR1/SIGTERM (preemption) are forwarded to the child, which checkpoints and requeues as
`vitc train` does.
"""

import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from vitc.engine.checkpoint import newest_checkpoint
from vitc.schema import Config

FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


def train_in_subprocess(config_path: Path, log_path: Path | None = None) -> int:
    """Run `vitc train config_path` and return its exit code (0 = trained or stopped cleanly,
    2 = a VitcError). Output goes to `log_path` (appended) when given, else to this process's
    stdout/stderr."""
    cmd = [sys.executable, "-m", "vitc.cli", "train", str(config_path)]
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


def training_finished(cfg: Config) -> bool:
    """The run in `cfg.train.run_dir` has a complete checkpoint at the end of its schedule."""
    newest = newest_checkpoint(cfg.train.run_dir)
    return newest is not None and newest.epoch >= cfg.schedule.epochs

"""`vitc bench startup`: seconds from `vitc train` starting to its first optimizer step, for the
demo's conv-stem model (vitc/resources/demo/vit_c_tiny.yaml) on the demo's digit shards.

Measured as a user meets it: a fresh `python -m vitc.cli train` process (interpreter, torch and
DeepSpeed imports, process group, shards, engine), stopped by train.max_steps=1; the first step is
the moment its line reaches RUN_DIR/metrics.jsonl. The command is printed beside the figure so it
can be rerun by hand.
"""

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vitc.errors import VitcError
from vitc.pipelines.demo import CONFIGS, prepare_digits


def startup_command(out: Path) -> list[str]:
    train_dir, val_dir = prepare_digits(out)
    return [sys.executable, "-m", "vitc.cli", "train", str(CONFIGS / "vit_c_tiny.yaml"),
            f"data.train_shards={train_dir}", f"data.val_shards={val_dir}", f"train.run_dir={out / 'startup'}",
            "train.max_steps=1", "log.every_steps=1"]


def bench_startup(out: str | Path = "runs/demo", rounds: int = 3) -> tuple[list[float], list[str]]:
    """Seconds to the first step, one per round (each a fresh run directory), and the command."""
    out = Path(out)
    command = startup_command(out)
    times = []
    for _ in range(rounds):
        shutil.rmtree(out / "startup", ignore_errors=True)
        metrics = out / "startup" / "metrics.jsonl"
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not (metrics.is_file() and metrics.read_text().strip()):
            if proc.poll() is not None:
                raise VitcError(f"`{shlex.join(command)}` ended ({proc.returncode}) before its first step: "
                                f"{(proc.stderr.read().strip().splitlines() or [''])[-1]}")
            time.sleep(0.01)
        times.append(time.perf_counter() - start)
        proc.communicate()
    return times, command


def format_startup(times: list[float], command: list[str]) -> str:
    ordered = sorted(times)
    return (f"vitc train -> first step (demo vit_c_tiny, CPU): median {ordered[len(ordered) // 2]:.1f} s "
            f"over {len(times)} runs ({', '.join(f'{t:.1f}' for t in times)} s)\ncommand: {shlex.join(command)}")

"""A failing command ends at once with one line: nothing hangs, the exit code says what happened,
bad input is refused before anything heavy starts, and a refused command writes nothing.

Each bad input runs `vitc` in a fresh process (the hangs were in the exit of the process); a
process that does not end within HANG_S fails its test. The configs are tiny digit runs
(tests/engine_runs.py) with loader workers on, since the hangs came from them.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_runs import ROOT, TINY_CONV, TINY_PATCHIFY, digit_shards, write_config

HANG_S = 60  # far above the 10 s a failing start may take here; an infinite hang fails the test


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory):
    return digit_shards(digits_folder, tmp_path_factory.mktemp("shards"))


def vitc(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`vitc ARGS` in a fresh process that must end within HANG_S."""
    return subprocess.run([sys.executable, "-m", "vitc.cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=HANG_S, env=env)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `vitc: error` line of a failed command, after checking there is no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("vitc:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


# ---- nothing hangs -------------------------------------------------------------------------------

def _bad_init_from(tmp_path: Path) -> tuple[str, str]:
    """Pretrained weights that are only found to be wrong once the loader's workers run."""
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    return f"finetune.init_from={bad}", str(bad)


def test_an_error_after_the_loaders_workers_started_ends_the_process(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2})
    override, named = _bad_init_from(tmp_path)
    result = vitc("train", str(config), override)
    assert result.returncode == 2 and named in error_line(result)


def test_resuming_another_models_run_directory_with_workers_ends_the_process(shards, tmp_path):
    conv = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2})
    assert vitc("train", str(conv), "train.max_steps=1").returncode == 0
    patchify = write_config(tmp_path / "p.yaml", shards, tmp_path / "run", model=TINY_PATCHIFY,
                            data={"workers": 2})
    result = vitc("train", str(patchify), "train.max_steps=2")
    line = error_line(result)
    assert result.returncode == 2 and TINY_CONV["name"] in line and TINY_PATCHIFY["name"] in line


def test_a_child_that_ignores_sigterm_does_not_hold_the_exit(tmp_path):
    # a loader worker ignores SIGTERM while its parent lives (vitc/data/processes.py);
    # multiprocessing's own exit handler would join it forever
    script = (
        "import multiprocessing, sys, time\n"
        "from vitc.data.processes import follow_parent\n"
        "def serve(parent):\n    follow_parent(parent)\n    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    import os\n"
        "    p = multiprocessing.get_context('fork').Process(target=serve, args=(os.getpid(),), daemon=True)\n"
        "    p.start()\n    print(p.pid, flush=True)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_S,
                            check=False, cwd=ROOT)
    assert result.returncode == 3, result.stderr
    child = int(result.stdout)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_sigterm_before_the_first_step_ends_the_run_with_128_plus_15(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2},
                          schedule={"epochs": 50})
    proc = subprocess.Popen([sys.executable, "-m", "vitc.cli", "train", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + HANG_S
    while not metrics.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "SIGTERM" in err

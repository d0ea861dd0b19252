"""Signals sent to a whole job (Slurm's scancel: SIGTERM to every process of the step; a terminal's
Ctrl-C: SIGINT to the foreground group) are the parent's to handle: loader workers live on until the
trainer has saved its checkpoint, shard-build workers end with the build, and each ends in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from engine_runs import ROOT, metrics, write_config

from vitc.checkpoint import store as checkpoint
from vitc.data.shards.embedded import photo_imagefolder


def start(*args: str) -> subprocess.Popen:
    """`vitc ARGS` as the leader of its own process group (as srun starts a step's tasks)."""
    return subprocess.Popen([sys.executable, "-m", "vitc.cli", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen) -> None:
    while not condition():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_to_every_process_saves_the_current_step_with_loader_workers(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2},
                          schedule={"epochs": 20})
    proc = start("train", str(config))
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    wait_for(lambda: metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3, proc)

    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and both loader workers, as scancel does
    _, err = proc.communicate()

    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # saved, not requeued (no Slurm)
    assert "killed by signal" not in err and "Traceback" not in err
    last_logged = metrics(tmp_path / "run")[-1]["step"]
    assert checkpoint.newest_checkpoint(tmp_path / "run").step == last_logged < 500


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """160 photos: 40 shards of 4, so a build has many shards left when the first is done."""
    return photo_imagefolder(tmp_path_factory.mktemp("photos"), classes=4, per_class=40)


@pytest.mark.parametrize("signum, whom, status", [
    (signal.SIGTERM, "group", 143),  # scancel
    (signal.SIGTERM, "parent", 143),  # kill PID
    (signal.SIGINT, "group", 130),  # Ctrl-C
])
@pytest.mark.slow
def test_a_signalled_shard_build_ends_in_one_line_with_its_workers_and_resumes(photos, tmp_path, signum,
                                                                               whom, status):
    out = tmp_path / "out"
    args = ("shards", "build", str(photos), str(out), "--samples-per-shard", "4", "--workers", "2")
    proc = start(*args)
    wait_for(lambda: any(out.glob("train-*.tar")), proc)
    # frozen while signalled, so the build cannot run on to its end first, however fast the machine
    os.killpg(proc.pid, signal.SIGSTOP)
    workers = psutil.Process(proc.pid).children()
    finished = len(list(out.glob("train-*.tar")))
    os.kill(proc.pid, signum) if whom == "parent" else os.killpg(proc.pid, signum)
    os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate()

    assert proc.returncode == status
    message = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("vitc:")]
    assert len(message) == 1 and "finished shards are kept" in message[0]
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert len(workers) == 2 and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert 1 <= finished < 40 and not (out / "manifest.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "vitc.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    kept = int(rerun.stdout.split(" kept")[0].rsplit(" ", 1)[1])
    assert kept >= finished  # every shard finished before the signal is kept, none rewritten
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no half-written temp file

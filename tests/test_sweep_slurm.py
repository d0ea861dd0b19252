"""`vitc sweep run --slurm` on the real two-node test cluster (tests/slurm_cluster.py): one job
array with a concurrency limit, and a re-run that resubmits only the unfinished runs."""

import subprocess
from pathlib import Path

import pytest

from test_slurm import JOB_TIMEOUT_S, REPO, cluster, digit_shards, tiny_run_config  # noqa: F401 (fixtures)
from vitc.engine.outcome import read_outcome
from vitc.sweep.make import make_sweep

SPEC = """
seed: 0
samples: 4
models: {vit_c_tiny: %s}
optimizers:
  adamw: {lr: [5.0e-4, 2.0e-3], weight_decay: [0.01, 0.1]}
epochs: [1]
"""


def sweep_run(cluster, sweep: Path, *args: str) -> subprocess.CompletedProcess:  # noqa: F811
    """`vitc sweep run --slurm`, as a user types it, against the test cluster."""
    return subprocess.run([str(REPO / ".venv" / "bin" / "vitc"), "sweep", "run", str(sweep), "--slurm", *args],
                          env=cluster.env, capture_output=True, text=True, cwd=REPO)


def array_logs(sweep: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((sweep / "slurm").glob("*.out")))


def array_id(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("submitted job array ")[1].split(":")[0]


@pytest.mark.slow
def test_a_sweep_runs_as_one_throttled_array_and_a_re_run_submits_only_unfinished_runs(
        cluster, digit_shards, tmp_path):  # noqa: F811
    model = tiny_run_config(tmp_path / "model", digit_shards, epochs=1)
    (tmp_path / "spec.yaml").write_text(SPEC % model)
    sweep = tmp_path / "sweep"
    runs = make_sweep(tmp_path / "spec.yaml", sweep, [f"data.val_shards={digit_shards}", "slurm.nodes=1",
                                                      "slurm.gpus_per_node=0", "slurm.time='15:00'"])
    assert len(runs) == 4

    first = sweep_run(cluster, sweep, "--max-concurrent", "2")
    array = array_id(first)
    assert "4 runs, at most 2 at once" in first.stdout
    assert cluster.job(array)["ArrayTaskThrottle"] == "2"  # --array=0-3%2
    cluster.run("scancel", f"{array}_3")  # still pending behind the limit: the run never starts
    cluster.wait_for_job_end(array, JOB_TIMEOUT_S * 2)

    outcomes = [read_outcome(sweep / "runs" / r.id) for r in runs]
    assert [o and o.status for o in outcomes[:3]] == ["finished"] * 3, array_logs(sweep)
    assert outcomes[3] is None

    second = sweep_run(cluster, sweep, "--max-concurrent", "2")
    resubmitted = array_id(second)
    assert "1 runs, at most 2 at once" in second.stdout
    assert (sweep / "slurm" / "configs.txt").read_text() == f"{(sweep / runs[3].config).resolve()}\n"
    cluster.wait_for_job_end(resubmitted, JOB_TIMEOUT_S)
    assert read_outcome(sweep / "runs" / runs[3].id).status == "finished"

    third = sweep_run(cluster, sweep)
    assert third.returncode != 0 and "every run is finished or diverged; nothing to submit" in third.stderr

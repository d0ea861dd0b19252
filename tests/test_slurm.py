"""`vitc slurm submit/status` and the vitc/resources/slurm/*.sbatch scripts, down to a real two-node cluster.

The cluster tests start Slurm on this machine (tests/slurm_cluster.py) and submit the
project's own job script for a two-node CPU training of a tiny model, then preempt it, cancel it,
kill one of its ranks, run a sweep array, and run `vitc sweep run --slurm`'s throttled array.
One module, so `make test` runs them all on one xdist worker: one cluster per machine. They are
skipped, with the reason, only where that cannot be done (not root, no apt-get).
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from slurm_cluster import skip_reason, slurm_cluster

from vitc.cli import main
from vitc.config import load_config, save_config
from vitc.distributed.signals import requeue_job
from vitc.errors import VitcError
from vitc.outcome import read_outcome
from vitc.slurm.submit import job_status, submit_sweep
from vitc.sweep.make import make_sweep

# `vitc` as torchrun, srun and the job scripts start it: this interpreter's (tests/test_cli.py
# checks that `python -m vitc.cli` is the `vitc` command)
VITC = [sys.executable, "-m", "vitc.cli"]


def write_config(path: Path, run_dir: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump({"train": {"run_dir": str(run_dir)}, **sections}))
    return path


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]


# ---- submit without Slurm ------------------------------------------------------------------

def test_dry_run_renders_the_allocation_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", run_dir)

    code = main(["slurm", "submit", str(config), "model.depth=3", "--nodes", "64",
                 "--gpus-per-node", "8", "--partition", "gpu", "--time", "2-00:00:00",
                 "--account", "vision", "--dry-run"])

    script = capsys.readouterr().out
    assert code == 0
    options = sbatch_lines(script)
    for expected in ("--nodes=64", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                     "--account=vision", "--time=2-00:00:00", "--signal=B:USR1@600", "--requeue",
                     "--open-mode=append", f"--output={run_dir}/slurm/%x-%j.out"):
        assert expected in options
    assert f"VITC_ARGS=(train {run_dir}/config.yaml)" in script
    assert "srun --kill-on-bad-exit=1 --wait=120" in script
    assert subprocess.run(["bash", "-n"], check=False, input=script, text=True).returncode == 0
    assert not run_dir.exists()


def test_dry_run_on_cpu_runs_one_task_per_node_without_gpus(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run",
                          slurm={"signal_seconds": 30, "exit_wait_s": 10, "cpus_per_task": 1,
                                 "env": {"NCCL_SOCKET_IFNAME": "ib0"}})

    assert main(["slurm", "submit", str(config), "--nodes", "2", "--gpus-per-node", "0",
                 "--time", "10:00", "--dry-run"]) == 0

    script = capsys.readouterr().out
    options = sbatch_lines(script)
    assert {"--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--signal=B:USR1@30"} <= set(options)
    assert not any(o.startswith("--gpus") for o in options)
    assert "export NCCL_SOCKET_IFNAME=ib0" in script
    assert "--wait=10" in script


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "'slurm.nodes' in `--nodes 0`: expected a value >= 1, got 0"),
    (["--gpus-per-node", "-1"], "'slurm.gpus_per_node' in `--gpus-per-node -1`: expected a value >= 0, got -1"),
    (["--exit-wait-s", "0"], "'slurm.exit_wait_s' in `--exit-wait-s 0`: expected a value >= 1, got 0"),
    (["--time", "two days"], "slurm.time: expected a Slurm time limit"),
    (["--time", "5"], "slurm.signal_seconds: the preemption signal must come"),
    (["slurm.sbatch_args=[exclusive]"], "expected long sbatch options like '--exclusive'"),
])
def test_bad_allocation_is_one_clear_error(tmp_path, capsys, args, message):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run")

    code = main(["slurm", "submit", str(config), *args, "--dry-run"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vitc: error: ") and message in err and "Traceback" not in err


def test_missing_config_is_one_clear_error(tmp_path, capsys):
    code = main(["slurm", "submit", str(tmp_path / "nope.yaml"), "--nodes", "2", "--dry-run"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in err


def test_resubmitting_a_run_dir_with_another_model_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", run_dir)
    run_dir.mkdir()
    save_config(load_config(config, ["model.depth=5"]), run_dir / "config.yaml")

    code = main(["slurm", "submit", str(config), "--nodes", "1"])

    assert code == 2
    assert f"{run_dir / 'config.yaml'} was written for another model" in capsys.readouterr().err
    assert not (run_dir / "slurm").exists()


def test_status_of_a_missing_run_dir_is_one_clear_error(tmp_path, capsys):
    assert main(["slurm", "status", str(tmp_path / "nope")]) == 2
    assert f"run dir not found: {tmp_path / 'nope'}" in capsys.readouterr().err


def test_sweep_dry_run_is_one_job_array_over_the_configs(tmp_path):
    configs = [write_config(tmp_path / f"{i}.yaml", tmp_path / f"run{i}") for i in range(5)]
    slurm = load_config(configs[0], ["slurm.gpus_per_node=1", "slurm.time='4:00:00'"]).slurm

    result = submit_sweep(configs, tmp_path / "sweep", slurm, parallel=2, dry_run=True)

    options = sbatch_lines(result.script)
    assert {"--array=0-4%2", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1",
            f"--output={tmp_path}/sweep/slurm/%x-%A_%a.out"} <= set(options)
    assert f"{tmp_path}/sweep/slurm/configs.txt" in result.script
    assert subprocess.run(["bash", "-n"], check=False, input=result.script, text=True).returncode == 0
    assert not (tmp_path / "sweep").exists()


def test_status_of_a_run_never_submitted_names_the_last_logged_step(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 2.3}\n{"step": 20, "loss": 2.1}\n{"st')

    assert main(["slurm", "status", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "never submitted" in out
    assert "last step: 20" in out


# ---- a real two-node cluster ---------------------------------------------------------------

@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.mark.slow
def test_cluster_runs_one_task_on_each_of_two_nodes(cluster):
    out = cluster.run("srun", "--nodes=2", "--ntasks-per-node=1", "--label",
                      "printenv", "SLURMD_NODENAME").stdout

    assert sorted(out.split("\n")[:-1]) == ["0: node1", "1: node2"]


# ---- vitc train through the project's sbatch script on the cluster --------------------------

# Generous liveness bounds for the polling below, not speed claims: a tiny model's job takes
# ~20 s to start (torch + DeepSpeed import) and finishes its steps in seconds.
JOB_TIMEOUT_S = 300
COLLECTIVE_TIMEOUT_MIN = 0.5  # train.collective_timeout_min: a collective waiting longer fails
EXIT_WAIT_S = 10  # slurm.exit_wait_s


def tiny_run_config(tmp_path: Path, shards: Path, epochs: int, workers: int = 0) -> Path:
    """A 2-block ViT-C on 200 digits, 8 images per rank per step: 12 steps per epoch on 2 ranks."""
    tmp_path.mkdir(exist_ok=True)
    return write_config(
        tmp_path / "tiny.yaml", tmp_path / "run",
        model={"name": "vit_c_1gf", "width": 32, "depth": 2, "heads": 2, "stem_channels": [8, 16],
               "stem_strides": [2, 2], "image_size": 32, "num_classes": "auto"},
        data={"train_shards": str(shards), "workers": workers, "shuffle_buffer": 20,
              "auto_augment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        train={"run_dir": str(tmp_path / "run"), "micro_batch": 8, "zero_stage": 1,
               "collective_timeout_min": COLLECTIVE_TIMEOUT_MIN},
        schedule={"epochs": epochs, "warmup_epochs": 0},
        log={"every_steps": 2, "tensorboard": False},
        slurm={"cpus_per_task": 1, "signal_seconds": 60, "exit_wait_s": EXIT_WAIT_S})


def vitc(cluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The `vitc` command, run as a user would, with the cluster's SLURM_CONF."""
    return subprocess.run([*VITC, *args], env={**cluster.env, **(env or {})},
                          capture_output=True, text=True, check=True)


def submit_two_node_cpu_job(cluster, config: Path, env: dict[str, str] | None = None) -> tuple[int, Path]:
    out = vitc(cluster, "slurm", "submit", str(config), "--nodes", "2", "--gpus-per-node", "0",
               "--time", "15:00", env=env).stdout
    job_id = int(re.search(r"submitted job (\d+)", out).group(1))
    run_dir = config.parent / "run"
    return job_id, run_dir / "slurm" / f"vitc-{run_dir.name}-{job_id}.out"


def wait_for_step(cluster, run_dir: Path, step: int) -> int:
    return cluster.wait_for(f"step {step} in {run_dir}/metrics.jsonl",
                            lambda: (s := job_status(run_dir).last_step) is not None and s >= step and s,
                            JOB_TIMEOUT_S)


def optimizer_steps(partition: Path) -> int:
    """Adam's step count in one rank's ZeRO optimizer partition (DeepSpeed's checkpoint layout)."""
    import torch

    state = torch.load(partition, weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]
    return int(next(iter(state["state"].values()))["step"])


@pytest.mark.slow
def test_two_node_training_job_completes_with_both_ranks_stepping(cluster, shards, tmp_path):
    config = tiny_run_config(tmp_path, shards / "train", epochs=3)
    # submitted from a shell that is itself a rank of some launcher: sbatch exports its
    # environment, and the job's tasks must still take their ranks from Slurm
    launcher_env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_PORT": "29500"}

    job_id, log_file = submit_two_node_cpu_job(cluster, config, env=launcher_env)
    job = cluster.wait_for_job_end(job_id, JOB_TIMEOUT_S)

    log = log_file.read_text()
    assert job["JobState"] == "COMPLETED", log
    assert "2 tasks, master 127.0.0.1:" in log
    assert re.search(r"^0: .* run \S+: 2 rank\(s\), cpu", log, re.MULTILINE)
    assert not re.search(r"^1: ", log, re.MULTILINE)  # rank 1 is quiet: warnings and errors only
    assert "finished at epoch 3, step 36" in log
    final = tmp_path / "run" / "checkpoints" / "step_00000036"
    partitions = [final / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    assert [optimizer_steps(p) for p in partitions] == [36, 36]
    status = vitc(cluster, "slurm", "status", str(tmp_path / "run")).stdout
    assert f"job:       {job_id} COMPLETED on node[1-2]" in status
    assert "last step: 36" in status


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes_where_it_stopped(cluster, shards, tmp_path):
    # 1000 epochs (12,000 steps): the job cannot end before it is signalled, however fast the
    # machine; the resumed job gets a step budget while Slurm holds it. A loader worker process:
    # Slurm signals every process of the step, and the preemption signal must not kill the workers.
    config = tiny_run_config(tmp_path, shards / "train", epochs=1000, workers=1)
    job_id, log_file = submit_two_node_cpu_job(cluster, config)
    wait_for_step(cluster, tmp_path / "run", 2)

    cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))  # as --signal=B:USR1@N does
    # pending with a reason: slurmctld marks a requeued job PENDING a moment before it sets why
    held = cluster.wait_for("the requeued job to be held",
                            lambda: (j := cluster.job(job_id))["JobState"] == "PENDING" and j["Reason"] != "None"
                            and j, JOB_TIMEOUT_S)
    ranks_saving = dict(re.findall(r"^(\d): .*USR1 signal: saving at step (\d+)", log_file.read_text(), re.MULTILINE))
    assert set(ranks_saving) == {"0", "1"} and len(set(ranks_saving.values())) == 1
    signalled = int(ranks_saving["0"])
    job_config = tmp_path / "run" / "config.yaml"  # what the job script trains (vitc slurm submit wrote it)
    settings = yaml.safe_load(job_config.read_text())
    settings["train"]["max_steps"] = signalled + 12  # one more epoch's worth after the restart
    job_config.write_text(yaml.safe_dump(settings))
    cluster.release(job_id)
    job = cluster.wait_for_job_end(job_id, JOB_TIMEOUT_S)

    log = log_file.read_text()
    assert held["Restarts"] == "1" and held["Reason"] == "BeginTime"
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", f"{job}\n{log}"
    assert 0 < signalled < 12_000
    assert f"vitc: job {job_id} restart 1 on node[1-2]" in log
    assert re.search(rf"resumed tag step_{signalled:08d} step {signalled}, world 2→2, stage 1→1", log)
    assert re.search(rf"max_steps at epoch \d+, step {signalled + 12} ", log)
    assert "requeues:  1" in vitc(cluster, "slurm", "status", str(tmp_path / "run")).stdout


@pytest.mark.slow
def test_cancelled_job_saves_and_stays_cancelled(cluster, shards, tmp_path):
    config = tiny_run_config(tmp_path, shards / "train", epochs=1000)  # would run for minutes
    job_id, log_file = submit_two_node_cpu_job(cluster, config)
    wait_for_step(cluster, tmp_path / "run", 2)

    cluster.run("scancel", str(job_id))  # SIGTERM to every rank, like the preemption signal
    job = cluster.wait_for_job_end(job_id, JOB_TIMEOUT_S)

    log = log_file.read_text()
    assert job["JobState"] == "CANCELLED" and job["Restarts"] == "0", f"{job}\n{log}"
    saved = re.search(r"^0: .* saved checkpoint \S+step_(\d+)", log, re.MULTILINE)
    assert saved and int(saved.group(1)) > 0
    assert re.search(rf"Slurm job {job_id} is \w+ \(cancelled, .*\): checkpoint saved, not requeueing", log)


def rank_process(job_id: int, rank: int) -> int:
    """Pid of the `vitc train` process that is `rank` of Slurm job `job_id` on this machine
    (the oldest one: a process it forks shares its command line and environment)."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode()}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = set(proc.joinpath("environ").read_bytes().split(b"\0"))
            cmdline = proc.joinpath("cmdline").read_bytes()
            started = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[19])
        except OSError:  # gone, or not ours to read
            continue
        if wanted <= env and b"vitc.cli" in cmdline:
            found.append((started, int(proc.name)))
    if not found:
        raise LookupError(f"no vitc process for rank {rank} of job {job_id}")
    return min(found)[1]


@pytest.mark.slow
def test_a_dead_rank_ends_the_job_with_a_clear_error(cluster, shards, tmp_path):
    config = tiny_run_config(tmp_path, shards / "train", epochs=1000)  # would run for minutes
    job_id, log_file = submit_two_node_cpu_job(cluster, config)
    wait_for_step(cluster, tmp_path / "run", 2)

    os.kill(rank_process(job_id, rank=1), signal.SIGKILL)
    # Bounded by the configured timeouts (a hang would outlast them and end in TIMEOUT).
    job = cluster.wait_for_job_end(job_id, COLLECTIVE_TIMEOUT_MIN * 60 + EXIT_WAIT_S + 60)

    log = log_file.read_text()
    assert job["JobState"] == "FAILED", log
    assert "srun: error: node2: task 1: Killed" in log
    assert "vitc: error: the training step ended with status" in log
    assert "finished at" not in log


@pytest.mark.slow
def test_sweep_array_runs_each_config_as_its_own_job(cluster, shards, tmp_path, monkeypatch):
    configs = [tiny_run_config(tmp_path / f"trial{i}", shards / "train", epochs=1) for i in range(2)]
    slurm = load_config(configs[0], ["slurm.nodes=1", "slurm.gpus_per_node=0", "slurm.time='15:00'"]).slurm
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])

    array = submit_sweep(configs, tmp_path / "sweep", slurm, parallel=2).job_id
    jobs = [cluster.wait_for_job_end(f"{array}_{i}", JOB_TIMEOUT_S) for i in range(2)]

    for i, job in enumerate(jobs):
        log = (tmp_path / "sweep" / "slurm" / f"vitc-sweep-{array}_{i}.out").read_text()
        assert job["JobState"] == "COMPLETED", log
        assert f"run {tmp_path / f'trial{i}' / 'run'}: 1 rank(s)" in log
        assert job_status(tmp_path / f"trial{i}" / "run").last_step == 25  # 200 digits / 8, none left out


@pytest.mark.slow
def test_requeue_of_an_unknown_job_is_one_clear_error(cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])

    refused = r"`scontrol show job -o 987654` failed: .*[Ii]nvalid job id.*resubmit"
    with pytest.raises(VitcError, match=refused):
        requeue_job("987654")


# ---- `vitc sweep run --slurm`: one job array with a concurrency limit; a re-run resubmits only the
# unfinished runs
SWEEP_SPEC = """
seed: 0
samples: 4
models: {vit_c_tiny: %s}
optimizers:
  adamw: {lr: [5.0e-4, 2.0e-3], weight_decay: [0.01, 0.1]}
epochs: [1]
overrides: [optim.ema_alpha=0.01]  # a sweep's error is its EMA model's (vitc sweep make refuses none)
"""


def sweep_run(cluster, sweep: Path, *args: str) -> subprocess.CompletedProcess:
    """`vitc sweep run --slurm`, as a user types it, against the test cluster."""
    return subprocess.run([*VITC, "sweep", "run", str(sweep), "--slurm", *args],
                          check=False, env=cluster.env, capture_output=True, text=True, cwd=sweep.parent)


def array_logs(sweep: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((sweep / "slurm").glob("*.out")))


def array_id(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("submitted job array ")[1].split(":")[0]


@pytest.mark.slow
def test_a_sweep_runs_as_one_throttled_array_and_a_re_run_submits_only_unfinished_runs(
        cluster, shards, tmp_path):
    model = tiny_run_config(tmp_path / "model", shards / "train", epochs=1)
    (tmp_path / "spec.yaml").write_text(SWEEP_SPEC % model)
    sweep = tmp_path / "sweep"
    runs = make_sweep(tmp_path / "spec.yaml", sweep, [f"data.val_shards={shards / 'val'}", "slurm.nodes=1",
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

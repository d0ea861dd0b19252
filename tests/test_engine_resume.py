"""Exactness: a run killed with SIGKILL and resumed equals a straight run; gradient accumulation
equals a bigger micro-batch; a preemption signal saves, reports and finds the job to requeue."""

import signal

import pytest
import torch
from engine_runs import (
    TINY_PATCHIFY,
    exported,
    kill_after_checkpoint,
    metrics,
    training_in_progress,
    write_config,
)

from vitc.checkpoint import store as checkpoint
from vitc.cli import main
from vitc.distributed.env import discover
from vitc.outcome import read_outcome


@pytest.mark.slow
def test_killed_and_resumed_run_equals_a_straight_run(shards, tmp_path):
    # A checkpoint every step, so the kill lands mid-epoch (and sometimes mid-save). Random crops
    # off (full-image crops): the loader re-draws the augmentation of the first batch after a
    # resume, which is the data loader's exactness, not the engine's, and is tested there.
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "straight",
                          data={"crop_scale": [1.0, 1.0]}, schedule={"epochs": 1, "warmup_epochs": 0.2},
                          checkpoint={"every_steps": 1})
    assert main(["train", str(config)]) == 0
    kill_after_checkpoint(config, tmp_path / "killed", step=8)
    resumed_from = checkpoint.newest_checkpoint(tmp_path / "killed").step
    assert 8 <= resumed_from < 25
    assert main(["train", str(config), f"train.run_dir={tmp_path / 'killed'}"]) == 0
    assert metrics(tmp_path / "killed")[-1]["step"] == 25
    straight, resumed = exported(tmp_path / "straight", tmp_path), exported(tmp_path / "killed", tmp_path)
    # Same data order (loader position restored), same RNG, same optimizer and schedule state,
    # same CPU kernels on the same thread count: bit-for-bit equal.
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_accumulating_two_micro_batches_equals_one_batch_of_twice_the_size(shards, tmp_path):
    # The patchify twin: BatchNorm in the conv stem normalizes per micro-batch, so with it the
    # two runs differ by design; without it the gradient of the 16 images is the same sum.
    common = dict(model=TINY_PATCHIFY, schedule={"epochs": 1, "warmup_epochs": 0.2})
    accumulated = write_config(tmp_path / "a.yaml", shards, tmp_path / "accum",
                               train={"micro_batch": 8, "grad_accum": 2}, **common)
    single = write_config(tmp_path / "b.yaml", shards, tmp_path / "single",
                          train={"micro_batch": 16, "grad_accum": 1}, **common)
    assert main(["train", str(accumulated)]) == 0 and main(["train", str(single)]) == 0
    assert metrics(tmp_path / "accum")[-1]["step"] == metrics(tmp_path / "single")[-1]["step"] == 12
    a, b = exported(tmp_path / "accum", tmp_path), exported(tmp_path / "single", tmp_path)
    # float sums in another order: differences of a few ulps, which 12 Adam steps keep small
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_preemption_signal_saves_at_the_current_step_and_outside_slurm_exits_128_plus_it(shards, tmp_path):
    config = write_config(tmp_path / "p.yaml", shards, tmp_path / "run", schedule={"epochs": 20})
    proc = training_in_progress(config, tmp_path / "run")
    proc.send_signal(signal.SIGUSR1)  # what Slurm sends before the time limit
    _, err = proc.communicate(timeout=300)
    # outside Slurm nothing requeues the run: it saved, and exits as a process the signal ended
    assert proc.returncode == 128 + signal.SIGUSR1, err[-2000:]
    assert "interrupted (SIGUSR1)" in err and "not requeueing" in err
    last_logged = metrics(tmp_path / "run")[-1]["step"]
    assert checkpoint.newest_checkpoint(tmp_path / "run").step == last_logged < 500
    assert (read_outcome(tmp_path / "run").status, read_outcome(tmp_path / "run").step) == ("preempted", last_logged)


def test_the_slurm_job_to_requeue_is_discovered_once_with_the_rank():
    # torchrun inside an allocation, and an array task under srun: scontrol's ids for each
    torchrun = discover({"RANK": "1", "WORLD_SIZE": "2", "SLURM_JOB_ID": "41"})
    array_task = discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "43",
                           "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "3"})
    assert (torchrun.rank, torchrun.slurm_job) == (1, "41")
    assert (array_task.source, array_task.slurm_job) == ("slurm", "42_3")
    assert discover({}).slurm_job is None  # a plain process: nothing to requeue

"""No host sync in a steady-state training step: vitc's step reads nothing back from the device
and builds no tensor from host data; the loss, the image count and the data wait are read at log
time only. Counted on the CPU with a TorchFunctionMode over real `vitc train` runs of 4 and 8
steps with no log line or save in between: what vitc does per step is the difference."""

import collections
from pathlib import Path

import pytest
from engine_runs import digit_shards, metrics, write_config

from vitc.bench.host_syncs import CountHostSyncs
from vitc.cli import main
from vitc.outcome import read_outcome

pytestmark = pytest.mark.slow  # each test trains


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory):
    return digit_shards(digits_folder, tmp_path_factory.mktemp("shards"))


def _counted_run(shards, tmp: Path, steps: int, stage: int) -> collections.Counter:
    config = write_config(tmp / f"run{steps}.yaml", shards, tmp / f"run{steps}",
                          train={"max_steps": steps, "zero_stage": stage},
                          log={"every_steps": 1000}, schedule={"epochs": 1, "warmup_epochs": 0})
    with CountHostSyncs() as mode:
        assert main(["train", str(config)]) == 0
    return mode.counts


@pytest.mark.parametrize("stage", [1, 2])
def test_a_steady_state_step_reads_nothing_from_the_device(shards, tmp_path, stage):
    short, long = (_counted_run(shards, tmp_path, steps, stage) for steps in (4, 8))
    per_step = {key: (long[key] - short[key]) / 4 for key in long | short if long[key] != short[key]}
    vitc_per_step = {key: n for key, n in per_step.items() if key[0] == "vitc"}
    print(f"ZeRO-{stage} per steady-state step: vitc {vitc_per_step}; DeepSpeed "
          f"{ {k[1]: n for k, n in per_step.items() if k[0] == 'deepspeed'} }; loader (host data) "
          f"{ {k[1]: n for k, n in per_step.items() if k[0] == 'loader'} }")
    assert vitc_per_step == {}
    assert any(key[0] == "vitc" for key in short)  # the counter sees vitc's reads at the end of the run


def test_every_log_line_and_the_outcome_carry_mfu_and_goodput(shards, tmp_path):
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", train={"max_steps": 6, "grad_accum": 2},
                          log={"every_steps": 3}, schedule={"epochs": 1, "warmup_epochs": 0})
    assert main(["train", str(config)]) == 0
    records = metrics(tmp_path / "run")
    assert len(records) == 2
    for record in records:
        assert 0 < record["mfu"] < 1 and 0 < record["goodput"] <= 1
        assert 0 <= record["data_wait"] < 1
        assert record["images_per_s"] == pytest.approx(3 * 2 * 8 / (record["step_s"] * 3), rel=1e-6)
    performance = read_outcome(tmp_path / "run").performance
    shares = [performance[f"{part}_share"] for part in
              ("data_wait", "checkpoint", "evaluation", "startup", "lost_to_restarts")]
    assert performance["goodput"] == pytest.approx(1 - sum(shares))
    assert performance["startup_share"] > 0 and performance["checkpoint_share"] > 0

"""The exposure ledger: `vitc data ledger RUN_DIR` says which samples each epoch of a run trained on,
reconstructed from its data positions, and a run killed, resumed and resized at an epoch boundary
saw its data exactly as an uninterrupted run did.

Digit shards: 200 samples; global batch 12 (micro-batch 6 x accumulation 2 on one rank, x 1 on
two): 16 steps per epoch read 192 samples, the other 8 are read first by the next epoch.
"""

import json
import shutil

import pytest
from engine_runs import digit_shards, torchrun, vitc, write_config
from engine_runs import kill_after_checkpoint as kill_once_saved

from vitc.cli import main
from vitc.data.ledger import build_ledger, surviving

STEPS_PER_EPOCH = 16


@pytest.fixture(scope="module")
def runs(digits_folder, tmp_path_factory):
    """A straight run on one rank, and the same run killed twice and finished on two ranks."""
    tmp = tmp_path_factory.mktemp("ledger")
    shards = digit_shards(digits_folder, tmp / "shards")
    config = write_config(tmp / "run.yaml", shards, tmp / "straight",
                          data={"workers": 2}, train={"micro_batch": 6, "global_batch": 12},
                          schedule={"epochs": 2, "warmup_epochs": 0.5}, checkpoint={"every_steps": 4},
                          eval={"every_epochs": 0})
    assert main(["train", str(config)]) == 0
    killed = tmp / "killed"
    kill_once_saved(config, killed, 8)  # mid-epoch
    shutil.copytree(killed, tmp / "resized_mid_epoch")
    kill_once_saved(config, killed, STEPS_PER_EPOCH)  # resumed on one rank, killed at the epoch's end
    torchrun(2, "train", str(config), f"train.run_dir={killed}")  # epoch 2 on two ranks
    torchrun(2, "train", str(config), f"train.run_dir={tmp / 'resized_mid_epoch'}", f"train.max_steps={STEPS_PER_EPOCH}")
    return tmp


def without_layout(ledger) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "world_sizes"} for e in ledger.epochs]


def test_an_uninterrupted_epoch_reads_each_sample_once_and_carries_the_rest(runs):
    ledger = build_ledger(runs / "straight")
    first, second = ledger.epochs
    assert ledger.samples == 200
    for epoch in (first, second):
        assert epoch["complete"] and epoch["world_sizes"] == [1]
        assert (epoch["delivered"], epoch["once"], epoch["never"], epoch["twice"]) == (192, 192, 8, 0)
    assert not set(first["never_examples"]) & set(second["never_examples"])  # left out once, read next


def test_a_run_killed_and_resumed_on_another_world_size_saw_what_a_straight_run_saw(runs):
    straight, resumed = build_ledger(runs / "straight"), build_ledger(runs / "killed")
    assert [e["world_sizes"] for e in resumed.epochs] == [[1], [2]]
    assert resumed.stretches > straight.stretches  # two restarts replayed
    assert without_layout(resumed) == without_layout(straight)  # digests: every sample as often


def test_a_resize_in_the_middle_of_an_epoch_shows_in_the_ledger(runs):
    # per-worker positions do not map onto another split: the rest of the epoch resumes at the same
    # fraction, so some samples of it are read twice and others never
    epoch = build_ledger(runs / "resized_mid_epoch").epochs[0]
    assert epoch["world_sizes"] == [1, 2] and epoch["complete"]
    assert epoch["delivered"] == 192 and epoch["twice"] > 0 and epoch["never"] == 8 + epoch["twice"]


def test_the_cli_prints_the_ledger_as_a_table_and_as_json(runs):
    table = vitc("data", "ledger", str(runs / "killed")).stdout
    assert "epoch" in table and "never" in table and "digest" in table
    assert json.loads(vitc("data", "ledger", str(runs / "killed"), "--json").stdout) == \
        build_ledger(runs / "killed").to_json()


def test_a_directory_without_data_positions_is_one_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1}) + "\n")
    result = vitc("data", "ledger", str(tmp_path), check=False)
    assert result.returncode == 2 and "no 'data' records" in result.stderr and "Traceback" not in result.stderr


def test_only_the_stretches_leading_to_the_newest_checkpoint_count():
    def record(event, step, resumed_from=None):
        return {"event": event, "step": step, "resumed_from": resumed_from}

    log = [record("start", 0), record("save", 4), record("save", 8), record("save", 12),  # 12: damaged
           record("start", 8, resumed_from=8), record("save", 10), record("save", 14)]
    assert [(r["event"], r["step"]) for r in surviving(log, newest_step=10)] == \
        [("start", 0), ("save", 4), ("save", 8), ("start", 8), ("save", 10)]
    restarted = [*log, record("start", 0)]  # checkpoint.resume: false in the same directory
    assert [r["step"] for r in surviving(restarted, newest_step=10)] == [0]

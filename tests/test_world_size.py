"""A run saved on one number of ranks resumes on another without losing state: every parameter,
buffer (the conv stem's BatchNorm statistics), Adam moment and EMA weight is restored exactly through
DeepSpeed's universal checkpoint, and the lr schedule continues at the same epoch position
(tests/world_size_probe.py gathers the trainer's full state on each side). Only rank 0 reads the
checkpoints for their checksums (tests/integrity_probe.py counts each rank's reads)."""

import json

import pytest
import torch
from engine_runs import ROOT, launcher, run_ranks, write_config

from vitc.checkpoint import integrity, universal
from vitc.checkpoint import store as checkpoint
from vitc.engine.schedule import warmup_cosine
from vitc.schema import ScheduleConfig

PROBE = str(ROOT / "tests" / "world_size_probe.py")
SAVED_AT = 3  # optimizer steps before the checkpoint


def probe(nproc: int, out, mode: str, *args: str) -> dict:
    """The trainer's full state after `vitc train ARGS` on `nproc` ranks (gloo on CPU); and its log."""
    result = run_ranks([*launcher(nproc), PROBE, str(out), mode, *args])
    out.with_suffix(".log").write_text(result.stderr)
    assert result.returncode == 0, f"see {out.with_suffix('.log')}: {result.stderr[-2000:]}"
    return {"state": torch.load(out), "log": result.stderr}


def assert_same_state(restored: dict, saved: dict) -> None:
    assert restored.keys() == saved.keys()
    differ = [k for k in saved if not torch.equal(restored[k], saved[k])]
    assert not differ, f"restored state differs from the saved one in {differ[:8]}"


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
@pytest.mark.parametrize("saved_on,resumed_on", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_world_size_with_its_full_state(shards, tmp_path, zero_stage,
                                                                         saved_on, resumed_on):
    # train.global_batch fixes the run: accumulation adapts to the ranks, the schedule is the same
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run",
                          train={"micro_batch": 4, "global_batch": 8, "zero_stage": zero_stage},
                          optim={"ema_alpha": 1e-3, "ema_update_period": 1})
    saved = probe(saved_on, tmp_path / "saved.pt", "train", str(config), f"train.max_steps={SAVED_AT}")
    resumed = probe(resumed_on, tmp_path / "resumed.pt", "resume", str(config))
    assert "universal" in resumed["log"]
    assert_same_state(resumed["state"], saved["state"])
    buffers = {k: v for k, v in saved["state"].items() if k.startswith("buffer/") and k.endswith("running_var")}
    assert buffers and not any(torch.equal(v, torch.ones_like(v)) for v in buffers.values())  # trained statistics


@pytest.mark.slow
@pytest.mark.parametrize("saved_stage,resumed_stage", [(2, 2), (3, 1)])
def test_an_sgd_checkpoint_resumes_on_another_world_size_with_its_momentum(shards, tmp_path, saved_stage,
                                                                           resumed_stage):
    """DeepSpeed's converter knows Adam's moments only: vitc converts SGD's momentum through them
    (vitc/checkpoint/universal.py), and the restored momentum is the saved one, bit for bit."""
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run",
                          train={"micro_batch": 4, "global_batch": 8, "zero_stage": saved_stage},
                          optim={"name": "sgd", "base_lr": 0.1, "weight_decay": 1e-4})
    saved = probe(2, tmp_path / "saved.pt", "train", str(config), f"train.max_steps={SAVED_AT}")
    resumed = probe(1, tmp_path / "resumed.pt", "resume", str(config), f"train.zero_stage={resumed_stage}")
    assert "universal" in resumed["log"]
    momentum = [k for k in saved["state"] if k.startswith("momentum_buffer/")]
    assert momentum and all(saved["state"][k].abs().sum() > 0 for k in momentum)  # trained momentum
    assert_same_state(resumed["state"], saved["state"])


@pytest.mark.slow
def test_without_a_fixed_global_batch_the_schedule_continues_at_the_same_epoch_position(shards, tmp_path):
    # 2 ranks x 4 images: global batch 8, 25 steps per epoch; then 1 rank: global batch 4, 50 steps
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", train={"micro_batch": 4, "zero_stage": 2})
    saved = probe(2, tmp_path / "saved.pt", "train", str(config), f"train.max_steps={SAVED_AT}")
    root = checkpoint.checkpoint_root(tmp_path / "run")
    half = root / ".convert-step_00000003" / "step_00000003_universal"  # a conversion cut short
    half.mkdir(parents=True)
    resumed = probe(1, tmp_path / "resumed.pt", "resume", str(config))
    assert not half.parent.exists() and (root / "step_00000003_universal" / "zero").is_dir()
    # a finished conversion is kept: resuming again loads it as it is
    (root / "step_00000003_universal" / "kept").touch()
    info = checkpoint.newest_checkpoint(tmp_path / "run")
    assert universal.loadable_tag(tmp_path / "run", info, 1, 2, rank=0) == ("step_00000003_universal", True)
    assert (root / "step_00000003_universal" / "kept").exists()
    for key in ("epoch_position", "schedule_fraction"):
        assert resumed["state"][key].item() == pytest.approx(saved["state"][key].item(), abs=1 / 50)
    # the new world's schedule and lr (linear scaling: base_lr 1e-3 at reference batch 8 -> 5e-4 at 4)
    schedule = warmup_cosine(ScheduleConfig(epochs=3, warmup_epochs=0.5), steps_per_epoch=50)
    position = round(resumed["state"]["schedule_fraction"].item() * 150)
    assert resumed["state"]["next_lr"][0].item() == pytest.approx(5e-4 * schedule(position))
    assert "step 3/147 as the step lines count them, at global batch 4" in resumed["log"]  # 3 + 150 - 6
    assert checkpoint.newest_checkpoint(tmp_path / "run").world_size == 2


INTEGRITY_PROBE = str(ROOT / "tests" / "integrity_probe.py")


@pytest.mark.slow
def test_only_rank_0_reads_the_checkpoints_for_their_checksums_and_every_rank_skips_a_damaged_one(shards, tmp_path):
    # saved on 1 rank at steps 2 and 4, resumed on 2: the newest tag has another layout
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", shards, run, train={"micro_batch": 4, "global_batch": 8},
                          checkpoint={"every_steps": 2})
    saved = run_ranks([*launcher(1), "-m", "vitc.cli", "train", str(config), "train.max_steps=4"])
    assert saved.returncode == 0, saved.stderr[-2000:]
    root = checkpoint.checkpoint_root(run)
    states = root / checkpoint.tag_for(4) / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only its CRC-32 tells
    states.write_bytes(bytes(data))
    intact = [str(root / checkpoint.tag_for(2) / name) for name in integrity.tag_files(root / checkpoint.tag_for(2))
              if name != checkpoint.MARKER]

    resumed = run_ranks([*launcher(2), INTEGRITY_PROBE, str(tmp_path / "probe"), str(config), "train.max_steps=5"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe.rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1]["crc"] == []  # rank 1 takes rank 0's word
    assert str(states) in ranks[0]["crc"] and set(intact) <= set(ranks[0]["crc"])
    assert ranks[0]["loaded"] == ranks[1]["loaded"] == ["step_00000002_universal"]
    skipped = [line for line in resumed.stderr.splitlines() if "skipped checkpoint" in line]
    assert len(skipped) == 1 and str(states) in skipped[0] and "using step_00000002" in skipped[0]
    # a 2-rank fine-tune from the run directory (finetune.init_from): rank 0 alone reads it for its
    # checksums and consolidates it once; rank 1 reads the consolidated file
    tuned = run_ranks([*launcher(2), INTEGRITY_PROBE, str(tmp_path / "tune"), str(config),
                       f"train.run_dir={tmp_path / 'tuned'}", f"finetune.init_from={run}", "train.max_steps=1"])
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"tune.rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1]["crc"] == [] and any(str(root) in path for path in ranks[0]["crc"])

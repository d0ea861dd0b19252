"""Two processes (torchrun, gloo on CPU): ZeRO-3 trains, saves and consolidates; a fine-tune from a
run directory consolidates it once. A run saved on two ranks resuming on one: tests/test_world_size.py
(the full state) and tests/test_largest_model.py (training on)."""

import re
import shutil

import pytest
import torch
from engine_runs import (
    exported,
    loss_fell,
    metrics,
    torchrun,
    vitc,
    write_config,
)

from vitc.checkpoint import store as checkpoint
from vitc.config import load_config, model_spec
from vitc.models.vit import VisionTransformer
from vitc.weights.init_from import INIT_CACHE, init_model

# 2 ranks × 4 images: global batch 8, 25 steps per epoch, as in the one-process tests
TWO_RANKS = {"micro_batch": 4}


@pytest.mark.slow
def test_zero3_on_two_ranks_learns_with_ema_and_exports_what_it_evaluated(shards, tmp_path):
    config = write_config(tmp_path / "z3.yaml", shards, tmp_path / "run", train={**TWO_RANKS, "zero_stage": 3},
                          optim={"ema_alpha": 1e-3, "ema_update_period": 4})
    torchrun(2, "train", str(config))
    assert loss_fell(tmp_path / "run", by=0.01) and metrics(tmp_path / "run", "eval")[-1]["top1"] > 15.0
    # the EMA gathered ZeRO-3 partitions every 4 steps; it is evaluated and exported too
    assert 0 < metrics(tmp_path / "run", "eval")[-1]["ema_top1"] <= 100
    assert exported(tmp_path / "run", tmp_path, "--ema").keys() == exported(tmp_path / "run", tmp_path).keys()
    assert checkpoint.newest_checkpoint(tmp_path / "run").world_size == 2
    # consolidated from both ranks' partitions; evaluated by a plain model on one process
    exported(tmp_path / "run", tmp_path)
    out = vitc("eval", str(config), f"--weights={tmp_path / 'run.safetensors'}").stdout
    last = metrics(tmp_path / "run", "eval")[-1]
    assert last["count"] == 200 and f"top-1 {last['top1']:.2f}%" in out


@pytest.mark.slow
def test_init_from_a_run_directory_is_consolidated_once_by_rank_0_and_read_by_the_others(shards, tmp_path):
    config = write_config(tmp_path / "pre.yaml", shards, tmp_path / "pre", train={"zero_stage": 2})
    vitc("train", str(config), "train.max_steps=2")
    cfg = load_config(config, [f"finetune.init_from={tmp_path / 'pre'}", f"train.run_dir={tmp_path / 'ft'}"])
    model = VisionTransformer(model_spec(cfg.model, 10))
    init_model(model, cfg, rank=0)
    cached = list((tmp_path / "ft" / INIT_CACHE).glob("*.safetensors"))
    assert len(cached) == 1 and re.fullmatch(r"pre-step_00000002-[0-9a-f]{12}\.safetensors", cached[0].name)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in exported(tmp_path / "pre", tmp_path).items())
    # another rank reads the consolidated file: the ZeRO optimizer partitions are not read again
    for partition in (tmp_path / "pre" / "checkpoints" / "step_00000002").glob("*optim_states.pt"):
        partition.unlink()
    other = VisionTransformer(model_spec(cfg.model, 10))
    init_model(other, cfg, rank=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


@pytest.mark.slow
def test_a_run_trained_again_to_the_same_step_is_consolidated_anew_not_taken_from_the_cache(shards, tmp_path):
    # the cache is named by the checkpoint's content: a run of the same name and step is not the same run
    config = write_config(tmp_path / "pre.yaml", shards, tmp_path / "pre")
    cfg = load_config(config, [f"finetune.init_from={tmp_path / 'pre'}", f"train.run_dir={tmp_path / 'ft'}"])
    loaded = []
    for seed in (0, 1):
        shutil.rmtree(tmp_path / "pre", ignore_errors=True)
        vitc("train", str(config), "train.max_steps=1", f"train.seed={seed}")
        model = VisionTransformer(model_spec(cfg.model, 10))
        init_model(model, cfg)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in exported(tmp_path / "pre", tmp_path).items())
        loaded.append(model.state_dict()["head.weight"].clone())
    assert not torch.equal(*loaded)
    assert len(list((tmp_path / "ft" / INIT_CACHE).glob("pre-step_00000001-*.safetensors"))) == 2

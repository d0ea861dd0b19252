"""The largest model in the suite: vit_c_62gf (293.6 M parameters, ViT-L class, conv stem) trains on
2 CPU ranks at ZeRO-3 with activation checkpointing and the default recipe, checkpoints, resumes on
1 rank through the universal checkpoint, and exports; the ranks' peak memory is printed beside
what `vitc plan` predicts for the same run (see below why it is not asserted here). 32 px keeps the steps cheap: at this size the model states,
not the activations, are the memory, and they do not depend on the resolution."""

import os
import shutil

import pytest
import torch
import yaml
from engine_runs import default_malloc, metrics, peak_rss_added, vitc

from vitc.checkpoint import store as checkpoint
from vitc.models.cost import model_cost
from vitc.models.vit import VisionTransformer
from vitc.plan.planner import plan_memory
from vitc.plan.setup import Cluster, load_run_config, run_setup
from vitc.weights.export import load_weights

STEPS = 2  # micro-steps on 2 ranks before the checkpoint (1 micro-step per optimizer step there)


@pytest.fixture
def run(tmp_path):
    yield tmp_path / "run"
    shutil.rmtree(tmp_path / "run", ignore_errors=True)  # ~14 GB of checkpoints, kept by no one


@pytest.mark.slow
@pytest.mark.whole_machine  # ~20 GiB: 2 ranks of ~10 GiB each
def test_a_vit_l_class_model_trains_on_two_ranks_at_zero3_resumes_on_one_and_exports(shards, run, tmp_path):
    config = tmp_path / "vit_c_62gf.yaml"
    # the default recipe (random crops, flips, AutoAugment, mixup/cutmix) with a loader worker;
    # the global batch is fixed, so 1 rank accumulates 2 micro-batches where 2 ranks took 1 each
    config.write_text(yaml.safe_dump({
        "model": {"name": "vit_c_62gf", "image_size": 32, "num_classes": "auto", "act_checkpoint": True},
        "data": {"train_shards": str(shards / "train"), "val_shards": str(shards / "val"), "workers": 1},
        "train": {"run_dir": str(run), "micro_batch": 2, "global_batch": 4, "zero_stage": 3},
        "optim": {"ema_alpha": 1e-5},  # the paper's EMA, one shard per rank at ZeRO-3
        "schedule": {"epochs": 1, "warmup_epochs": 0},
        "log": {"every_steps": 1, "tensorboard": False}}))
    setup = run_setup(load_run_config(str(config), []), Cluster(1, 2, "cpu"))
    spec = setup.spec
    predicted = plan_memory(setup, model_cost(spec).params).total

    # 2 ranks: the probe records each rank's peak resident memory added from just before the model
    # is built to the end of its STEPS-th micro-step; the run then saves its checkpoint at max_steps
    measured = peak_rss_added(2, tmp_path / "rss", STEPS, str(config), f"train.max_steps={STEPS}")
    print(f"vit_c_62gf ZeRO-3, 2 ranks: predicted {predicted / 2**30:.2f} GiB, measured "
          + ", ".join(f"{m / 2**30:.2f}" for m in measured) + " GiB")
    # Printed, not asserted: at this size on 2 CPU ranks at ZeRO-3 the peak varies from run to run
    # by more than the plan's 20 % (eleven runs on 2026-12-07: 7.50-9.77 GiB per rank against 6.98
    # predicted; one rank or both, at random), a transient of allocator and thread timing the plan
    # does not model (docs/plan.md, "How exact it is"). tests/test_plan.py checks the plan against
    # real CPU steps where the measurement repeats.
    assert all(m > 0.5 * predicted for m in measured), (predicted, measured)  # the probe saw the model
    saved = checkpoint.newest_checkpoint(run)
    assert (saved.step, saved.world_size) == (STEPS, 2)

    # 1 rank: converted to a universal checkpoint, restored, and trained on
    resumed = vitc("train", str(config), f"train.max_steps={STEPS + 1}",
                   env={**default_malloc(os.environ), "OMP_NUM_THREADS": "2"})
    assert "universal" in resumed.stderr
    steps = metrics(run)
    assert [r["step"] for r in steps] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    resumed_saved = checkpoint.newest_checkpoint(run)
    assert (resumed_saved.step, resumed_saved.world_size) == (3, 1)

    # export: the consolidated weights are the whole model, every tensor of it, all finite
    vitc("export", str(run), "--out", str(tmp_path / "m.safetensors"))
    weights = load_weights(tmp_path / "m.safetensors")
    with torch.device("meta"):
        model = VisionTransformer(spec)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == model_cost(spec).params
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

"""One run resolver: global batch and accumulation, the lr at that batch, precision, ZeRO, classes,
shards; the planner and the DeepSpeed config see the same run the trainer runs."""

import json
import math

import pytest

from vitc.cli import main
from vitc.config import load_config
from vitc.deepspeed_config import deepspeed_config
from vitc.errors import VitcError
from vitc.plan.gpus import get_gpu
from vitc.plan.setup import Cluster, run_setup
from vitc.run import resolve_run


def test_global_batch_sets_the_accumulation_and_the_lr_at_that_batch():
    cfg = load_config(None, ["train.global_batch=2048", "train.micro_batch=64", "optim.base_lr=1e-3"])
    run = resolve_run(cfg, world_size=8, device_kind="gpu")
    assert (run.grad_accum, run.global_batch) == (4, 2048)
    assert run.lr == pytest.approx(1e-3)  # the paper's lr is stated at batch 2048


def test_without_global_batch_the_lr_scales_with_what_the_ranks_take():
    cfg = load_config(None, ["train.micro_batch=64", "train.grad_accum=2"])
    run = resolve_run(cfg, world_size=8, device_kind="gpu")
    assert (run.grad_accum, run.global_batch, run.lr) == (2, 1024, pytest.approx(0.5e-3))


@pytest.mark.parametrize("rule, expected", [("linear", 2e-3), ("sqrt", 1e-3 * math.sqrt(2)), ("none", 1e-3)])
def test_lr_scales_with_global_batch_over_reference(rule, expected):
    cfg = load_config(None, [f"optim.lr_scaling={rule}", "train.global_batch=4096", "train.micro_batch=64"])
    assert resolve_run(cfg, world_size=16).lr == pytest.approx(expected)


def test_a_global_batch_that_does_not_divide_names_the_three_numbers():
    cfg = load_config(None, ["train.global_batch=2048", "train.micro_batch=96"])
    with pytest.raises(VitcError, match=r"train.global_batch=2048 is not a multiple of world size 8 "
                                        r"× train.micro_batch 96 = 768"):
        resolve_run(cfg, world_size=8)


def test_grad_accum_beside_global_batch_must_agree_with_it():
    agree = load_config(None, ["train.global_batch=2048", "train.micro_batch=64", "train.grad_accum=4"])
    assert resolve_run(agree, world_size=8).grad_accum == 4
    disagree = load_config(None, ["train.global_batch=2048", "train.micro_batch=64", "train.grad_accum=2"])
    with pytest.raises(VitcError, match=r"train.grad_accum=2 disagrees with train.global_batch=2048"):
        resolve_run(disagree, world_size=8)


def test_precision_auto_is_bf16_on_gpu_and_fp32_on_cpu_and_fp16_needs_a_gpu():
    cfg = load_config(None, [])
    assert resolve_run(cfg, 1, "gpu").precision == "bf16"
    assert resolve_run(cfg, 1, "cpu").precision == "fp32"
    with pytest.raises(VitcError, match="fp16 needs a GPU"):
        resolve_run(load_config(None, ["train.precision=fp16"]), 1, "cpu")


def test_passthrough_zero_stage_wins_in_the_engine_config_and_in_the_plan():
    cfg = load_config(None, ["model.name=vit_c_18gf", "train.zero_stage=1", "train.micro_batch=8",
                             "deepspeed.zero_optimization.stage=3",
                             "deepspeed.zero_optimization.stage3_prefetch_bucket_size=1000"])
    run = resolve_run(cfg, world_size=8, device_kind="gpu")
    zero = deepspeed_config(run)["zero_optimization"]
    assert run.zero_stage == zero["stage"] == 3
    assert zero["stage3_prefetch_bucket_size"] == 1000 and zero["overlap_comm"] is True
    setup = run_setup(cfg, Cluster(nodes=1, gpus_per_node=8, gpu="h100", dataset_size=10_000))
    assert (setup.zero_stage, setup.allgather_bucket_size) == (3, 1000)


def test_the_planner_plans_the_run_the_trainer_runs(shards):
    cfg = load_config(None, ["model.name=vit_c_1gf", "model.num_classes=auto", "train.micro_batch=16",
                             "train.global_batch=256", f"data.train_shards={shards / 'train'}"])
    setup = run_setup(cfg, Cluster(nodes=2, gpus_per_node=4, gpu="h100"))
    run = resolve_run(cfg, world_size=8, device_kind=get_gpu("h100").kind)
    assert (setup.spec, setup.micro_batch, setup.grad_accum, setup.global_batch, setup.lr) == (
        run.spec, run.micro_batch, run.grad_accum, run.global_batch, run.lr)
    assert (setup.precision, setup.zero_stage, setup.dataset_size) == (run.precision, run.zero_stage, 200)


def test_num_classes_auto_and_the_shard_lists_come_from_the_manifests(shards):
    cfg = load_config(None, ["model.num_classes=auto", f"data.train_shards={shards / 'train'}",
                             f"data.val_shards={shards / 'val'}"])
    run = resolve_run(cfg, world_size=1)
    assert run.num_classes == run.spec.num_classes == 10
    assert (len(run.train.shards), run.train.samples, run.val.samples) == (4, 200, 200)
    assert resolve_run(cfg, world_size=1, shards=()).val is None


def test_num_classes_auto_without_training_shards_has_no_model():
    run = resolve_run(load_config(None, ["model.num_classes=auto"]), world_size=1)
    assert run.num_classes is None
    with pytest.raises(VitcError, match="model.num_classes is 'auto'"):
        run.spec


def test_config_show_prints_the_resolved_config_and_the_derived_run(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("_base_: base.yaml\ntrain: {micro_batch: 32}\n")
    (tmp_path / "base.yaml").write_text("train: {global_batch: 4096}\noptim: {base_lr: 1.0e-3}\n")
    assert main(["config", "show", str(config), "--world", "16", "--device", "gpu", "--format", "json",
                 "model.name=vit_c_4gf"]) == 0  # for 16 GPUs: `auto` otherwise resolves for this machine
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"]["name"] == "vit_c_4gf" and shown["train"]["global_batch"] == 4096
    assert shown["derived"]["grad_accum"] == 8 and shown["derived"]["global_batch"] == 4096
    assert shown["derived"]["lr"] == pytest.approx(2e-3)
    assert (shown["derived"]["precision"], shown["derived"]["zero_stage"]) == ("bf16", 2)  # `auto` on GPU
    assert shown["derived"]["num_classes"] == 1000


def test_config_show_yaml_says_why_an_auto_class_count_is_not_resolved(tmp_path, capsys):
    assert main(["config", "show", "vitc/resources/demo/vit_c_tiny.yaml", f"data.train_shards={tmp_path}/none",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "derived:\n  world_size: 1\n  device: cpu\n" in out and "precision: fp32" in out
    assert "num_classes: 'auto (not resolved: data.train_shards" in out


def test_precision_auto_on_a_gpu_without_bf16_is_fp16_for_the_planner_too():
    cfg = load_config(None, ["model.name=vit_c_1gf", "train.micro_batch=8"])
    assert resolve_run(cfg, 8, "gpu", bf16=False).precision == "fp16"
    assert run_setup(cfg, Cluster(nodes=1, gpus_per_node=8, gpu="v100", dataset_size=10_000)).precision == "fp16"

"""`vitc train` on one process: learning, optimizers, export, the NaN guard, checkpoints, resume
and the outcome every run reports."""

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from engine_runs import (
    exported,
    loss_fell,
    losses,
    metrics,
    vitc,
    write_config,
)

from vitc.checkpoint import store as checkpoint
from vitc.cli import main
from vitc.config import load_config, model_spec
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.distributed.env import DistEnv
from vitc.distributed.signals import PreemptionSignal
from vitc.engine.runtime import process_group, resolve_runtime
from vitc.engine.trainer import Trainer
from vitc.models.vit import VisionTransformer
from vitc.outcome import read_outcome


@pytest.fixture(scope="module")
def adamw_run(shards, tmp_path_factory):
    """One finished 5-epoch AdamW run at ZeRO-1 (125 steps), shared by the tests that read it. With
    the authors' conv-stem init (PyTorch's default for the 3×3 convs) this tiny ViT_C leaves the
    uniform prediction after ~75 steps (it measured 10 / 11.5 / 23 / 31 / 26.5 % top-1 per epoch)."""
    tmp = tmp_path_factory.mktemp("adamw")
    config = write_config(tmp / "run.yaml", shards, tmp / "run", checkpoint={"every_steps": 5, "keep_last": 2},
                          schedule={"epochs": 5, "warmup_epochs": 0.5})
    assert main(["train", str(config)]) == 0
    return config, tmp / "run"


@pytest.mark.slow
def test_loss_falls_and_eval_counts_every_image(adamw_run):
    _, run_dir = adamw_run
    assert len(losses(run_dir)) == 125 and loss_fell(run_dir)
    evals = metrics(run_dir, "eval")
    assert [e["epoch"] for e in evals] == [1, 2, 3, 4, 5] and all(e["count"] == 200 for e in evals)
    assert evals[-1]["top1"] > 20.0  # 10 classes: chance is 10 %


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_loss_falls_on_one_process_at_zero_stage(stage, shards, tmp_path):
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", train={"zero_stage": stage},
                          schedule={"epochs": 5, "warmup_epochs": 0.5})  # as adamw_run: ~75 steps to learn
    # its own process: ZeRO-3 leaves torch's linear patched for the rest of the process
    vitc("train", str(config))
    assert loss_fell(tmp_path / "run")
    assert load_config(tmp_path / "run" / "config.yaml").train.zero_stage == stage


_ZERO3_LEAVES = """
import sys
import torch
import torch.nn.functional as F
from deepspeed.utils import z3_leaf_module
from vitc.config import load_config
from vitc.engine.build import build_engine, engine_session
from vitc.engine.runtime import resolve_runtime
from vitc.distributed.env import DistEnv
from vitc.models.vit import VisionTransformer
from vitc.run import resolve_run

cfg = load_config(sys.argv[1], ["model.num_classes=10", "train.zero_stage=3", *sys.argv[2:]])
run = resolve_run(cfg, 1, "cpu", shards=())
rt = resolve_runtime(cfg.train, DistEnv())
with engine_session(DistEnv(), rt, 60):
    model = VisionTransformer(run.spec)
    engine, _ = build_engine(model, cfg, run, rt)
    print(sorted(type(m).__name__ for m in model.modules() if z3_leaf_module(m)))
    before = engine.optimizer.fp32_partitioned_groups_flat[0].clone()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = F.cross_entropy(engine(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    # what the autograd graph keeps of the gathered weights until backward: the partitioned parameter
    # itself (emptied after its block's forward), never a view of the gathered storage
    weights = {p.ds_numel for p in model.parameters() if len(p.ds_shape) == 2}
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in saved if t.dim() == 2 and t.numel() in weights and t.untyped_storage().nbytes() > 0}
    print(sum(held.values()))
    engine.backward(loss)
    engine.step()
    print(bool(torch.isfinite(loss)), bool((engine.optimizer.fp32_partitioned_groups_flat[0] != before).any()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("memory_efficient_linear", [None, "false"])
def test_zero3_gathers_each_block_as_one_and_keeps_no_gathered_weight_until_backward(tmp_path, memory_efficient_linear):
    # one set of ZeRO-3 hooks per block instead of per linear and norm (vitc bench engine: ZeRO-3's
    # forward overhead 81 -> 44 ms per step at vit_p_1gf); its own process, as ZeRO-3 patches torch.
    # DeepSpeed's memory_efficient_linear (on: vitc keeps DeepSpeed's default) saves the parameter for
    # backward; torch's own linear saves a view of the gathered weight, which keeps every gathered
    # weight of the model alive from forward to backward (docs/engine.md): the second case shows the
    # check sees that.
    config = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "run")
    extra = [] if memory_efficient_linear is None else [
        f"deepspeed.zero_optimization.memory_efficient_linear={memory_efficient_linear}"]
    out = subprocess.run([sys.executable, "-c", _ZERO3_LEAVES, str(config), *extra], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    leaves, held, trained = out.stdout.split("\n")[-4:-1]
    assert (leaves, trained) == ("['Block', 'Block']", "True True")
    assert (int(held) == 0) == (memory_efficient_linear is None)


@pytest.mark.slow
def test_a_finished_run_reports_its_outcome_with_the_last_evaluations(adamw_run):
    _, run_dir = adamw_run
    outcome = read_outcome(run_dir)
    last = metrics(run_dir, "eval")[-1]
    assert (outcome.status, outcome.step, outcome.epoch, outcome.skipped_steps) == ("finished", 125, 5, 0)
    assert (outcome.evaluation.top1, outcome.evaluation.count, outcome.evaluation.epoch) == (last["top1"], 200, 5)
    assert outcome.ema_evaluation is None and outcome.error is None  # no EMA in this run


def test_a_run_stopped_at_max_steps_says_so_and_a_resume_keeps_its_last_evaluation(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", schedule={"epochs": 2})
    assert main(["train", str(config), "train.max_steps=30"]) == 0  # past the first epoch's evaluation
    first = read_outcome(tmp_path / "run")
    assert (first.status, first.step, first.epoch, first.evaluation.epoch) == ("max_steps", 30, 1, 1)
    assert main(["train", str(config), "train.max_steps=31"]) == 0
    assert read_outcome(tmp_path / "run").evaluation == first.evaluation


def test_a_run_refused_before_it_starts_prints_one_line_and_writes_nothing(shards, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    assert main(["train", str(config), f"data.train_shards={tmp_path / 'missing'}"]) == 2
    assert read_outcome(tmp_path / "run") is None and not (tmp_path / "run").exists()
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("vitc: error: ") and str(tmp_path / "missing") in err[-1]


@pytest.mark.slow
def test_run_directory_holds_config_deepspeed_config_and_environment(adamw_run):
    config, run_dir = adamw_run
    assert load_config(run_dir / "config.yaml") == load_config(config)
    ds = yaml.safe_load((run_dir / "deepspeed_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 1 and ds["train_batch_size"] == 8
    assert "deepspeed" in yaml.safe_load((run_dir / "environment.json").read_text())


@pytest.mark.slow
def test_in_process_training_leaves_no_rank_behind(adamw_run):
    """A process started after an in-process run (a sweep's next run, an sbatch from this shell)
    must not inherit the finished run's rank and a port its process group still holds."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert key not in os.environ, key


@pytest.mark.slow
def test_keeps_the_last_k_complete_checkpoints(adamw_run):
    _, run_dir = adamw_run
    assert [c.step for c in checkpoint.complete_checkpoints(run_dir)] == [120, 125]
    assert sorted(p.name for p in checkpoint.checkpoint_root(run_dir).glob("step_*")) == ["step_00000120", "step_00000125"]


@pytest.mark.slow
def test_export_gives_a_plain_model_with_the_engines_logits(adamw_run, tmp_path):
    config, run_dir = adamw_run
    cfg = load_config(config)
    weights = exported(run_dir, tmp_path)
    plain = VisionTransformer(model_spec(cfg.model, 10))
    plain.load_state_dict(weights)
    # the engine, rebuilt by resuming the same checkpoint
    rt = resolve_runtime(cfg.train, DistEnv())
    images = torch.randn(4, 3, 32, 32)
    plain.eval()
    with process_group(DistEnv(), rt, cfg.train.collective_timeout_min * 60):
        trainer = Trainer(cfg, DistEnv(), rt, PreemptionSignal())
        trainer.engine.eval()
        with torch.no_grad():
            assert torch.allclose(plain(images), trainer.engine(images), atol=1e-6)


@pytest.mark.slow
def test_eval_of_exported_weights_matches_the_runs_last_eval(adamw_run, tmp_path, capsys):
    config, run_dir = adamw_run
    exported(run_dir, tmp_path)
    capsys.readouterr()
    assert main(["eval", str(config), f"weights={tmp_path / 'run.safetensors'}"]) == 0
    top1 = metrics(run_dir, "eval")[-1]["top1"]
    assert f"top-1 {top1:.2f}%" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_on_data_of_other_classes_is_one_clear_error(adamw_run, photo_folder, tmp_path):
    # top-1 over labels that mean other classes would be a number with no meaning
    config, run_dir = adamw_run
    exported(run_dir, tmp_path)
    photos = tmp_path / "photos"
    build_shards(photo_folder, photos, "val", BuildOptions(samples_per_shard=50), progress=False)
    done = vitc("eval", str(config), f"--weights={tmp_path / 'run.safetensors'}", f"data.val_shards={photos}",
                check=False)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert f"data.val_shards {photos}" in errors[0] and "class 'astronaut'" in errors[0]


@pytest.mark.slow
def test_sgd_with_nesterov_learns(shards, tmp_path):
    # SGD moves this ViT off the uniform prediction slowly: over 3 epochs its loss fell by -0.19 to
    # +0.03 across seeds 0-3 (a pass was luck of the draws); over 10 it falls by 0.37-0.72
    config = write_config(tmp_path / "sgd.yaml", shards, tmp_path / "run",
                          optim={"name": "sgd", "base_lr": 0.1, "weight_decay": 1e-4},
                          schedule={"epochs": 10, "warmup_epochs": 0.5})
    assert main(["train", str(config)]) == 0
    assert loss_fell(tmp_path / "run")


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_checkpoint(shards, tmp_path, capsys):
    config = write_config(tmp_path / "nan.yaml", shards, tmp_path / "run",
                          optim={"name": "sgd", "base_lr": 1e12, "nesterov": False},
                          checkpoint={"every_steps": 1, "keep_last": 5})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss is not finite" in err and "Traceback" not in err
    saved = checkpoint.complete_checkpoints(tmp_path / "run")
    failed_at = int(re.search(r"loss is not finite .* at epoch \d+, step (\d+)", err).group(1))
    assert saved and all(c.step < failed_at for c in saved)
    outcome = read_outcome(tmp_path / "run")
    assert (outcome.status, outcome.step) == ("diverged", failed_at) and "loss is not finite" in outcome.error


def test_steps_skipped_in_a_row_end_the_run_as_diverged(shards, tmp_path, capsys):
    # SGD at lr 1e4: the loss stays finite but DeepSpeed (ZeRO-1) skips most steps' non-finite gradients
    config = write_config(tmp_path / "skip.yaml", shards, tmp_path / "run",
                          optim={"name": "sgd", "base_lr": 1e4, "nesterov": False},
                          train={"max_skipped_steps": 2})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    outcome = read_outcome(tmp_path / "run")
    assert outcome.status == "diverged" and "train.max_skipped_steps=2" in outcome.error
    assert outcome.skipped_steps >= 3 and err.count("skipped by DeepSpeed") == outcome.skipped_steps


def test_a_half_written_checkpoint_is_skipped_on_resume(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", checkpoint={"every_steps": 4})
    assert main(["train", str(config), "train.max_steps=8"]) == 0
    root = checkpoint.checkpoint_root(tmp_path / "run")
    # a save that was killed: DeepSpeed's files (truncated) but no completeness marker
    (root / "step_00000012").mkdir()
    (root / "step_00000012" / "mp_rank_00_model_states.pt").write_bytes(b"\x80half")
    assert main(["train", str(config), "train.max_steps=10"]) == 0
    assert [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 11))
    assert checkpoint.newest_checkpoint(tmp_path / "run").step == 10


def test_bad_inputs_are_one_line_errors(shards, tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 2
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    assert main(["eval", str(config), f"weights={tmp_path / 'missing.safetensors'}"]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "no complete checkpoint" in err
    assert "weights file not found" in err and "Traceback" not in err


def test_loader_workers_are_forked_before_the_model_exists(shards, tmp_path, monkeypatch):
    # a worker forked after the model maps it, the EMA and DeepSpeed's buffers (a 62GF model's
    # workers showed 2.7 GiB RSS each): the train, eval and precise-BN loaders fork theirs first
    import psutil

    seen: dict[str, set[int]] = {}
    build_model, micro_step = Trainer._build_model, Trainer._micro_step

    def children() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)}

    before = children()  # other tests' loaders in this process may still have workers

    def record(when: str) -> None:
        seen.setdefault(when, set()).update(children() - before)

    def probed_build_model(self):
        record("model")
        return build_model(self)

    def probed_micro_step(self, images, targets):
        record("steps")
        return micro_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_build_model", probed_build_model)
    monkeypatch.setattr(Trainer, "_micro_step", probed_micro_step)
    config = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", data={"workers": 2},
                          schedule={"epochs": 2, "warmup_epochs": 0},  # an evaluation with precise BN between
                          eval={"precise_bn_samples": 64})
    assert main(["train", str(config)]) == 0

    assert len(seen["model"]) == 3 * 2  # 2 workers for each of the three loaders
    assert seen["steps"] == seen["model"]  # no worker started later, through an epoch and an evaluation

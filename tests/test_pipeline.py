"""`vitc pipeline`: pretrain on K classes -> export -> finetune on a subset at a larger resolution ->
export -> eval, as one resumable chain in one run directory (vitc/pipelines/pretrain_finetune.py)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vitc.checkpoint.store import newest_checkpoint
from vitc.cli import main
from vitc.config import config_to_dict, load_config, model_spec
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.models.vit import VisionTransformer, interpolate_pos_embed
from vitc.outcome import read_outcome
from vitc.pipelines.pretrain_finetune import Layout, stage_configs, write_marker
from vitc.weights.init_from import init_model

FINETUNE_CLASSES = ("2", "5", "7")  # digits; the finetune class i is pretrain class FINETUNE_CLASSES[i]

PRETRAIN_YAML = """
model: {name: vit_c_1gf, width: 32, depth: 2, heads: 2, stem_channels: [8, 16], stem_strides: [2, 2],
        image_size: 32, num_classes: auto}
data: {train_shards: %(pre)s, val_shards: %(pre)s, workers: 1}
train: {micro_batch: 16}
schedule: {epochs: 1, warmup_epochs: 0}
log: {tensorboard: false}
"""
# lr 0: the finetuned weights stay the pretrained ones, so the test can see what was carried over
FINETUNE_YAML = """
_base_: pretrain.yaml
model: {image_size: 48}
data: {train_shards: %(ft)s, val_shards: %(ft)s}
optim: {base_lr: 0.0, ema_alpha: 1.0e-5}
finetune: {head: map}
"""


@pytest.fixture(scope="module")
def configs(digits_folder, tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("pipeline_data")
    subset = root / "subset"
    for name in FINETUNE_CLASSES:
        shutil.copytree(digits_folder / name, subset / name)
    build_shards(digits_folder, root / "pre", options=BuildOptions(samples_per_shard=100), progress=False)
    build_shards(subset, root / "ft", options=BuildOptions(samples_per_shard=100), progress=False)
    pre = root / "pretrain.yaml"
    pre.write_text(PRETRAIN_YAML % {"pre": root / "pre"})
    ft = root / "finetune.yaml"
    ft.write_text(FINETUNE_YAML % {"ft": root / "ft"})
    return str(pre), str(ft)


@pytest.mark.slow
def test_pipeline_runs_every_stage_resumes_midway_and_redoes_a_deleted_output(configs, tmp_path, capsys):
    run = tmp_path / "run"
    pre, ft = configs

    # first invocation: stopped after one finetune step
    assert main(["pipeline", pre, ft, "--run-dir", str(run), "finetune:train.max_steps=1"]) == 3
    assert "stopped early: finetune: max_steps at step 1, before the end of the schedule" in capsys.readouterr().out
    assert read_outcome(run / "finetune").status == "max_steps"
    assert newest_checkpoint(run / "finetune").step == 1
    pretrained_mtime = (run / "pretrain.safetensors").stat().st_mtime_ns

    # second invocation: pretraining is complete and skipped, finetuning resumes at step 1
    assert main(["pipeline", pre, ft, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ran finetune, export_finetune, eval; skipped (complete) pretrain, export_pretrain" in out
    assert (run / "pretrain.safetensors").stat().st_mtime_ns == pretrained_mtime
    assert newest_checkpoint(run / "finetune").step > 1

    result = json.loads((run / "eval.json").read_text())
    assert result["count"] == 20 * len(FINETUNE_CLASSES) and 0.0 <= result["top1"] <= 100.0
    # the paper reports the EMA model (§5.4): eval.json's top level is the EMA's, the raw beside it
    assert result["reported"] == "ema" and result["weights"] == str(run / "finetune.ema.safetensors")
    assert result["top1"] == result["ema"]["top1"] and result["raw"]["weights"] == str(run / "finetune.safetensors")
    assert (run / "finetune.ema.safetensors").is_file() and not (run / "pretrain.ema.safetensors").exists()

    pre_w, ft_w = load_file(str(run / "pretrain.safetensors")), load_file(str(run / "finetune.safetensors"))
    rows = [int(c) for c in FINETUNE_CLASSES]
    assert torch.equal(ft_w["head.weight"], pre_w["head.weight"][rows])  # 10-class head -> 3 rows
    assert torch.equal(ft_w["blocks.1.attn.qkv.weight"], pre_w["blocks.1.attn.qkv.weight"])
    assert torch.equal(ft_w["pos_embed"], interpolate_pos_embed(pre_w["pos_embed"], 1, 48 // 4))

    # a run directory works as init_from too: its checkpoint is consolidated, its classes read
    cfg = load_config(ft, [f"finetune.init_from={run / 'pretrain'}", "model.num_classes=3",
                           f"train.run_dir={tmp_path / 'init-check'}"])
    model = VisionTransformer(model_spec(cfg.model))
    assert init_model(model, cfg).head == "map"
    assert torch.equal(model.head.weight, pre_w["head.weight"][rows])

    # deleting a stage's output redoes that stage and the ones after it, nothing before
    (run / "finetune.safetensors").unlink()
    assert main(["pipeline", pre, ft, "--run-dir", str(run)]) == 0
    assert "ran export_finetune, eval; skipped (complete) pretrain, export_pretrain, finetune" in capsys.readouterr().out


def test_a_complete_stage_with_another_config_is_an_error_not_a_silent_reuse(configs, tmp_path, capsys):
    pre, ft = configs
    layout = Layout(tmp_path / "run")
    other = stage_configs(pre, ft, ["pretrain:model.depth=3"], layout)[0]  # as if run with depth 3
    layout.run("pretrain").mkdir(parents=True)
    write_marker(layout, "pretrain", config_to_dict(other))

    assert main(["pipeline", pre, ft, "--run-dir", str(layout.root)]) == 2

    err = capsys.readouterr().err
    assert "stage 'pretrain'" in err and "changed: model.depth" in err and "Traceback" not in err


def test_run_dir_overrides_are_refused_since_the_pipeline_places_the_runs(configs, tmp_path, capsys):
    pre, ft = configs
    assert main(["pipeline", pre, ft, "--run-dir", str(tmp_path), "pretrain:train.run_dir=x"]) == 2
    assert "--run-dir" in capsys.readouterr().err


def test_pipeline_needs_exactly_two_configs(configs, tmp_path, capsys):
    assert main(["pipeline", configs[0], "--run-dir", str(tmp_path)]) == 2
    assert "expected PRETRAIN_CONFIG and FINETUNE_CONFIG" in capsys.readouterr().err

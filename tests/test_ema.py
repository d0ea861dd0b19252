"""The EMA of the weights: the authors' rule (pycls `update_model_ema`, branch `vitconfigs`,
commit 206d0db) step by step, and under ZeRO-3 each rank holding only its partition's EMA."""

import json

import pytest
import torch
from engine_runs import (
    ROOT,
    exported,
    metrics,
    run_ranks,
    torchrun_command,
    vitc,
    write_config,
)
from torch import nn

from vitc.engine.ema import EMARule, ModelEMA
from vitc.plan.memory import ZeroSetup, model_states


def authors_update(ema: dict, weights: dict, cur_epoch: int, cur_iter: int, rule: EMARule) -> None:
    """pycls `update_model_ema`, written out by hand over plain tensors."""
    if cur_iter % rule.period != 0:
        return
    alpha = min(1.0, rule.alpha * rule.global_batch / rule.epochs * rule.period)
    alpha = 1.0 if cur_epoch < rule.warmup_epochs else alpha
    for name, param in ema.items():
        if param.is_floating_point():
            ema[name] = param * (1.0 - alpha) + weights[name] * alpha
        else:  # num_batches_tracked: vitc copies it (pycls truncates the average into the int)
            ema[name] = weights[name].clone()


def test_ema_follows_the_authors_rule_across_the_warmup_boundary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # alpha 1e-3 × batch 64 / 4 epochs × period 2 = 0.032 after one warmup epoch of copies
    rule = EMARule(alpha=1e-3, period=2, global_batch=64, epochs=4, warmup_epochs=1)
    ema = ModelEMA(model, rule)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(3):
        for cur_iter in range(5):  # 5 iterations per epoch: updates at 0, 2 and 4 of each epoch
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))  # an optimizer step
            model(torch.randn(8, 3))  # moves the BatchNorm buffers too
            ema.update(model, epoch, cur_iter)
            authors_update(expected, model.state_dict(), epoch, cur_iter, rule)
            state = ema.model.state_dict()
            assert all(torch.equal(state[k], expected[k]) for k in expected), (epoch, cur_iter)
        if epoch == 0:  # warmup: the last update (iteration 4) copied the weights, buffers included
            assert all(torch.equal(ema.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(ema.model[0].weight, model[0].weight)  # averaged after warmup


@pytest.mark.slow
def test_zero3_keeps_each_ranks_partition_of_the_ema_as_planned_and_exports_what_it_evaluated(shards, tmp_path):
    config = write_config(tmp_path / "z3.yaml", shards, tmp_path / "run", train={"micro_batch": 4, "zero_stage": 3},
                          optim={"ema_alpha": 1e-3, "ema_update_period": 4}, schedule={"epochs": 1},
                          eval={"precise_bn_samples": 16})
    result = run_ranks([*torchrun_command(2), str(ROOT / "tests" / "ema_probe.py"), str(tmp_path / "ema"), str(config)])
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"ema.{r}.json").read_text()) for r in range(2)]
    planned = model_states(ranks[0]["params"], ZeroSetup(3, "fp32", 2, ema=True)).ema
    for rank in ranks:
        # 4Ψ/N, up to DeepSpeed's padding of each tensor's partition to a whole element per rank
        assert 0 <= rank["shard_bytes"] - planned <= 4 * rank["tensors"]
        assert rank["buffer_bytes"] < 0.05 * planned  # the BatchNorm statistics, kept whole
        assert rank["swapped"] and rank["restored"]  # evaluation swaps the EMA in and back exactly
        assert rank["joined"]  # the saved shards of both ranks join into the EMA the engine gathers
        assert rank["sliced"]  # and each rank slices its own back out (a resume on another world size)
    assert model_states(ranks[0]["params"], ZeroSetup(2, "fp32", 2, ema=True)).ema == 4 * ranks[0]["params"]
    # `vitc export --ema` joins the shards into the EMA that was evaluated (BN statistics included)
    exported(tmp_path / "run", tmp_path, "--ema")
    out = vitc("eval", str(config), f"--weights={tmp_path / 'run.safetensors'}").stdout
    assert f"top-1 {metrics(tmp_path / 'run', 'eval')[-1]['ema_top1']:.2f}%" in out

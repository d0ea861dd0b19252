"""The maths of optimization: warmup + cosine (pycls's rule), parameter groups, DeepSpeed config."""

import math

import pytest

from vitc.config import load_config, model_spec
from vitc.deepspeed_config import deepspeed_config
from vitc.distributed.env import DistEnv
from vitc.engine.optim import build_optimizer, param_groups
from vitc.engine.runtime import resolve_runtime, run_on
from vitc.engine.schedule import WarmupCosine, warmup_cosine
from vitc.errors import VitcError
from vitc.models.vit import VisionTransformer
from vitc.run import resolve_run

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.stem_channels=[8,16]",
        "model.stem_strides=[2,2]", "model.image_size=32", "model.num_classes=10"]


def test_per_step_schedule_warms_up_from_a_tenth_then_decays_to_the_floor():
    schedule = load_config(None, ["schedule.epochs=100", "schedule.warmup_epochs=5",
                                  "schedule.lr_update=step"]).schedule
    f = warmup_cosine(schedule, steps_per_epoch=10)
    assert f.total == 1000 and f.warmup == 50 and f.steps_per_unit == 1
    assert f(0) == pytest.approx(0.1, rel=1e-3)  # pycls WARMUP_FACTOR 0.1: warmup from 0.1 × lr
    cosine_at_25 = 0.005 + 0.995 * 0.5 * (1 + math.cos(math.pi * 25 / 1000))
    assert f(25) == pytest.approx((0.1 * 0.5 + 0.5) * cosine_at_25)  # halfway through the warmup
    assert f(1000) == pytest.approx(0.005)  # released configs' MIN_LR: cosine to 0.005 × lr
    after_warmup = [f(t) for t in range(50, 1001)]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))
    assert f(500) == pytest.approx(0.005 + 0.995 * 0.5)  # half-period cosine: midpoint is halfway


def pycls_get_epoch_lr(cur_epoch: int, max_epoch: int, warmup_epochs: float, warmup_factor: float,
                       min_lr: float) -> float:
    """pycls vitconfigs 206d0db, pycls/core/optimizer.py `get_epoch_lr` with LR_POLICY cos, as a
    multiplier of BASE_LR (the rule written out, to compare against)."""
    lr = 0.5 * (1.0 + math.cos(math.pi * cur_epoch / max_epoch))
    lr = (1.0 - min_lr) * lr + min_lr
    if cur_epoch < warmup_epochs:
        alpha = cur_epoch / warmup_epochs
        lr *= warmup_factor * (1.0 - alpha) + alpha
    return lr


def test_default_schedule_sets_the_lr_once_per_epoch_as_the_authors_trainer_does():
    # pycls trainer.py train_epoch: lr = get_epoch_lr(cur_epoch), set before the epoch's first step
    schedule = load_config(None, ["schedule.epochs=20", "schedule.warmup_epochs=5"]).schedule
    assert schedule.lr_update == "epoch"
    steps = 7
    f = warmup_cosine(schedule, steps_per_epoch=steps)
    for epoch in range(20):
        want = pycls_get_epoch_lr(epoch, 20, 5, 0.1, 0.005)
        assert [f(epoch * steps + i) for i in range(steps)] == pytest.approx([want] * steps), epoch
    assert f(0) == pytest.approx(0.1) and f(5 * steps) == pytest.approx(pycls_get_epoch_lr(5, 20, 5, 0.1, 0.005))


def test_lr_update_is_checked_when_the_config_loads():
    with pytest.raises(VitcError, match="schedule.lr_update"):
        load_config(None, ["schedule.lr_update=iteration"])


def test_warmup_rises_linearly_every_iteration():
    f = WarmupCosine(total=10**9, warmup=4, warmup_factor=0.2, floor=0.0)
    assert [round(f(t), 6) for t in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.mark.parametrize("override", ["schedule.warmup_epochs=200", "schedule.min_lr_factor=1.5",
                                      "schedule.epochs=0"])
def test_impossible_schedule_is_refused_when_the_config_loads(override):
    with pytest.raises(VitcError, match="schedule."):
        load_config(None, [override])


def test_no_weight_decay_on_what_the_model_names():
    model = VisionTransformer(model_spec(load_config(None, TINY).model))
    decay, no_decay = param_groups(model, weight_decay=0.24)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == model.no_weight_decay_params()
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.24
    assert {"pos_embed", "cls_token"} <= {names[id(p)] for p in decay["params"]}  # as pycls: decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_sgd_uses_momentum_and_nesterov():
    cfg = load_config(None, TINY + ["optim.name=sgd", "optim.momentum=0.8"])
    opt = build_optimizer(VisionTransformer(model_spec(cfg.model)), cfg.optim, 0.1, on_gpu=False)
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is True


def test_deepspeed_config_is_generated_and_the_passthrough_wins():
    cfg = load_config(None, ["train.micro_batch=8", "train.grad_accum=4", "train.zero_stage=2",
                             "train.clip_grad=1.0", "deepspeed.zero_optimization.overlap_comm=true",
                             "deepspeed.flops_profiler.enabled=false"])
    ds = deepspeed_config(resolve_run(cfg, world_size=4, device_kind="cpu"))
    assert ds["train_batch_size"] == 8 * 4 * 4
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["overlap_comm"] is True  # passthrough over generated
    assert ds["flops_profiler"] == {"enabled": False}
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # CPU: fp32 by default


def test_fp16_on_cpu_is_refused():
    cfg = load_config(None, ["train.precision=fp16"])
    with pytest.raises(VitcError, match="fp16 needs a GPU"):
        run_on(cfg, DistEnv(), resolve_runtime(cfg.train, DistEnv()))  # the run resolves the precision

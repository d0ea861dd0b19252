"""Partial initialisation and frozen parameters (paper Appendix C: ViT_C-72GF's stem initialised from
the ImageNet-21k ViT_C-36GF and kept frozen): `finetune.init_keys` loads only the keys under its
prefixes, `train.freeze` keeps parameters out of the optimizer and a frozen BatchNorm's statistics
fixed, and a prefix that names nothing is refused when the config loads."""

import pytest
import torch
import torch.nn.functional as F

from vitc.config import load_config, state_keys
from vitc.engine.optim import build_optimizer, freeze, layer_decay_param_groups
from vitc.errors import VitcError
from vitc.models.spec import get_spec
from vitc.models.vit import VisionTransformer
from vitc.schema import OptimConfig
from vitc.weights.init_from import apply_pretrained

TINY = dict(width=32, depth=2, heads=2, stem_channels=(8, 16), stem_strides=(2, 2), num_classes=10,
            image_size=32)


def tiny(seed: int = 0, **changes) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(get_spec("vit_c_1gf", **{**TINY, **changes}))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    model.train()
    for step in range(steps):
        torch.manual_seed(100 + step)
        images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("name,changes", [("vit_c_1gf", TINY), ("vit_p_1gf", dict(width=32, depth=2, heads=2)),
                                          ("vit_c_72gf", {})])
def test_the_config_check_knows_every_key_of_the_built_model(name, changes):
    spec = get_spec(name, **changes)
    with torch.device("meta"):
        model = VisionTransformer(spec)
    assert sorted(state_keys(spec)) == sorted(model.state_dict())


def test_prefix_selected_init_loads_only_those_keys():
    pretrained = snapshot(tiny(seed=1))
    model = tiny(seed=0)
    before = snapshot(model)

    report = apply_pretrained(model, pretrained, keys=["stem"])

    after = model.state_dict()
    for key in after:
        source = pretrained if key.startswith("stem.") else before
        assert torch.equal(after[key], source[key]), key
    assert report.loaded == sum(k.startswith("stem.") for k in after)


def test_prefix_selection_loads_a_stem_whose_first_layers_match_another_models():
    # the released ViT_C-72GF stem shares only its first five 3×3 convs with ViT_C-36GF's
    pretrained = snapshot(tiny(seed=1))  # stem [8, 16]
    model = tiny(seed=0, stem_channels=(8, 32), width=64)
    report = apply_pretrained(model, pretrained, keys=["stem.convs.0", "stem.convs.1"])
    assert torch.equal(model.stem.convs[1].running_var, pretrained["stem.convs.1.running_var"])
    assert report.loaded == 6  # conv weight, BN weight, bias, running mean, var, count

    with pytest.raises(VitcError, match=r"shape differs: stem\.convs\.3\.weight"):
        apply_pretrained(model, pretrained, keys=["stem"])


def test_frozen_parameters_are_bit_identical_after_training_and_absent_from_the_optimizer():
    model = tiny()
    frozen = freeze(model, ["stem", "pos_embed"])
    before = snapshot(model)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.5), lr=1e-2, on_gpu=False)

    train_steps(model, optimizer)

    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    after = dict(model.named_parameters())
    assert frozen and all(id(after[name]) not in in_optimizer for name in frozen)
    assert all(torch.equal(after[name], before[name]) for name in frozen)
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def test_layer_decay_groups_leave_frozen_parameters_out_too():
    model = tiny()
    frozen = {id(model.get_parameter(n)) for n in freeze(model, ["stem"])}
    groups = layer_decay_param_groups(model, 0.05, 0.75, lr=1e-3)
    assert not frozen & {id(p) for group in groups for p in group["params"]}


def test_the_batchnorm_statistics_of_a_frozen_stem_do_not_move():
    model = tiny()
    freeze(model, ["stem"])
    before = snapshot(model)
    train_steps(model, build_optimizer(model, OptimConfig(), lr=1e-2, on_gpu=False))

    after = model.state_dict()
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(after[f"stem.convs.1.{key}"], before[f"stem.convs.1.{key}"])
    assert model.training and not model.stem.convs[1].training


def test_an_unfrozen_batchnorm_keeps_training():
    model = tiny()
    freeze(model, ["blocks"])
    before = snapshot(model)
    train_steps(model, build_optimizer(model, OptimConfig(), lr=1e-2, on_gpu=False), steps=1)
    assert not torch.equal(model.state_dict()["stem.convs.1.running_mean"], before["stem.convs.1.running_mean"])


@pytest.mark.parametrize("override,message", [
    ("train.freeze=[stem.conv]", r"train\.freeze: 'stem\.conv' is no prefix of a key of model vit_c_1gf"),
    ("finetune.init_keys=[stems]", r"finetune\.init_keys: 'stems' is no prefix"),
])
def test_a_prefix_that_names_no_key_is_refused_at_load(override, message):
    with pytest.raises(VitcError, match=message):
        load_config(None, ["finetune.init_from=w.safetensors", override])


def test_init_keys_without_init_from_is_refused_at_load():
    with pytest.raises(VitcError, match="finetune.init_keys selects keys of finetune.init_from, which is unset"):
        load_config(None, ["finetune.init_keys=[stem]"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_a_run_that_freezes_its_initialised_stem_ends_with_that_stem(shards, tmp_path, stage):
    from engine_runs import TINY_CONV, exported, vitc, write_config
    from safetensors.torch import save_file

    source = tiny(seed=1)
    source.train()(torch.randn(16, 3, 32, 32))  # BatchNorm statistics of its own, not 0 and 1
    given = snapshot(source)
    save_file(given, str(tmp_path / "given.safetensors"))
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", shards, run_dir,
                          model={**TINY_CONV, "num_classes": 10},
                          finetune={"init_from": str(tmp_path / "given.safetensors"), "init_keys": ["stem"]},
                          train={"freeze": ["stem"], "max_steps": 4, "zero_stage": stage}, optim={"weight_decay": 0.5})

    # ZeRO-1: the export fills in the frozen parameters DeepSpeed's consolidation leaves out;
    # ZeRO-3: they come from each rank's fragments, and there is no whole-model file to read
    vitc("train", str(config))

    trained = exported(run_dir, tmp_path)
    assert all(torch.equal(trained[k], given[k]) for k in given if k.startswith("stem.")), "the stem moved"
    assert not torch.equal(trained["blocks.0.mlp.fc1.weight"], given["blocks.0.mlp.fc1.weight"])

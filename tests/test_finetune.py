"""Starting from pretrained weights: head re-init and 21k->1k row mapping, position-embedding
interpolation, strict key checks, layer-wise lr decay (vitc/weights/init_from.py, vitc/engine/optim.py)."""

import pytest
import torch
from safetensors.torch import save_file

from vitc.config import load_config
from vitc.engine.optim import layer_decay_param_groups
from vitc.engine.schedule import warmup_cosine
from vitc.errors import VitcError
from vitc.models.spec import get_spec
from vitc.models.vit import VisionTransformer
from vitc.weights.init_from import apply_pretrained, init_model, load_pretrained

TINY = dict(width=32, depth=2, heads=2, stem_channels=(8, 16), stem_strides=(2, 2))


def tiny(num_classes: int = 10, image_size: int = 32, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(get_spec("vit_c_1gf", **TINY, num_classes=num_classes, image_size=image_size))


def pretrained_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny(seed=1).state_dict().items()}


def test_reinit_loads_the_backbone_and_keeps_the_fresh_head():
    state = pretrained_state()
    model = tiny(num_classes=4)
    fresh_head = model.head.weight.detach().clone()

    report = apply_pretrained(model, state, head="reinit")

    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.stem.convs[1].running_var, state["stem.convs.1.running_var"])
    assert torch.equal(model.head.weight, fresh_head)
    assert report.missing == ["head.bias", "head.weight"] and report.unexpected == []


def test_map_takes_the_pretrained_rows_of_the_finetune_classes_by_name():
    state = pretrained_state()
    source = {f"n{i:08d}": i for i in range(10)}  # the "21k" classes
    target = {"n00000007": 0, "n00000002": 1, "n00000005": 2}  # the "1k" subset, own order
    model = tiny(num_classes=3)

    apply_pretrained(model, state, head="map", source_classes=source, target_classes=target)

    assert torch.equal(model.head.weight, state["head.weight"][[7, 2, 5]])
    assert torch.equal(model.head.bias, state["head.bias"][[7, 2, 5]])


def test_map_names_the_finetune_classes_that_the_pretraining_data_lacks():
    source = {f"n{i:08d}": i for i in range(10)}
    with pytest.raises(VitcError, match="n99999999"):
        apply_pretrained(tiny(num_classes=2), pretrained_state(), head="map", source_classes=source,
                         target_classes={"n00000001": 0, "n99999999": 1})


def test_position_embedding_is_interpolated_when_finetuning_at_a_larger_resolution():
    state = pretrained_state()
    model = tiny(image_size=48)  # 8×8 grid at 32 px -> 12×12 at 48 px

    report = apply_pretrained(model, state, head="keep")

    assert report.resized == ["pos_embed"]
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 32)
    assert torch.equal(model.pos_embed[:, 0], state["pos_embed"][:, 0])  # class token's embedding
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_strict_load_names_missing_and_unexpected_keys():
    state = pretrained_state()
    del state["norm.weight"]
    state["extra.scale"] = torch.ones(3)
    with pytest.raises(VitcError, match=r"missing in the pretrained weights: norm\.weight.*"
                                        r"not in the model: extra\.scale"):
        apply_pretrained(tiny(), state)


def test_allow_lists_accept_the_named_keys_and_report_them():
    state = pretrained_state()
    del state["norm.weight"]
    state["extra.scale"] = torch.ones(3)
    report = apply_pretrained(tiny(), state, allow_missing=["norm.*"], allow_unexpected=["extra.*"])
    assert (report.missing, report.unexpected) == (["norm.weight"], ["extra.scale"])


def test_a_head_of_another_class_count_asks_for_reinit_or_map():
    with pytest.raises(VitcError, match=r"head\.weight \(10, 32\) vs model \(4, 32\).*finetune\.head=reinit or map"):
        apply_pretrained(tiny(num_classes=4), pretrained_state(), head="keep")


def test_init_model_reads_an_exported_safetensors_file_from_the_config(tmp_path):
    state = pretrained_state()
    save_file(state, str(tmp_path / "pre.safetensors"))
    cfg = load_config(None, [f"finetune.init_from={tmp_path / 'pre.safetensors'}", "finetune.head=reinit"])
    model = tiny(num_classes=4)

    report = init_model(model, cfg)

    assert report.loaded == len(state) - 2
    assert torch.equal(model.pos_embed, state["pos_embed"])


def test_init_from_refuses_anything_but_safetensors_or_a_run_directory(tmp_path):
    torch.save(pretrained_state(), tmp_path / "weights.pt")
    with pytest.raises(VitcError, match=r"expected a \.safetensors file .* or a run directory"):
        load_pretrained(tmp_path / "weights.pt")


def test_layer_decay_scales_lr_from_the_head_down_to_the_stem():
    model = tiny()
    groups = layer_decay_param_groups(model, weight_decay=0.1, layer_decay=0.5, lr=1.0)

    by_param = {id(p): g for g in groups for p in g["params"]}
    scale = {n: by_param[id(p)]["lr_scale"] for n, p in model.named_parameters()}
    decay = {n: by_param[id(p)]["weight_decay"] for n, p in model.named_parameters()}
    assert len(by_param) == len(list(model.parameters()))  # every parameter, exactly once
    assert scale["stem.proj.weight"] == scale["pos_embed"] == scale["cls_token"] == 0.125
    assert scale["blocks.0.attn.qkv.weight"] == 0.25 and scale["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale["norm.weight"] == scale["head.weight"] == 1.0
    assert decay["blocks.0.attn.qkv.weight"] == 0.1 and decay["blocks.0.attn.qkv.bias"] == 0.0
    assert decay["pos_embed"] == 0.1  # decayed, as the authors' code does (optim.py)


def test_layer_decay_groups_keep_their_ratio_under_the_lr_schedule():
    model = tiny()
    optimizer = torch.optim.AdamW(layer_decay_param_groups(model, 0.1, 0.5, lr=1e-3), lr=1e-3)
    cfg = load_config(None, ["schedule.epochs=2", "schedule.warmup_epochs=1"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.schedule, 4))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] / g["lr_scale"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([lrs[0]] * len(lrs))
    assert lrs[0] != pytest.approx(1e-3)  # the schedule did move it


def test_layer_decay_outside_zero_to_one_is_rejected():
    with pytest.raises(VitcError, match="finetune.layer_decay"):
        layer_decay_param_groups(tiny(), 0.1, 1.5)

"""The ViT_P / ViT_C family: graph, invariants, initialisation, position-embedding resize."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitc.config import load_config, model_spec, state_keys
from vitc.errors import VitcError
from vitc.models.cost import bias_additions, model_cost
from vitc.models.spec import MODELS, PAPER_MODELS, get_spec
from vitc.models.stems import ConvStem, PatchifyStem
from vitc.models.structure import stem_layers
from vitc.models.vit import VisionTransformer, adapt_state_dict, interpolate_pos_embed


def tiny(**overrides):
    base = dict(width=32, depth=2, heads=2, stem_channels=(8, 16), stem_strides=(2, 2), image_size=32,
                num_classes=5)
    return get_spec("vit_c_1gf", **{**base, **overrides})


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("36gf") else n
                                  for n in PAPER_MODELS])
def test_paper_model_trains_forward_and_backward_at_batch_2(name):
    torch.manual_seed(0)
    model = VisionTransformer(get_spec(name))
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000)
    nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_table_1_structure_conv_stem_has_bn_relu_and_a_final_1x1_with_bias():
    model = VisionTransformer(get_spec("vit_c_18gf"))
    convs = [m for m in model.stem.convs if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 512]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 2, 1, 2]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.stem.convs) == 6
    assert sum(isinstance(m, nn.ReLU) for m in model.stem.convs) == 6
    assert model.stem.proj.kernel_size == (1, 1) and model.stem.proj.bias is not None
    assert len(model.blocks) == 11 and model.stem.proj.out_channels == 768


def test_patchify_stem_is_one_stride_16_conv():
    model = VisionTransformer(get_spec("vit_p_4gf"))
    assert isinstance(model.stem, PatchifyStem)
    assert model.stem.proj.kernel_size == (16, 16) and model.stem.proj.stride == (16, 16)
    assert len(model.blocks) == 12


def test_initialisation_follows_the_authors_rules():
    torch.manual_seed(0)
    model = VisionTransformer(get_spec("vit_c_4gf"))
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    fc1 = model.blocks[0].mlp.fc1.weight
    assert fc1.abs().max().item() <= math.sqrt(6 / sum(fc1.shape)) + 1e-6  # xavier uniform bound
    patchify = VisionTransformer(get_spec("vit_p_4gf")).stem.proj
    assert patchify.weight.std().item() == pytest.approx(math.sqrt(1 / (3 * 256)), rel=0.05)


def test_conv_stem_init_is_the_papers_branch_rule():
    """pycls vitconfigs 206d0db, pycls/models/vit.py `init_weights_vit`: the 3×3 convs keep PyTorch's
    default (uniform within ±1/sqrt(fan_in), std 1/sqrt(3·fan_in)), BatchNorm weight 1 / bias 0,
    the final 1×1 N(0, 2/out) with bias 0."""
    torch.manual_seed(0)
    stem = VisionTransformer(get_spec("vit_c_4gf")).stem
    convs = [m for m in stem.convs if isinstance(m, nn.Conv2d)]
    for conv in convs:
        fan_in = conv.in_channels * 9
        assert conv.weight.abs().max().item() <= 1 / math.sqrt(fan_in)
        assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)
    for bn in (m for m in stem.convs if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.count_nonzero(bn.bias) == 0
    assert stem.proj.weight.std().item() == pytest.approx(math.sqrt(2 / 384), rel=0.05)
    assert torch.count_nonzero(stem.proj.bias) == 0


def test_layer_norm_epsilon_is_a_model_key_defaulting_to_the_released_1e_6():
    default = VisionTransformer(tiny())
    assert {m.eps for m in default.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    spec = model_spec(load_config(None, ["model.norm_eps=1e-5"]).model)
    assert spec.norm_eps == 1e-5 and spec.name == "vit_c_1gf[norm_eps=1e-05]"
    with pytest.raises(VitcError, match="model.norm_eps must be > 0"):
        get_spec("vit_c_1gf", norm_eps=0.0)


# pycls's complexity() (vitconfigs 206d0db) at 20,557 classes: GFLOPs, params (M), acts (M). The
# released files' models (issue 15), and the paper's ViT_C-72GF (Appendix C; its count in SPEC §1).
PYCLS_72GF = {"vit_c_72gf_released": (70.5, 364.509, 64.983), "vit_p_72gf": (71.2, 375.503, 65.542),
              "vit_c_72gf": (72.8, 377.499, 67.650)}


@pytest.mark.parametrize("name", PYCLS_72GF)
def test_72gf_models_cost_what_pycls_complexity_counts(name):
    gflops, mparams, macts = PYCLS_72GF[name]
    spec = get_spec(name, num_classes=20557)
    cost = model_cost(spec)
    assert round(cost.params / 1e6, 3) == mparams
    assert round(cost.acts / 1e6, 3) == macts
    # pycls also counts each bias addition as a flop; vitc (and fvcore) do not
    assert round((cost.flops + bias_additions(spec)) / 1e9, 1) == gflops


def test_vit_c_72gf_is_appendix_c_model_and_the_released_one_a_variant():
    c, p, r = get_spec("vit_c_72gf"), get_spec("vit_p_72gf"), get_spec("vit_c_72gf_released")
    # Appendix C: 22 blocks, width 1152, 18 heads, MLP ×4; the C-stem of 18GF/36GF, no block removed
    assert (c.width, c.heads, c.mlp_hidden, c.patch_size, c.depth) == (1152, 18, 4608, 16, 22)
    assert (p.width, p.heads, p.mlp_hidden, p.patch_size, p.depth, p.stem) == (1152, 18, 4608, 16, 22, "patchify")
    assert (c.stem_channels, c.stem_strides) == (get_spec("vit_c_36gf").stem_channels, get_spec("vit_c_36gf").stem_strides)
    # the released IN21k_ViT-C-72GF_adamw_128gpus.yaml: C_STEM_DIMS/STRIDES and NUM_LAYERS 21
    assert r.stem_channels == (64, 128, 128, 256, 256, 256, 512, 512)
    assert r.stem_strides == (2, 2, 1, 2, 1, 1, 2, 1) and r.depth == 21


@pytest.mark.parametrize("size,gflops", [(224, 72.7), (384, 224)])
def test_vit_c_72gf_costs_what_appendix_c_says(size, gflops):
    # Appendix C: ViT_C-72GF is ~72.7 GF at 224 px and ~224 GF when fine-tuned at 384 px
    flops = model_cost(get_spec("vit_c_72gf", image_size=size)).flops / 1e9
    assert flops == pytest.approx(gflops, abs=0.05 if size == 224 else 0.5)


@pytest.mark.parametrize("classifier", ["token", "pool"])
def test_classifier_token_or_mean_pool(classifier):
    model = VisionTransformer(tiny(classifier=classifier))
    assert (model.cls_token is not None) == (classifier == "token")
    assert model.pos_embed.shape[1] == 8 * 8 + (classifier == "token")  # stride 4 on 32 px
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 5)


def test_input_size_not_divisible_by_the_stem_stride_is_a_clear_error():
    with pytest.raises(VitcError, match=r"model.image_size 225 is not divisible by the stem's total stride 16"):
        get_spec("vit_p_1gf", image_size=225)


def test_conv_stem_strides_must_multiply_to_the_patch_size():
    with pytest.raises(VitcError, match=r"product of model.stem_strides \[2, 2, 2\] is 8, but model.patch_size is 16"):
        model_spec(load_config(None, ["model.stem_strides=[2, 2, 2]", "model.stem_channels=[8, 16, 32]",
                                      "model.patch_size=16"]).model)


def test_stem_channels_on_a_patchify_model_are_rejected_not_ignored():
    with pytest.raises(VitcError, match="apply to the conv stem only"):
        model_spec(load_config(None, ["model.name=vit_p_1gf", "model.stem_channels=[8, 16]"]).model)


def test_every_stem_key_changes_the_built_graph():
    base = VisionTransformer(tiny())
    wider = VisionTransformer(tiny(stem_channels=(8, 24)))
    deeper = VisionTransformer(tiny(stem_channels=(8, 16, 16), stem_strides=(2, 1, 2)))
    assert wider.stem.convs[3].out_channels == 24
    assert len([m for m in deeper.stem.convs if isinstance(m, nn.Conv2d)]) == 3
    assert isinstance(base.stem, ConvStem)


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(VitcError, match=r"unknown model 'vit_c_4fg' \(did you mean 'vit_c_4gf'\?\)"):
        get_spec("vit_c_4fg")


def test_model_refuses_an_input_of_another_size():
    with pytest.raises(VitcError, match=r"built for 32×32"):
        VisionTransformer(tiny())(torch.randn(1, 3, 64, 64))


def test_pos_embed_interpolation_224_to_384_and_identity_at_same_size():
    pos = torch.randn(1, 1 + 14 * 14, 192)
    assert interpolate_pos_embed(pos, 1, 14) is pos
    resized = interpolate_pos_embed(pos, 1, 24)
    assert resized.shape == (1, 1 + 24 * 24, 192)
    assert torch.equal(resized[:, 0], pos[:, 0])  # the class token is not a grid position


def test_weights_trained_at_224_load_and_run_at_384():
    spec224 = get_spec("vit_c_1gf")
    trained = VisionTransformer(spec224).state_dict()
    spec384 = get_spec("vit_c_1gf", image_size=384)
    model = VisionTransformer(spec384)
    model.load_state_dict(adapt_state_dict(trained, spec384))
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


def test_no_weight_decay_covers_biases_and_norms_only():
    # the authors' code: biases, LayerNorm and BatchNorm get wd 0; the position embedding and class
    # token are decayed (pycls vitconfigs 206d0db, pycls/core/optimizer.py construct_optimizer)
    model = VisionTransformer(tiny())
    skip = model.no_weight_decay_params()
    names = dict(model.named_parameters())
    assert {"norm.weight", "norm.bias", "head.bias", "blocks.0.attn.qkv.bias", "blocks.0.norm1.weight",
            "stem.convs.1.weight", "stem.convs.1.bias", "stem.proj.bias"} <= skip
    assert skip <= set(names) and not {"pos_embed", "cls_token"} & skip
    decayed = set(names) - skip
    assert decayed == {n for n in names if n.endswith("weight") and names[n].ndim >= 2} | {"pos_embed", "cls_token"}


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = VisionTransformer(tiny())
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    checkpointed = VisionTransformer(tiny(act_checkpoint=True))
    checkpointed.load_state_dict(model.state_dict())
    checkpointed(x).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, checkpointed.parameters()))


def test_stochastic_depth_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = VisionTransformer(tiny(drop_path=0.5, depth=4))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))


def test_every_registry_model_builds_on_the_meta_device():
    for name, spec in MODELS.items():
        with torch.device("meta"):
            model = VisionTransformer(spec)
        assert len(model.blocks) == spec.depth, name


@pytest.mark.parametrize("name", ["vit_s1_4gf", "vit_s4_4gf", "vit_p_bn_4gf", "vit_c_ln_4gf"])
def test_stem_variants_build_their_described_layers_and_state_keys(name):
    spec = get_spec(name, image_size=64, depth=1)
    model = VisionTransformer(spec)
    assert sorted(state_keys(spec)) == sorted(model.state_dict())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (layer.kernel, layer.stride, layer.padding) for layer in stem_layers(spec)]


def test_layer_norm_stem_normalises_over_channels_at_each_position():
    from vitc.models.layers import LayerNorm2d

    x = torch.randn(2, 5, 3, 4)
    y = LayerNorm2d(5)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 4), atol=1e-5)
    assert torch.allclose(y, F.layer_norm(x.permute(0, 2, 3, 1), (5,), eps=1e-6).permute(0, 3, 1, 2))


def test_a_stem_whose_layers_do_not_reach_the_grid_is_a_clear_error():
    with pytest.raises(VitcError, match=r"give a 15×15 grid on 224 px, not 14×14"):
        get_spec("vit_s1_4gf", stem_paddings=(1, 1, 1, 1))
    with pytest.raises(VitcError, match="model.stem_kernels .* one entry per stem conv"):
        get_spec("vit_s1_4gf", stem_kernels=(3, 3, 2))
    with pytest.raises(VitcError, match="set model.stem_kernels for a patchify layer"):
        get_spec("vit_c_4gf", stem_strides=(1, 1, 1, 16))

"""Interoperating with the real timm: `vitc export --format timm`, vitc's models in timm's registry,
and `finetune.init_from` a timm checkpoint (vitc/weights/timm_format.py, vitc/weights/timm_models.py)."""

import json
import subprocess
import sys

import pytest
import timm
import torch
from engine_runs import (
    TINY_CONV,
    TINY_PATCHIFY,
    exported,
    metrics,
    vitc,
    write_config,
)
from safetensors.torch import save_file
from timm.models import save_for_hf

from vitc.cli import main
from vitc.config import load_config, model_spec
from vitc.data.shards.manifest import Manifest
from vitc.errors import VitcError
from vitc.models.spec import get_spec
from vitc.models.vit import VisionTransformer
from vitc.weights import timm_models  # noqa: F401  (registers vitc's models in timm's registry)
from vitc.weights.init_from import init_model
from vitc.weights.timm_format import (
    from_timm_keys,
    load_timm_checkpoint,
    write_timm_dir,
)

STEMS = {"patchify": ("vit_p_1gf", dict(patch_size=4)),
         "conv": ("vit_c_1gf", dict(stem_channels=(8, 16), stem_strides=(2, 2)))}
# timm's own ViT with TINY_PATCHIFY's dimensions (MLP ratio 3 as vit_p_1gf), pretrained at 64 px
TIMM_TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=4, mlp_ratio=3.0, num_classes=10)
# timm renders only the patchify model without vitc; the subprocess proves it never imports vitc
TIMM_ONLY = """
import json, sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
torch.manual_seed(0)
logits = model(torch.randn(4, 3, 32, 32))
assert not [m for m in sys.modules if m.split(".")[0] == "vitc"], "vitc was imported"
print(json.dumps(logits.tolist()))
"""


def tiny_vitc(stem: str, **changes) -> VisionTransformer:
    """A tiny vitc model whose BatchNorm statistics are not the initial ones (they are exported too)."""
    name, stem_args = STEMS[stem]
    torch.manual_seed(0)
    model = VisionTransformer(get_spec(name, width=32, depth=2, heads=2, image_size=32, num_classes=10,
                                       **stem_args, **changes))
    model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.eval()(torch.randn(4, 3, 32, 32))


def train_run(shards, tmp, model: dict, **sections):
    config = write_config(tmp / "run.yaml", shards, tmp / "run", model, schedule={"epochs": 1}, **sections)
    assert main(["train", str(config)]) == 0
    return tmp / "run"


@pytest.mark.parametrize("stem", ["patchify", "conv"])
def test_vitc_to_timm_to_vitc_round_trip_is_exact(stem, tmp_path):
    model = tiny_vitc(stem)
    write_timm_dir(model.state_dict(), model.spec, tmp_path / "timm")

    in_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    back = from_timm_keys(in_timm.state_dict())

    assert torch.allclose(logits_of(in_timm), logits_of(model), atol=1e-5, rtol=0)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    loaded = load_timm_checkpoint(tmp_path / "timm", model.spec)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_layer_norm_eps_other_than_timms_travels_in_the_config(tmp_path):
    model = tiny_vitc("patchify", norm_eps=1e-5, classifier="pool")
    write_timm_dir(model.state_dict(), model.spec, tmp_path / "timm")

    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    in_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)

    assert config["architecture"] == "vit_p_1gf" and config["model_args"]["norm_eps"] == 1e-5
    assert in_timm.norm.eps == 1e-5
    assert torch.allclose(logits_of(in_timm), logits_of(model), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_exported_patchify_run_loads_in_timm_in_a_process_without_vitc(shards, tmp_path):
    run = train_run(shards, tmp_path, TINY_PATCHIFY)
    vitc("export", str(run), "--format", "timm", "--out", str(tmp_path / "timm"))

    timm_only = subprocess.run([sys.executable, "-c", TIMM_ONLY, str(tmp_path / "timm")], cwd=tmp_path,
                               capture_output=True, text=True)
    assert timm_only.returncode == 0, timm_only.stderr[-2000:]
    model = VisionTransformer(model_spec(load_config(run / "config.yaml").model, 10))
    model.load_state_dict(exported(run, tmp_path))
    assert torch.allclose(torch.tensor(json.loads(timm_only.stdout)), logits_of(model), atol=1e-5, rtol=0)

    pretrained = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    classes = Manifest.load(shards / "train").classes
    assert pretrained["label_names"] == sorted(classes, key=classes.get)
    assert (pretrained["input_size"], pretrained["crop_pct"], pretrained["num_classes"]) == ([3, 32, 32], 0.875, 10)
    assert pretrained["mean"] == [0.485, 0.456, 0.406] and pretrained["interpolation"] == "bilinear"


@pytest.mark.slow
def test_exported_conv_stem_run_loads_in_timm_once_vitc_timm_is_imported(shards, tmp_path):
    run = train_run(shards, tmp_path, TINY_CONV)
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0

    in_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    model = VisionTransformer(model_spec(load_config(run / "config.yaml").model, 10))
    model.load_state_dict(exported(run, tmp_path))

    assert in_timm.patch_embed.proj.kernel_size == (1, 1)  # HybridEmbed, patch_size=1: the stem's 1×1
    assert torch.allclose(logits_of(in_timm), logits_of(model), atol=1e-5, rtol=0)


def test_timm_registry_builds_vit_c_4gf_with_the_parameter_count_of_vitc_audit():
    model = timm.create_model("vit_c_4gf")
    audit = json.loads(vitc("audit", "vit_c_4gf", "--format", "json").stdout)[0]

    assert sum(p.numel() for p in model.parameters()) == round(audit["mparams"] * 1e6)
    assert len(model.blocks) == 11 and model.patch_embed.grid_size == (14, 14)


def test_init_from_a_timm_checkpoint_loads_its_weights_and_interpolates_positions(tmp_path):
    torch.manual_seed(1)
    timm_model = timm.create_model("vit_tiny_patch16_224", img_size=64, **TIMM_TINY)
    save_for_hf(timm_model, str(tmp_path / "hf"), safe_serialization=True)
    cfg = load_config(None, [f"finetune.init_from={tmp_path / 'hf'}"])
    model = tiny_vitc("patchify")

    report = init_model(model, cfg)

    assert report.resized == ["pos_embed"] and report.unexpected == report.missing == []
    assert torch.equal(model.stem.proj.weight, timm_model.patch_embed.proj.weight)
    assert torch.equal(model.blocks[1].attn.qkv.weight, timm_model.blocks[1].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 32)


@pytest.mark.slow
def test_vitc_train_fine_tunes_from_a_timm_checkpoint(shards, tmp_path):
    save_for_hf(timm.create_model("vit_tiny_patch16_224", img_size=64, **TIMM_TINY), str(tmp_path / "hf"),
                safe_serialization=True)
    config = write_config(tmp_path / "ft.yaml", shards, tmp_path / "run", TINY_PATCHIFY, schedule={"epochs": 1},
                          finetune={"init_from": str(tmp_path / "hf"), "head": "reinit"})

    result = vitc("train", str(config))

    assert "finetune: loaded" in result.stderr and "resized: pos_embed" in result.stderr
    assert len(metrics(tmp_path / "run")) == 25 and metrics(tmp_path / "run", "eval")


def test_a_timm_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path):
    other = dict(TIMM_TINY, num_heads=4, mlp_ratio=4.0)
    save_for_hf(timm.create_model("vit_tiny_patch16_224", img_size=32, **other), str(tmp_path / "hf"),
                safe_serialization=True)
    cfg = load_config(None, [f"finetune.init_from={tmp_path / 'hf'}"])

    with pytest.raises(VitcError, match=r"heads 4 vs model 2; mlp_hidden 128 vs model 96") as error:
        init_model(tiny_vitc("patchify"), cfg)
    assert "\n" not in str(error.value)


def test_a_bare_safetensors_file_with_timm_keys_is_checked_by_its_shapes(tmp_path):
    wide = timm.create_model("vit_tiny_patch16_224", img_size=32, **dict(TIMM_TINY, embed_dim=48, patch_size=8))
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    cfg = load_config(None, [f"finetune.init_from={tmp_path / 'wide.safetensors'}"])

    with pytest.raises(VitcError, match=r"width 48 vs model 32.*patch_size 8 vs model 4"):
        init_model(tiny_vitc("patchify"), cfg)

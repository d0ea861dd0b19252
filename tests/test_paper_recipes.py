"""The shipped paper configs are the paper's runs: each config that reproduces one of the authors' 14
released configs resolves, at the released GPU count, to every value pinned with its source in
tests/data/paper_recipes.json (the paper where it states a value, else the released file); and the
runs of the paper's stability grid (§5.1/§5.2, configs/in1k_stability/) train at Table 4 (left)'s lr/wd
and otherwise as those configs."""

import json
from pathlib import Path

import pytest

from vitc.config import load_config, model_spec
from vitc.run import resolve_run

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((REPO / "tests/data/paper_recipes.json").read_text())["configs"]


def expected(entry: dict, key: str):
    """What vitc's config must hold for `key`: the pinned value, or vitc's stated replacement."""
    return entry[key].get("vitc", entry[key]["value"])


def resolve(entry: dict):
    """(config, run) of `entry['config']` on the released number of GPUs. Where the data lies is no
    part of the recipe: unset, `model.num_classes: auto` stays unresolved instead of reading it."""
    cfg = load_config(REPO / entry["config"], ["data.train_shards=null"])
    return cfg, resolve_run(cfg, entry["num_gpus"]["value"], "gpu", shards=())


def resolved_recipe(entry: dict) -> dict:
    """The recipe values of `entry['config']` resolved on the released number of GPUs."""
    cfg, run = resolve(entry)
    o, s, d, m = cfg.optim, cfg.schedule, cfg.data, cfg.model
    spec = run.model or model_spec(m, entry["num_classes"]["value"])  # `auto`: the released count
    return {
        "model": spec.name, "num_classes": m.num_classes if m.num_classes == "auto" else run.num_classes,
        "global_batch": run.global_batch, "optimizer": o.name, "betas": o.betas,
        "base_lr_at_2048": o.base_lr if o.reference_batch == 2048 else None,
        "lr_at_global_batch": run.lr, "weight_decay": o.weight_decay,
        "epochs": s.epochs, "warmup_epochs": s.warmup_epochs, "warmup_factor": s.warmup_factor,
        "min_lr_factor": s.min_lr_factor, "ema_alpha": o.ema_alpha, "ema_update_period": o.ema_update_period,
        "norm_eps": spec.norm_eps, "mixup_alpha": d.mixup_alpha, "cutmix_alpha": d.cutmix_alpha,
        "label_smoothing": d.label_smoothing, "augment": d.auto_augment, "random_erasing": d.random_erasing,
        "drop_path": spec.drop_path, "train_size": spec.image_size,
        "test_resize": round(spec.image_size / d.eval_crop_ratio), "test_crop": spec.image_size,
        "frozen": cfg.train.freeze, "pca_lighting_std": d.pca_std,
    }


@pytest.mark.parametrize("released", sorted(PINNED))
def test_each_paper_config_resolves_to_the_pinned_recipe(released):
    entry = PINNED[released]
    recipe = resolved_recipe(entry)
    for key, value in recipe.items():
        assert value == pytest.approx(expected(entry, key)), f"{entry['config']}: {key}"


@pytest.mark.parametrize("released", sorted(PINNED))
def test_the_released_gpu_count_needs_no_accumulation(released):
    # each config's micro-batch is the released per-GPU batch: the authors' step, image for image
    assert resolve(PINNED[released])[1].grad_accum == 1


def test_every_pinned_value_names_its_source_and_every_disagreement_is_explained():
    for released, entry in PINNED.items():
        assert (REPO / entry["config"]).is_file(), released
        for key, item in entry.items():
            if key == "config":
                continue
            assert item["source"], f"{released}: {key}"
            if "released" in item or "vitc" in item:
                assert item.get("note"), f"{released}: {key} differs without a note"


def test_where_the_paper_and_the_released_files_disagree_the_paper_wins():
    c36 = PINNED["ViT-C-36GF_adamw_32gpus.yaml"]
    assert (c36["base_lr_at_2048"]["value"], c36["weight_decay"]["value"]) == (6.0e-4, 0.28)
    assert (c36["base_lr_at_2048"]["released"], c36["weight_decay"]["released"]) == (7.0e-4, 0.24)
    c72 = PINNED["IN21k_ViT-C-72GF_adamw_128gpus.yaml"]
    assert (c72["weight_decay"]["value"], c72["weight_decay"]["released"]) == (0.15, 0.28)
    assert PINNED["IN21k_ViT-P-36GF_adamw_64gpus.yaml"]["lr_at_global_batch"]["value"] == pytest.approx(1.2e-3)


def test_every_released_config_is_pinned():
    assert len(PINNED) == 14
    assert sum(name.startswith("IN21k_") for name in PINNED) == 6


def test_the_72gf_stem_loads_and_freezes_every_3x3_layer_of_the_36gf_stem():
    # Appendix C: ViT_C-72GF's stem is initialised from the ImageNet-21k ViT_C-36GF and kept frozen
    entry = PINNED["IN21k_ViT-C-72GF_adamw_128gpus.yaml"]
    cfg = load_config(REPO / entry["config"], ["data.train_shards=null"])
    assert cfg.finetune.init_keys == cfg.train.freeze == entry["frozen"]["value"] == ["stem.convs"]
    assert cfg.finetune.init_from == load_config(REPO / "configs/in21k/vit_c_36gf.yaml").train.run_dir
    shapes = {name: layer_shapes(name) for name in ("vit_c_36gf", "vit_c_72gf")}
    stem = {k: v for k, v in shapes["vit_c_72gf"].items() if k.startswith("stem.")}
    convs = {k: v for k, v in stem.items() if k.startswith("stem.convs.")}
    assert convs and all(shapes["vit_c_36gf"][k] == v for k, v in convs.items())
    # only the 1×1 to the width differs: it trains
    assert {k for k in stem if shapes["vit_c_36gf"][k] != stem[k]} == {"stem.proj.weight", "stem.proj.bias"}


def layer_shapes(name: str) -> dict[str, tuple[int, ...]]:
    import torch

    from vitc.models.spec import get_spec
    from vitc.models.vit import VisionTransformer

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VisionTransformer(get_spec(name)).state_dict().items()}


CODE = json.loads((REPO / "tests/data/paper_recipes.json").read_text())["code"]


def test_weight_decay_spares_only_biases_and_norms_as_the_authors_code_does():
    import torch

    from vitc.engine.optim import param_groups
    from vitc.models.spec import get_spec
    from vitc.models.vit import VisionTransformer

    assert CODE["weight_decay_exempt"]["value"] == ["bias", "LayerNorm", "BatchNorm"]
    model = VisionTransformer(get_spec("vit_c_1gf", depth=1, width=48, heads=2, image_size=32,
                                       stem_channels=(8, 16), stem_strides=(2, 2), num_classes=3))
    decay, no_decay = param_groups(model, 0.24)
    names = {id(p): n for n, p in model.named_parameters()}
    norms = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    exempt = {n for n, _ in model.named_parameters() if n.endswith(".bias") or n.rsplit(".", 1)[0] in norms}
    assert {names[id(p)] for p in no_decay["params"]} == exempt
    assert {"pos_embed", "cls_token"} <= {names[id(p)] for p in decay["params"]}


@pytest.mark.parametrize("released", sorted(PINNED))
def test_each_paper_config_sets_the_lr_once_per_epoch(released):
    assert CODE["lr_update"]["value"] == "epoch"
    cfg = load_config(REPO / PINNED[released]["config"], ["data.train_shards=null"])
    assert cfg.schedule.lr_update == CODE["lr_update"]["value"]


def test_pca_lighting_is_pycls_lighting_before_normalisation():
    import torch

    from vitc.data.loading.draws import drawing_from, part_seed
    from vitc.data.loading.transforms import (
        EIG_VALS,
        EIG_VECS,
        MEAN,
        STD,
        Recipe,
        TrainBatchTransform,
    )

    pinned = CODE["pca_lighting"]["value"]
    assert (list(EIG_VALS), [list(r) for r in EIG_VECS]) == (pinned["eig_vals"], pinned["eig_vecs"])
    assert Recipe.from_config(load_config(None, []), 10).pca_std == pinned["std"]
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    seeds = torch.tensor([11, 12, 13])
    plain = Recipe(image_size=8, num_classes=10, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0)
    x, _ = TrainBatchTransform(plain)(images, torch.arange(3), seeds, 0)
    for image, out, seed in zip(images, x, seeds.tolist()):
        with drawing_from(part_seed(seed, "lighting")):
            alpha = (torch.randn(3, dtype=torch.float64) * pinned["std"]).tolist()
        # pycls transforms.lighting on the 0..1 RGB image, then color_norm (imagenet.py _prepare_im)
        rgb = [sum(pinned["eig_vecs"][i][j] * alpha[j] * pinned["eig_vals"][j] for j in range(3)) for i in range(3)]
        im = image.double() / 255
        want = torch.stack([(im[i] + rgb[i] - MEAN[i] / 255) / (STD[i] / 255) for i in range(3)])
        assert torch.allclose(out.double(), want, atol=1e-4)
    off = Recipe(image_size=8, num_classes=10, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0, pca_std=0)
    x_off, _ = TrainBatchTransform(off)(images, torch.arange(3), seeds, 0)
    assert not torch.allclose(x, x_off)


def test_pca_lighting_draws_are_a_function_of_the_sample_seed_alone():
    import torch

    from vitc.data.loading.transforms import Recipe, TrainBatchTransform

    plain = TrainBatchTransform(Recipe(image_size=8, num_classes=10, mixup_alpha=0, cutmix_alpha=0,
                                       label_smoothing=0))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    both, _ = plain(images.clone(), torch.arange(2), torch.tensor([5, 6]), batch_seed=0)
    alone, _ = plain(images[1:].clone(), torch.arange(1), torch.tensor([6]), batch_seed=9)
    assert torch.equal(both[1], alone[0])  # same sample seed, same shift, whatever the batch
    torch.manual_seed(0)
    state = torch.get_rng_state()
    again, _ = plain(images.clone(), torch.arange(2), torch.tensor([5, 6]), batch_seed=0)
    assert torch.equal(both, again) and torch.equal(torch.get_rng_state(), state)
    from vitc.data.loading.transforms import lighting_shift

    assert not torch.equal(lighting_shift(5, 0.1), lighting_shift(6, 0.1))


@pytest.mark.parametrize("name", sorted(CODE["stem_variants"]["value"]))
def test_each_stem_variant_of_table_3_and_fig_7_is_shipped_as_data_and_built_as_pinned(name):
    import torch

    from vitc.config import model_spec
    from vitc.models.structure import stem_layers
    from vitc.models.vit import VisionTransformer

    pinned = CODE["stem_variants"]["value"][name]
    spec = model_spec(load_config(REPO / f"configs/models/{name}.yaml").model)
    assert spec.name == name  # the config's stem keys equal the registry entry's
    layers = stem_layers(spec)
    assert [c.kernel for c in layers] == pinned["kernels"] and [c.stride for c in layers] == pinned["strides"]
    assert [c.padding for c in layers] == pinned["paddings"] and [c.c_out for c in layers] == pinned["channels"]
    assert {c.norm for c in layers[:-1]} == {pinned.get("norm", "batch")} and layers[-1].norm is None
    with torch.device("meta"):
        model = VisionTransformer(spec)
    norms = [m for m in model.stem.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))]
    assert len(norms) == len(layers) - 1
    assert all(isinstance(m, torch.nn.LayerNorm) == (pinned.get("norm") == "layer") for m in norms)
    run = load_config(REPO / f"configs/in1k/{name}_100ep.yaml", ["data.train_shards=null"])
    assert run.model.name == name and run.schedule.epochs == 100


def test_every_stem_variant_passes_the_flop_parity_audit_against_vit_p_4gf():
    from vitc.audit.report import check_parity, parity_pairs, resolve_targets

    targets = [str(REPO / f"configs/models/{name}.yaml") for name in CODE["stem_variants"]["value"]]
    results = check_parity(parity_pairs(resolve_targets(targets, [], None, None)))
    assert len(results) == len(targets) and {r.patchify_name for r in results} == {"vit_p_4gf"}
    assert all(r.ok for r in results), [r.describe() for r in results if not r.ok]


def test_appendix_b_16gf_pair_is_registered():
    from vitc.models.spec import get_spec

    # Appendix B: ViT_P-16GF = ViT_P-4GF with 48 blocks; ViT_C-16GF = 47 blocks with ViT_C-4GF's stem
    p, c, c4 = get_spec("vit_p_16gf"), get_spec("vit_c_16gf"), get_spec("vit_c_4gf")
    assert (p.depth, p.width, p.stem) == (48, 384, "patchify")
    assert (c.depth, c.width, c.stem_channels, c.stem_strides) == (47, 384, c4.stem_channels, c4.stem_strides)


def test_auto_augment_uses_the_authors_fill_and_interpolation_and_states_its_policy():
    import torchvision.transforms.v2 as v2

    from vitc.data.loading.transforms import Recipe, TrainSampleTransform

    entry = CODE["autoaugment"]
    augment = TrainSampleTransform(Recipe(image_size=32, num_classes=10)).augment
    assert isinstance(augment, v2.AutoAugment) and augment.policy == v2.AutoAugmentPolicy.IMAGENET
    assert entry["vitc"]["policy"] == "torchvision ImageNet" != entry["value"]["policy"]  # a stated difference
    assert augment.interpolation == v2.InterpolationMode.BILINEAR
    assert entry["vitc"]["interpolation"] == entry["value"]["interpolation"] == "bilinear"
    assert augment.fill == entry["vitc"]["fill"] == entry["value"]["fill"] == 128  # pycls's grey


STABILITY = json.loads((REPO / "tests/data/paper_recipes.json").read_text())["stability"]
STABILITY_DIR = REPO / "configs/in1k_stability"
STABILITY_RUNS = [(model, optimizer, epochs) for model in STABILITY["models"]
                  for optimizer in STABILITY["optimizers"]["value"] for epochs in STABILITY["epochs"]["value"]]


def test_the_stability_grid_of_5_1_and_5_2_is_shipped_run_by_run():
    # §5.2: {P, C} × {1, 4, 18} GF × {50, 100, 200, 400} epochs × {AdamW, SGD}: 48 runs, one file each
    assert len(STABILITY_RUNS) == 48
    assert {p.name for p in STABILITY_DIR.glob("*.yaml")} == {f"{m}_{o}_{e}ep.yaml" for m, o, e in STABILITY_RUNS}


def flat(tree: dict, prefix: str = "") -> dict:
    return {k: v for key, value in tree.items()
            for k, v in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}).items()}


@pytest.mark.parametrize("model, optimizer, epochs", STABILITY_RUNS)
def test_each_stability_run_trains_at_table_4_left_and_otherwise_as_the_table_2_run(model, optimizer, epochs):
    from dataclasses import asdict

    pinned, name = STABILITY["models"][model], f"{model}_{optimizer}_{epochs}ep"
    cfg = load_config(STABILITY_DIR / f"{name}.yaml", ["data.train_shards=null"])
    run = resolve_run(cfg, pinned["num_gpus"]["value"], "gpu", shards=())
    o = cfg.optim
    assert (run.model.name, o.name, cfg.schedule.epochs) == (model, optimizer, epochs)
    assert (o.reference_batch, run.global_batch, run.grad_accum) == (2048, STABILITY["global_batch"]["value"], 1)
    assert o.base_lr == pytest.approx(pinned[optimizer]["base_lr_at_2048"]["value"]) == pytest.approx(run.lr)
    assert o.weight_decay == pytest.approx(pinned[optimizer]["weight_decay"]["value"])
    if optimizer == "sgd":
        assert (o.momentum, o.nesterov) == (STABILITY["sgd_momentum"]["value"], STABILITY["sgd_nesterov"]["value"])
    else:
        assert o.betas == STABILITY["betas"]["value"]
    assert cfg.train.run_dir == f"runs/in1k_stability/{name}"  # no two runs share a directory
    # the rest of the recipe is the model's Table 2 config's, pinned above
    table2 = flat(asdict(load_config(REPO / f"configs/in1k/{model}.yaml", ["data.train_shards=null"])))
    differ = {k for k, v in flat(asdict(cfg)).items() if v != table2[k]}
    assert differ <= {"optim.name", "optim.base_lr", "optim.weight_decay", "schedule.epochs", "train.run_dir"}

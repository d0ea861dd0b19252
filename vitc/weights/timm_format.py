"""timm's checkpoint layout, both ways: `vitc export --format timm` writes it, `finetune.init_from` reads it.

A timm checkpoint is a directory in the Hugging Face-hub layout: `config.json` (`architecture`,
`model_args`, `pretrained_cfg`) and `model.safetensors`. vitc's ViT and timm's `VisionTransformer`
share every key except the stem's: the patchify stem is timm's `patch_embed.proj`, and the conv
stem is timm's `HybridEmbed` with the 3×3 convs as its backbone and the final 1×1 conv as its
`patch_size=1` projection. With the same layer-norm eps the two compute the same logits.

A patchify model with timm's eps (1e-6) is described by plain `vision_transformer` arguments, so
timm loads it without vitc; anything else names an architecture that `vitc.weights.timm_models` registers.
Nothing here imports timm.
"""

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitc.checkpoint.integrity import out_of_space, space_line
from vitc.errors import VitcError
from vitc.fileio import atomic_output, atomic_write_text
from vitc.models.spec import MODELS, ViTSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer builds LayerNorm(eps=1e-6) unless told otherwise
# vitc prefix <-> timm prefix; every other key is the same in both
_PREFIXES = (("stem.convs.", "patch_embed.backbone."), ("stem.proj.", "patch_embed.proj."))
# architecture names for plain timm exports; model_args set every dimension, the name only picks
# timm's VisionTransformer constructor (and tells a reader the nearest ViT size)
_TIMM_NAMES = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
               1024: "vit_large_patch16_224"}
# vitc/data/transforms.py's ImageNet statistics in timm's 0..1 units; vitc resizes bilinearly
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rename(state: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    def new(key: str) -> str:
        for old_prefix, new_prefix in pairs:
            if key.startswith(old_prefix):
                return new_prefix + key[len(old_prefix):]
        return key
    return {new(k): v for k, v in state.items()}


def to_timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vitc state dict with timm's key names."""
    return _rename(state, _PREFIXES)


def from_timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT state dict with vitc's key names."""
    return _rename(state, [(b, a) for a, b in _PREFIXES])


def timm_model_args(spec: ViTSpec) -> tuple[str, dict]:
    """(architecture, model_args) that rebuild `spec` with `timm.create_model(architecture, **model_args)`."""
    if spec.stem_kernels or spec.stem_paddings or spec.stem_norm != "batch":
        # vitc's timm entry (weights/timm_models.py) builds 3×3 BN stems only
        raise VitcError(f"model '{spec.name}': its stem (model.stem_kernels/stem_paddings/stem_norm) has no "
                        "timm form; export it in vitc's format (vitc export without --format timm)")
    mlp_ratio = spec.mlp_hidden / spec.width
    if int(spec.width * mlp_ratio) != spec.mlp_hidden:  # timm truncates width × ratio; round-off must not
        mlp_ratio = (spec.mlp_hidden + 0.5) / spec.width
    args = dict(embed_dim=spec.width, depth=spec.depth, num_heads=spec.heads,
                mlp_ratio=mlp_ratio, img_size=spec.image_size,
                num_classes=spec.num_classes, class_token=spec.classifier == "token",
                global_pool="token" if spec.classifier == "token" else "avg",
                fc_norm=False)  # vitc pools after the final norm, as timm's token models do
    if spec.stem == "patchify" and spec.norm_eps == TIMM_NORM_EPS:
        return _TIMM_NAMES.get(spec.width, "vit_base_patch16_224"), dict(args, patch_size=spec.patch_size)
    base = spec.name.partition("[")[0]
    if base not in MODELS or MODELS[base].stem != spec.stem:
        base = "vit_c_1gf" if spec.stem == "conv" else "vit_p_1gf"
    stem = (dict(stem_channels=list(spec.stem_channels), stem_strides=list(spec.stem_strides))
            if spec.stem == "conv" else dict(patch_size=spec.patch_size))
    return base, dict(args, **stem, norm_eps=spec.norm_eps)


def pretrained_cfg(spec: ViTSpec, crop_pct: float = 0.875, label_names: list[str] | None = None) -> dict:
    """timm's `pretrained_cfg`: the preprocessing vitc evaluates with (resize to size / crop_pct,
    centre crop, ImageNet mean/std), the classes and where the stem and head are."""
    cfg = dict(input_size=[3, spec.image_size, spec.image_size], fixed_input_size=True,
               interpolation="bilinear", crop_pct=crop_pct, crop_mode="center", mean=list(MEAN),
               std=list(STD), num_classes=spec.num_classes, classifier="head",
               first_conv="patch_embed.backbone.0" if spec.stem == "conv" else "patch_embed.proj")
    if label_names:
        cfg["label_names"] = list(label_names)
    return cfg


def write_timm_dir(state: dict[str, torch.Tensor], spec: ViTSpec, out: str | os.PathLike,
                   crop_pct: float = 0.875, label_names: list[str] | None = None,
                   metadata: dict[str, str] | None = None) -> Path:
    """`out`/model.safetensors and `out`/config.json (written last, each atomically); returns `out`."""
    architecture, model_args = timm_model_args(spec)
    config = {"architecture": architecture, "num_classes": spec.num_classes,
              "num_features": spec.width, "global_pool": model_args["global_pool"],
              "model_args": model_args, "pretrained_cfg": pretrained_cfg(spec, crop_pct, label_names)}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitcError(f"--out {out}: --format timm writes a directory, but this is a file")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(out / WEIGHTS_FILE) as tmp:  # straight to disk: a 1B-parameter model is 4 GB
            save_file({k: v.contiguous() for k, v in to_timm_keys(state).items()}, str(tmp), metadata=metadata)
        atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    except (OSError, SafetensorError) as e:
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves nothing behind
        if not out_of_space(e):
            raise VitcError(f"writing the timm checkpoint {out} failed: {e}") from None
        raise VitcError(space_line("the timm checkpoint", out,
                                   sum(v.numel() * v.element_size() for v in state.values()))) from None
    log.info("wrote timm checkpoint %s (architecture %s)", out, architecture)
    return out


def write_run_as_timm(run_dir: str | os.PathLike, state: dict[str, torch.Tensor], out: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> Path:
    """`vitc export --format timm`: `state` (the run's weights) with the model, eval crop and class
    names of the run's saved config.yaml."""
    from vitc.config import load_config, model_spec
    from vitc.data.shards.manifest import resolve_shards

    run_config = Path(run_dir) / "config.yaml"
    if not run_config.is_file():
        raise VitcError(f"{run_config} not found: --format timm reads the run's model from it")
    cfg = load_config(run_config)
    spec = model_spec(cfg.model, state["head.weight"].shape[0])
    try:
        classes = resolve_shards(cfg.data.train_shards, cfg.data.train_manifest, "train_shards")[1].classes
        label_names = sorted(classes, key=classes.get) if len(classes) == spec.num_classes else None
    except VitcError as e:  # the shards may live elsewhere by now; the weights are still worth having
        log.warning("no class names in the timm config: %s", e)
        label_names = None
    return write_timm_dir(state, spec, out, cfg.data.eval_crop_ratio, label_names, metadata)


def is_timm_checkpoint(path: str | os.PathLike) -> bool:
    """A directory holding config.json + model.safetensors, or a .safetensors file with timm's keys."""
    path = Path(path)
    if path.is_dir():
        return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return any(k.startswith("patch_embed.") for k in f.keys())
    except (SafetensorError, OSError):  # unreadable: the vitc loader names the file and the problem
        return False


def load_timm_checkpoint(path: str | os.PathLike, spec: ViTSpec) -> dict[str, torch.Tensor]:
    """fp32 weights of a timm checkpoint (directory, or .safetensors with config.json beside it or
    none) with vitc's keys, after checking that its architecture is `spec`'s."""
    from vitc.weights.export import load_weights

    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    config_file = weights.parent / CONFIG_FILE
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise VitcError(f"{config_file} is not valid JSON ({e})") from None
    state = from_timm_keys(load_weights(weights))
    check_architecture(checkpoint_architecture(state, config), spec, str(path))
    pre = config.get("pretrained_cfg", {})
    stats = [*pre.get("mean", MEAN), *pre.get("std", STD)]
    if len(stats) != 6 or any(abs(a - b) > 1e-6 for a, b in zip(stats, MEAN + STD)):
        # vitc normalises with ImageNet statistics; fine-tuning adapts, but the first steps see a shift
        log.warning("%s was trained with mean %s, std %s; vitc normalises with %s, %s",
                    path, pre.get("mean"), pre.get("std"), MEAN, STD)
    return state


def checkpoint_architecture(state: dict[str, torch.Tensor], config: dict) -> dict[str, object]:
    """What a timm checkpoint (vitc keys) says about its ViT: read from the tensors' shapes, and from
    config.json's model_args for what shapes cannot tell (heads, eps, conv strides). None = unknown."""
    args = config.get("model_args", {})
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    conv = any(k.startswith("stem.convs.") for k in state)
    found = {"stem": "conv" if conv else "patchify",
             "width": state["norm.weight"].shape[0] if "norm.weight" in state else None,
             "depth": max(blocks) + 1 if blocks else None,
             "heads": args.get("num_heads") or _timm_default_heads(config.get("architecture")),
             "mlp_hidden": state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else None,
             # a timm ViT's layer norms use 1e-6 unless its config says otherwise
             "norm_eps": args.get("norm_eps", TIMM_NORM_EPS)}
    if conv:
        convs = {int(k.split(".")[2]): v.shape[0] for k, v in state.items()
                 if k.startswith("stem.convs.") and k.endswith(".weight") and v.ndim == 4}
        found["stem_channels"] = tuple(convs[i] for i in sorted(convs))
        found["stem_strides"] = tuple(args["stem_strides"]) if "stem_strides" in args else None
    elif "stem.proj.weight" in state:
        found["patch_size"] = state["stem.proj.weight"].shape[-1]
    return found


def check_architecture(found: dict[str, object], spec: ViTSpec, source: str) -> None:
    """Raise one VitcError line listing every way the checkpoint's ViT differs from `spec`."""
    unknown = [key for key, value in found.items() if value is None]
    if unknown:
        log.warning("%s: cannot check %s (no config.json stating them)", source, ", ".join(unknown))
    wrong = [f"{key} {value} vs model {getattr(spec, key)}" for key, value in found.items()
             if value is not None and value != getattr(spec, key)]
    if wrong:
        raise VitcError(f"finetune.init_from {source}: the timm checkpoint's architecture differs from "
                        f"model '{spec.name}': {'; '.join(wrong)} (set model.* to match it)")


def _timm_default_heads(architecture: str | None) -> int | None:
    """Heads of a timm architecture whose config.json omits them (a hub model's registered default),
    when timm is installed: built on the meta device, so nothing is allocated."""
    try:
        import timm
    except ImportError:
        return None
    if not architecture or not timm.is_model(architecture):
        return None
    with torch.device("meta"):
        model = timm.create_model(architecture)
    return getattr(getattr(model.blocks[0], "attn", None), "num_heads", None)

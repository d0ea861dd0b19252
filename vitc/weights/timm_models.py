"""vitc's models in timm's model registry: `import vitc.weights.timm_models`, then `timm.create_model("vit_c_4gf")`.

Every model of `vitc.models.spec` is registered under its vitc name. A conv-stem model is timm's
`VisionTransformer` with a `HybridEmbed` patch embedding: vitc's 3×3 convs (BN + ReLU) as its
backbone and, as its `patch_size=1` projection, the stem's final 1×1 conv (the paper's §3 stem).
The registered constructors also take `norm_eps`, which timm's plain ViT arguments cannot express;
this is what `vitc export --format timm` writes for conv-stem models (vitc/weights/timm_format.py).

timm (1.0.x) discovers no plugin entry points: its registry holds what has been imported, so this
module must be imported before `timm.create_model` names a vitc model or loads a vitc export.
"""

import math
from functools import partial

import timm  # noqa: F401  (this module's purpose is timm's registry)
from timm.layers import HybridEmbed
from timm.models import (
    VisionTransformer,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from vitc.models.spec import MODELS, ViTSpec
from vitc.models.stems import ConvStem
from vitc.models.structure import stem_layers
from vitc.weights.timm_format import MEAN, STD, timm_model_args


def create_vitc_model(variant: str, pretrained: bool = False, stem_channels: list[int] | None = None,
                      stem_strides: list[int] | None = None, norm_eps: float = 1e-6, **kwargs) -> VisionTransformer:
    """timm's VisionTransformer with vitc's stem and layer-norm eps; `kwargs` are its own arguments."""
    if stem_channels:
        # the 3×3 part of vitc's ConvStem; its 1×1 becomes HybridEmbed's projection
        stem = ViTSpec(width=1, depth=1, heads=1, mlp_ratio=1.0, stem="conv", patch_size=math.prod(stem_strides),
                       stem_channels=tuple(stem_channels), stem_strides=tuple(stem_strides))
        backbone = ConvStem(stem_layers(stem)).convs
        kwargs = dict(kwargs, embed_layer=partial(HybridEmbed, backbone=backbone), patch_size=1)
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                norm_layer=partial(nn.LayerNorm, eps=norm_eps), **kwargs)


def _default_cfg(name: str) -> dict:
    first_conv = "patch_embed.backbone.0" if MODELS[name].stem == "conv" else "patch_embed.proj"
    return dict(num_classes=1000, input_size=(3, 224, 224), fixed_input_size=True, interpolation="bilinear",
                crop_pct=0.875, mean=MEAN, std=STD, first_conv=first_conv, classifier="head",
                paper_ids="arXiv:2106.14881")


default_cfgs = generate_default_cfgs({name: _default_cfg(name) for name in MODELS})


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> VisionTransformer:
        return create_vitc_model(name, pretrained, **{**timm_model_args(MODELS[name])[1], **kwargs})

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"vitc's {name} (Xiao et al., 2021, Table 1 and its scale-up family)."
    register_model(entrypoint)


for _name in MODELS:
    _register(_name)

"""Named models: the paper's Table 1 and the scale-up family beyond it.

Scale-up conv-stem depths were chosen by the audit (`vitc.audit.parity.choose_conv_depth`, the
depth whose flops are closest to the patchify twin's); a test re-runs that choice, so a change to
the model or the count that moves parity cannot pass unseen. At ViT-H width and above the stem is
under 2 % of the flops, and the closest depth keeps every block.
"""

import math

from vitc.errors import VitcError, did_you_mean
from vitc.models.vit import ViTSpec, with_overrides

# Conv stems of Table 1: (channels of the 3×3 convs, their strides); a 1×1 conv to width follows.
STEM_1GF = ((24, 48, 96, 192), (2, 2, 2, 2))
STEM_4GF = ((48, 96, 192, 384), (2, 2, 2, 2))
STEM_18GF = ((64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2))


def _pair(width: int, heads: int, mlp_ratio: float, depth_p: int, depth_c: int, stem) -> tuple[ViTSpec, ViTSpec]:
    patchify = ViTSpec(width=width, depth=depth_p, heads=heads, mlp_ratio=mlp_ratio)
    conv = ViTSpec(width=width, depth=depth_c, heads=heads, mlp_ratio=mlp_ratio, stem="conv",
                   patch_size=math.prod(stem[1]), stem_channels=stem[0], stem_strides=stem[1])
    return patchify, conv


# name stem: (width, heads, mlp ratio, patchify depth, conv depth, conv stem)
_FAMILY = {
    "1gf": (192, 3, 3.0, 12, 11, STEM_1GF),  # ViT-Ti
    "4gf": (384, 6, 3.0, 12, 11, STEM_4GF),  # ViT-S
    "18gf": (768, 12, 4.0, 12, 11, STEM_18GF),  # ViT-B
    "36gf": (1024, 16, 4.0, 14, 13, STEM_18GF),  # 3/5-depth ViT-L
    "62gf": (1024, 16, 4.0, 24, 23, STEM_18GF),  # ViT-L/16
    "127gf": (1280, 16, 4.0, 32, 32, STEM_18GF),  # ViT-H width, /16
    "203gf": (1408, 16, 48 / 11, 40, 40, STEM_18GF),  # ViT-g width (MLP 6144), /16
    "369gf": (1664, 16, 64 / 13, 48, 48, STEM_18GF),  # ViT-G width (MLP 8192), /16
}
PAPER_MODELS = tuple(f"vit_{s}_{k}" for k in ("1gf", "4gf", "18gf", "36gf") for s in ("p", "c"))

MODELS: dict[str, ViTSpec] = {}
for _key, (_w, _h, _r, _dp, _dc, _stem) in _FAMILY.items():
    _p, _c = _pair(_w, _h, _r, _dp, _dc, _stem)
    MODELS[f"vit_p_{_key}"] = with_overrides(_p, name=f"vit_p_{_key}")
    MODELS[f"vit_c_{_key}"] = with_overrides(_c, name=f"vit_c_{_key}")


def get_spec(name: str, **overrides) -> ViTSpec:
    """The registered spec `name`, with `overrides` (ViTSpec fields) applied and validated."""
    if name not in MODELS:
        raise VitcError(f"unknown model '{name}'{did_you_mean(name, MODELS)}; "
                        f"known models: {', '.join(MODELS)}")
    return with_overrides(MODELS[name], **overrides).validate()


def twin_name(name: str) -> str | None:
    """vit_c_1gf <-> vit_p_1gf; None when `name` has no registered twin."""
    for a, b in (("vit_c_", "vit_p_"), ("vit_p_", "vit_c_")):
        if name.startswith(a) and (twin := b + name[len(a):]) in MODELS:
            return twin
    return None

"""What determines a ViT's graph (`ViTSpec`) and the named models: torch-free.

The registry holds the paper's Table 1, its ImageNet-21k 72GF pair as Appendix C defines it (the
authors' released file's ViT_C-72GF, another stem and 21 blocks, is `vit_c_72gf_released`: pycls
branch `vitconfigs`, commit 206d0db, `configs/vitconv_baselines/vit/IN21k_ViT-C-72GF_adamw_128gpus.yaml`)
and the scale-up family beyond them. Scale-up conv-stem depths were chosen by the audit
(`vitc.audit.parity.choose_conv_depth`, the depth whose flops are closest to the patchify twin's);
a test re-runs that choice, so a change to the model or the count that moves parity cannot pass
unseen. At ViT-H width and above the stem is under 2 % of the flops, and the closest depth keeps
every block.

Planning, sweeps and Slurm submission read specs and costs on a login node: nothing here imports
torch (a test checks it).
"""

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from vitc.errors import VitcError, did_you_mean


@dataclass(frozen=True)
class ViTSpec:
    """Everything that determines a ViT's graph. `stem_channels` excludes the final 1×1 to width."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float
    stem: Literal["patchify", "conv"] = "patchify"
    patch_size: int = 16
    stem_channels: tuple[int, ...] = ()
    stem_strides: tuple[int, ...] = ()
    # The conv stem as data (Table 3, Fig. 7): kernel and padding of each conv before the final 1×1
    # (() = 3×3 with padding 1, the C-stem; an unset padding is (k - 1) // 2: "same" for odd kernels,
    # none for a patchify layer), and the norm after each of them, followed by ReLU.
    stem_kernels: tuple[int, ...] = ()
    stem_paddings: tuple[int, ...] = ()
    stem_norm: Literal["batch", "layer"] = "batch"
    classifier: Literal["token", "pool"] = "token"
    num_classes: int = 1000
    image_size: int = 224
    # the authors' released configs set LN.EPS: 1e-6 (pycls vitconfigs 206d0db, configs/vitconv_baselines/vit/)
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    act_checkpoint: bool = False
    name: str = field(default="", compare=False)

    @property
    def mlp_hidden(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + (self.classifier == "token")

    def validate(self) -> "ViTSpec":
        """Raise a VitcError naming the first broken invariant; return self when sound."""
        who = f"model '{self.name}'" if self.name else "model"
        positive = dict(width=self.width, depth=self.depth, heads=self.heads,
                        patch_size=self.patch_size, num_classes=self.num_classes,
                        image_size=self.image_size)
        for key, value in positive.items():
            if value < 1:
                raise VitcError(f"{who}: model.{key} must be >= 1, got {value}")
        for key, value in (("mlp_ratio", self.mlp_ratio), ("norm_eps", self.norm_eps)):
            if value <= 0:
                raise VitcError(f"{who}: model.{key} must be > 0, got {value}")
        if self.width % self.heads:
            raise VitcError(f"{who}: model.width {self.width} is not divisible by model.heads {self.heads}")
        if not 0.0 <= self.drop_path < 1.0:
            raise VitcError(f"{who}: model.drop_path must be in [0, 1), got {self.drop_path}")
        if self.stem == "patchify" and (self.stem_channels or self.stem_strides or self.stem_kernels
                                        or self.stem_paddings):
            raise VitcError(f"{who}: model.stem_channels/stem_strides/stem_kernels/stem_paddings apply "
                            "to the conv stem only; set model.stem=conv or drop them")
        if self.stem == "conv":
            self._validate_conv_stem(who)
        if self.image_size % self.patch_size:
            raise VitcError(f"{who}: model.image_size {self.image_size} is not divisible by the stem's "
                            f"total stride {self.patch_size}")
        return self

    def _validate_conv_stem(self, who: str) -> None:
        if not self.stem_channels or len(self.stem_channels) != len(self.stem_strides):
            raise VitcError(
                f"{who}: model.stem_channels {list(self.stem_channels)} and model.stem_strides "
                f"{list(self.stem_strides)} must be non-empty lists of equal length")
        for key in ("stem_kernels", "stem_paddings"):
            value = getattr(self, key)
            if value and len(value) != len(self.stem_channels):
                raise VitcError(f"{who}: model.{key} {list(value)} must have one entry per stem conv "
                                f"({len(self.stem_channels)}, as model.stem_channels), or be unset")
        if not self.stem_kernels and any(s not in (1, 2) for s in self.stem_strides):
            raise VitcError(f"{who}: model.stem_strides {list(self.stem_strides)}: each 3×3 conv "
                            "has stride 1 or 2 (set model.stem_kernels for a patchify layer)")
        if any(c < 1 for c in self.stem_channels) or any(s < 1 for s in self.stem_strides) or any(
                k < 1 for k in self.stem_kernels) or any(p < 0 for p in self.stem_paddings):
            raise VitcError(f"{who}: model.stem_channels/strides/kernels must be >= 1 and "
                            "model.stem_paddings >= 0")
        total = math.prod(self.stem_strides)
        if total != self.patch_size:
            raise VitcError(f"{who}: product of model.stem_strides {list(self.stem_strides)} is "
                            f"{total}, but model.patch_size is {self.patch_size}; they must be equal")
        size = self.image_size
        for k, s, p in zip(self.conv_kernels, self.stem_strides, self.conv_paddings):
            size = (size + 2 * p - k) // s + 1
        if self.image_size % self.patch_size == 0 and size != self.grid:
            raise VitcError(f"{who}: the stem's kernels {list(self.conv_kernels)}, strides "
                            f"{list(self.stem_strides)} and paddings {list(self.conv_paddings)} give a "
                            f"{size}×{size} grid on {self.image_size} px, not {self.grid}×{self.grid}")

    @property
    def conv_kernels(self) -> tuple[int, ...]:
        """The kernel of each stem conv before the final 1×1 (3 unless `stem_kernels` says)."""
        return self.stem_kernels or (3,) * len(self.stem_channels)

    @property
    def conv_paddings(self) -> tuple[int, ...]:
        return self.stem_paddings or tuple((k - 1) // 2 for k in self.conv_kernels)


def with_overrides(spec: ViTSpec, **changes) -> ViTSpec:
    """A copy of `spec` with `changes`; switching to the patchify stem drops the conv-stem lists."""
    if changes.get("stem") == "patchify" and spec.stem == "conv":
        for key in ("stem_channels", "stem_strides", "stem_kernels", "stem_paddings"):
            changes.setdefault(key, ())
    if "stem_strides" in changes and "patch_size" not in changes and changes["stem_strides"]:
        changes["patch_size"] = math.prod(changes["stem_strides"])
    return replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


# Conv stems: (channels of the 3×3 convs, their strides); a 1×1 conv to width follows.
STEM_1GF = ((24, 48, 96, 192), (2, 2, 2, 2))  # Table 1
STEM_4GF = ((48, 96, 192, 384), (2, 2, 2, 2))  # Table 1
STEM_18GF = ((64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2))  # Table 1
# pycls vitconfigs 206d0db, IN21k_ViT-C-72GF_adamw_128gpus.yaml: C_STEM_DIMS / C_STEM_STRIDES (the
# released file's stem; Appendix C's ViT_C-72GF uses STEM_18GF)
STEM_72GF_RELEASED = ((64, 128, 128, 256, 256, 256, 512, 512), (2, 2, 1, 2, 1, 1, 2, 1))


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
    # Appendix C: ViT_P-72GF 22 blocks, width 1152, 18 heads, MLP ×4; ViT_C-72GF "the same C-stem
    # design used for ViTC-18GF and ViTC-36GF, but without removing one transformer block"
    "72gf": (1152, 18, 4.0, 22, 22, STEM_18GF),
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
# The released IN21k_ViT-C-72GF file's model: eight 3×3 convs and 21 blocks (70.5 GF by pycls's count).
MODELS["vit_c_72gf_released"] = with_overrides(
    MODELS["vit_c_72gf"], depth=21, stem_channels=STEM_72GF_RELEASED[0], stem_strides=STEM_72GF_RELEASED[1],
    name="vit_c_72gf_released")
# The stem designs the paper compares at 4GF (Appendix A: Table 3, Fig. 7), on ViT-S width
# 384, heads 6, MLP ×3. S1-S4 each hold one patchify layer (kernel = stride > 2) among 3×3 convs, a
# 1×1 to the width last; BN + ReLU after every conv but the last, as in the C-stem. name: (depth,
# kernels, strides, paddings, channels of the convs before the 1×1, norm)
_STEM_VARIANTS = {
    "vit_s1_4gf": (11, (3, 3, 3, 2), (2, 2, 2, 2), (1, 1, 1, 0), (42, 104, 208, 416), "batch"),
    "vit_s2_4gf": (11, (3, 3, 3, 4), (2, 2, 1, 4), (1, 1, 1, 0), (32, 64, 128, 256), "batch"),
    "vit_s3_4gf": (11, (3, 3, 3, 8), (2, 1, 1, 8), (1, 1, 1, 0), (17, 34, 68, 136), "batch"),
    "vit_s4_4gf": (11, (3, 3, 3, 16), (1, 1, 1, 16), (1, 1, 1, 0), (8, 16, 32, 64), "batch"),
    # ViT_P(bn)-4GF: the patchify conv followed by BN + ReLU, then (vitc's reading, the paper lists
    # no layers) the 1×1 to the width every stem of Table 3 ends with; all 12 blocks, as ViT_P
    "vit_p_bn_4gf": (12, (16,), (16,), (0,), (384,), "batch"),
    # ViT_C(ln)-4GF: ViT_C-4GF's stem with LayerNorm (over channels, at each position) for BatchNorm
    "vit_c_ln_4gf": (11, (3, 3, 3, 3), (2, 2, 2, 2), (1, 1, 1, 1), STEM_4GF[0], "layer"),
}
for _name, (_d, _k, _s, _p, _ch, _norm) in _STEM_VARIANTS.items():
    MODELS[_name] = with_overrides(MODELS["vit_c_4gf"], depth=_d, stem_kernels=_k, stem_strides=_s,
                                   stem_paddings=_p, stem_channels=_ch, stem_norm=_norm, name=_name)
# Appendix B: ViT_P-16GF is ViT_P-4GF 48 blocks deep, ViT_C-16GF 47 blocks with ViT_C-4GF's stem
MODELS["vit_p_16gf"] = with_overrides(MODELS["vit_p_4gf"], depth=48, name="vit_p_16gf")
MODELS["vit_c_16gf"] = with_overrides(MODELS["vit_c_4gf"], depth=47, name="vit_c_16gf")
STEM_VARIANTS = tuple(_STEM_VARIANTS)
# Variants whose patchify twin is not `vit_p_` + the rest of their name.
TWINS = {"vit_c_72gf_released": "vit_p_72gf", **{name: "vit_p_4gf" for name in _STEM_VARIANTS}}


def get_spec(name: str, **overrides) -> ViTSpec:
    """The registered spec `name`, with `overrides` (ViTSpec fields) applied and validated."""
    if name not in MODELS:
        raise VitcError(f"unknown model '{name}'{did_you_mean(name, MODELS)}; "
                        f"known models: {', '.join(MODELS)}")
    return with_overrides(MODELS[name], **overrides).validate()


def twin_name(name: str) -> str | None:
    """vit_c_1gf <-> vit_p_1gf (and the variants in TWINS); None when `name` has no registered twin."""
    if name in TWINS:
        return TWINS[name]
    for a, b in (("vit_c_", "vit_p_"), ("vit_p_", "vit_c_")):
        if name.startswith(a) and (twin := b + name[len(a):]) in MODELS:
            return twin
    return None

"""The authors' augmentation recipe with torchvision.transforms.v2, split where it is cheapest.

The recipe is pycls's (branch vitconfigs, commit 206d0db): `pycls/datasets/imagenet.py`
`_prepare_im` for crop, flip, PCA lighting and resize-then-centre-crop, and the released configs
(`configs/vitconv_baselines/vit/`: TRAIN.AUGMENT AutoAugment, MIXUP_ALPHA 0.8, CUTMIX_ALPHA 1.0,
LABEL_SMOOTHING 0.1) for the rest.

AutoAugment is torchvision's, not the authors' implementation: vitc sets pycls's fill (grey 128)
and interpolation (bilinear) for its geometric ops, but the policy and magnitudes are
torchvision's ImageNet policy (the AutoAugment paper's), while pycls (`pycls/datasets/augment.py`)
uses TensorFlow's EfficientNet "policy_v0" (other sub-policies, e.g. SolarizeAdd and TranslateY),
magnitudes on its own [0, 1] scale, and posterize keeping at least 1 bit. docs/paper_runs.md lists
these differences. RandAugment (vitc's option) is torchvision's too.

Per sample, in the loader's workers, on uint8: RandomResizedCrop (box sampled by torchvision's
algorithm in plain Python, in full-resolution coordinates from the JPEG header, then decoded at
reduced size: vitc.data.loading.decode),
horizontal flip, AutoAugment or RandAugment. Per batch: normalize, PCA lighting, RandomErasing,
MixUp/CutMix, label smoothing — float work done once on a stacked batch instead of per image. Every draw comes from a seed given
with the sample or the batch (vitc.data.loading.draws), never from the process's running generator.

AutoAugment and RandAugment run on PIL images, faster there than on tensors, whose path does its
affine ops in float; the crop/resize runs on tensors, faster than PIL's (docs/loader.md, "Where the
CPU goes").
"""

import math
import random
from dataclasses import dataclass

import torch
import torchvision.transforms.v2 as v2
from PIL import Image

from vitc.data.loading.decode import Box, decode_crop, image_size, plan_decode
from vitc.data.loading.draws import drawing_from, part_seed
from vitc.errors import VitcError

# ImageNet channel statistics (torchvision/timm convention), in 0..255 units
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range (torchvision default, pycls the same)
AUTOAUGMENT_FILL = 128  # grey, as pycls fills its rotated/sheared/translated images
# AlexNet-style lighting: ImageNet's RGB eigenvalues and eigenvectors (columns), pycls vitconfigs
# 206d0db pycls/datasets/imagenet.py _EIG_VALS / _EIG_VECS (from fb.resnet.torch), on 0..1 pixels
EIG_VALS = (0.2175, 0.0188, 0.0045)
EIG_VECS = ((-0.5675, 0.7192, 0.4009),
            (-0.5808, -0.0045, -0.8140),
            (-0.5836, -0.6948, 0.4203))


@dataclass(frozen=True)
class Recipe:
    """Everything the transforms need, resolved from `cfg.data` + `cfg.model.image_size`."""

    image_size: int
    num_classes: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    auto_augment: str = "autoaugment"
    randaugment_magnitude: int = 9
    randaugment_num_ops: int = 2
    random_erasing: float = 0.0
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    label_smoothing: float = 0.1
    pca_std: float = 0.1
    eval_crop_ratio: float = 0.875
    fast_jpeg_decode: bool = True

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "Recipe":
        d = cfg.data
        if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
            raise VitcError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {d.crop_scale}")
        for key in ("hflip", "random_erasing", "label_smoothing", "max_bad_fraction"):
            if not 0 <= getattr(d, key) <= 1:
                raise VitcError(f"data.{key} must be in [0, 1], got {getattr(d, key)}")
        if not 0 < d.eval_crop_ratio <= 1:
            raise VitcError(f"data.eval_crop_ratio must be in (0, 1], got {d.eval_crop_ratio}")
        if not 0 <= d.randaugment_magnitude <= 30 or d.randaugment_num_ops < 1:  # torchvision's 31 bins
            raise VitcError(f"data.randaugment_magnitude must be in 0..30 and data.randaugment_num_ops >= 1, "
                            f"got {d.randaugment_magnitude} and {d.randaugment_num_ops}")
        if d.mixup_alpha < 0 or d.cutmix_alpha < 0:
            raise VitcError(f"data.mixup_alpha and data.cutmix_alpha must be >= 0, "
                            f"got {d.mixup_alpha} and {d.cutmix_alpha}")
        return cls(cfg.model.image_size, num_classes, tuple(d.crop_scale), d.hflip, d.auto_augment,
                   d.randaugment_magnitude, d.randaugment_num_ops, d.random_erasing, d.mixup_alpha,
                   d.cutmix_alpha, d.label_smoothing, d.pca_std, d.eval_crop_ratio, d.fast_jpeg_decode)

    @property
    def soft_targets(self) -> bool:
        """Targets are float [B, num_classes] when mixing or smoothing is on, else int64 [B]."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.label_smoothing > 0


def sample_crop_box(height: int, width: int, scale: tuple[float, float], rng: random.Random) -> Box:
    """RandomResizedCrop's box for an image of this size: torchvision's `RandomResizedCrop.get_params`
    (torchvision 0.29 transforms.py) step for step, drawn from `rng` instead of torch's generator.

    Up to ten tries of an area uniform in `scale` of the image's and a log-uniform aspect ratio in
    RATIO, the first that fits placed uniformly; else the whole image centre-cropped to the nearest
    ratio in RATIO (tests/test_transforms.py checks it against get_params). By hand because
    torchvision's makes four torch calls per try and needs torch's generator seeded around them:
    planning a crop cost 0.24-0.31 ms per image among the loader's stages with it, 0.06-0.10 ms
    with this (docs/loader.md, "Where the CPU goes now").
    """
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            return Box(rng.randint(0, height - h), rng.randint(0, width - w), h, w)
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, round(width / min(RATIO))
    elif in_ratio > max(RATIO):
        w, h = round(height * max(RATIO)), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def center_crop_box(height: int, width: int, ratio: float) -> Box:
    """Resize(size / ratio) + CenterCrop(size) as one full-resolution square box."""
    side = max(1, round(min(height, width) * ratio))
    return Box((height - side) // 2, (width - side) // 2, side, side)


class TrainSampleTransform:
    """JPEG bytes -> uint8 [3, S, S]: random crop (reduced decode), flip, AutoAugment/RandAugment."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.size = (recipe.image_size, recipe.image_size)
        self.augment = _auto_augment(recipe)

    def plan(self, data: bytes, seed: int) -> Box:
        """The crop box in full-resolution pixels, snapped to the reduced-decode grid."""
        height, width = image_size(data)
        box = sample_crop_box(height, width, self.recipe.crop_scale, random.Random(part_seed(seed, "crop")))
        return plan_decode(height, width, box, self.size).box

    def finish(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """Flip and auto-augment a cropped uint8 [3, S, S] image (on the CPU or the GPU)."""
        with drawing_from(part_seed(seed, "finish")):
            if torch.rand(()) < self.recipe.hflip:
                image = image.flip(-1)
            if self.augment is not None and image.is_cuda:
                image = self.augment(image)
            elif self.augment is not None:
                image = _from_pil(self.augment(_to_pil(image)))
        return image

    def __call__(self, data: bytes, seed: int) -> torch.Tensor:
        box = self.plan(data, seed)
        return self.finish(decode_crop(data, box, self.size, fast=self.recipe.fast_jpeg_decode), seed)


class EvalSampleTransform:
    """JPEG bytes -> uint8 [3, S, S]: resize to S / eval_crop_ratio + center crop, as one box."""

    def __init__(self, recipe: Recipe):
        self.size = (recipe.image_size, recipe.image_size)
        self.ratio, self.fast = recipe.eval_crop_ratio, recipe.fast_jpeg_decode

    def plan(self, data: bytes, seed: int = 0) -> Box:
        height, width = image_size(data)
        return plan_decode(height, width, center_crop_box(height, width, self.ratio), self.size).box

    def finish(self, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return image

    def __call__(self, data: bytes, seed: int = 0) -> torch.Tensor:
        return decode_crop(data, self.plan(data), self.size, fast=self.fast)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [3, H, W] -> PIL RGB: straight from HWC memory (what `decode_crop` returns), else by
    merging the three planes; both far cheaper than F.to_pil_image's interleaving copy (docs/loader.md)."""
    hwc = image.permute(1, 2, 0)
    if hwc.is_contiguous():
        return Image.frombuffer("RGB", (image.shape[2], image.shape[1]), hwc.numpy(), "raw", "RGB", 0, 1)
    planes = [Image.frombuffer("L", (image.shape[2], image.shape[1]), p.numpy(), "raw", "L", 0, 1)
              for p in image.contiguous()]
    return Image.merge("RGB", planes)


def _from_pil(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> contiguous uint8 [3, H, W], each plane packed by PIL straight from its pixels,
    cheaper than `Image.split` + stack or torch's transposing copy (docs/loader.md)."""
    planes = bytearray()
    for band in "RGB":
        planes += image.tobytes("raw", band)
    return torch.frombuffer(planes, dtype=torch.uint8).view(3, image.height, image.width)


def _auto_augment(recipe: Recipe) -> v2.Transform | None:
    if recipe.auto_augment == "autoaugment":
        # pycls augment.py WARP_PARAMS: fillcolor (128, 128, 128), resample BILINEAR
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=v2.InterpolationMode.BILINEAR,
                              fill=AUTOAUGMENT_FILL)
    if recipe.auto_augment == "randaugment":
        return v2.RandAugment(num_ops=recipe.randaugment_num_ops, magnitude=recipe.randaugment_magnitude)
    return None


_STATISTICS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """1 / std and -mean / std as [1, 3, 1, 1] on `device`, made once: `torch.tensor(..., device=cuda)`
    copies from the host, which on a GPU would be two synchronous copies per batch."""
    if device not in _STATISTICS:
        mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
        _STATISTICS[device] = (std.reciprocal().view(1, 3, 1, 1), (-mean / std).view(1, 3, 1, 1))
    return _STATISTICS[device]


def normalize(images: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x - mean) / std, as x / std - mean / std: one conversion and two
    same-dtype passes (a mixed uint8-float op is 2x slower). `shifts` [B, 3] (0..255 units), added to
    each image before normalization, rides in the second pass (PCA lighting, `lighting_shifts`)."""
    scale, offset = _statistics(images.device)
    if shifts is not None:
        offset = offset + (shifts * scale.view(1, 3)).view(-1, 3, 1, 1)
    return images.float().mul_(scale).add_(offset)


# torchvision's MixUp and CutMix build their output from two batch-sized copies; our batch is our own
# fresh float copy, so these keep torchvision's sampling, pairing (image i with i-1) and label mixing
# and blend the images in place, last image first so each still reads its original neighbour. On
# the GPU torchvision's own few large kernels run (docs/loader.md, "Where the CPU goes").


class InPlaceMixUp(v2.MixUp):
    def transform(self, inpt, params: dict):
        if inpt is params["labels"] or not isinstance(inpt, torch.Tensor) or inpt.is_cuda:
            return super().transform(inpt, params)
        lam = params["lam"]
        last = inpt[-1].clone()
        for i in range(len(inpt) - 1, 0, -1):
            inpt[i].mul_(lam).add_(inpt[i - 1], alpha=1 - lam)
        inpt[0].mul_(lam).add_(last, alpha=1 - lam)
        return inpt


class InPlaceCutMix(v2.CutMix):
    def transform(self, inpt, params: dict):
        if inpt is params["labels"] or not isinstance(inpt, torch.Tensor) or inpt.is_cuda:
            return super().transform(inpt, params)
        x1, y1, x2, y2 = params["box"]
        boxes = inpt[..., y1:y2, x1:x2]
        last = boxes[-1].clone()
        for i in range(len(inpt) - 1, 0, -1):
            boxes[i].copy_(boxes[i - 1])
        boxes[0].copy_(last)
        return inpt


def lighting_shift(seed: int, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The RGB offset (0..1 pixel units) AlexNet-style PCA lighting adds to every pixel of one image:
    eigvecs @ (alpha * eigvals), alpha ~ N(0, std) three times, drawn from the sample's own seed
    (pycls `transforms.lighting`, which draws from numpy's process-wide generator instead).

    `generator`: a CPU generator of the caller's to seed, the same draws as torch's global one seeded
    alike (`drawing_from`) without saving and restoring the global state (most of this function's
    41 us per image with it; docs/loader.md)."""
    if generator is None:
        with drawing_from(part_seed(seed, "lighting")):
            alpha = torch.randn(3, dtype=torch.float64) * std
    else:
        generator.manual_seed(part_seed(seed, "lighting"))
        alpha = torch.randn(3, dtype=torch.float64, generator=generator) * std
    return _EIG_VECS @ (alpha * _EIG_VALS)


_EIG_VECS, _EIG_VALS = torch.tensor(EIG_VECS, dtype=torch.float64), torch.tensor(EIG_VALS, dtype=torch.float64)


def lighting_shifts(sample_seeds: list[int], std: float, generator: torch.Generator) -> torch.Tensor:
    """PCA lighting's per-image RGB offsets in 0..255 units, float32 [B, 3], for `normalize`. pycls adds
    the offset to the 0..1 image after augmentation and before normalisation, unclipped; (p + s - mean)
    / std is the same image as normalize(p) + s / std, which `normalize` computes in one pass."""
    return (torch.stack([lighting_shift(seed, std, generator) for seed in sample_seeds]) * 255).float()


class TrainBatchTransform:
    """uint8 batch + int64 labels -> normalized float batch + targets (PCA lighting, RandomErasing,
    MixUp/CutMix, smoothing).

    Lighting and RandomErasing draw from each sample's seed, MixUp/CutMix from the batch's
    (vitc.data.loading.draws).
    """

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.lighting = torch.Generator()  # PCA lighting's draws (lighting_shift), this object's own
        # value=0 erases to the mean colour (inputs are normalized), as torchvision's reference does
        # in place: the float batch is ours, so no per-image clone and copy back
        self.erase = v2.RandomErasing(p=recipe.random_erasing, inplace=True) if recipe.random_erasing > 0 else None
        mixes = []
        if recipe.mixup_alpha > 0:
            mixes.append(InPlaceMixUp(alpha=recipe.mixup_alpha, num_classes=recipe.num_classes))
        if recipe.cutmix_alpha > 0:
            mixes.append(InPlaceCutMix(alpha=recipe.cutmix_alpha, num_classes=recipe.num_classes))
        # one of MixUp/CutMix per batch, chosen uniformly (pycls/timm switch probability 0.5)
        self.mix = v2.RandomChoice(mixes) if mixes else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, sample_seeds: torch.Tensor,
                 batch_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        shifts = None
        if self.recipe.pca_std > 0:
            shifts = lighting_shifts(sample_seeds.tolist(), self.recipe.pca_std, self.lighting).to(images.device)
        x = normalize(images, shifts)
        if self.erase is not None:  # per image: v2 on a batch would erase one box in all of them
            for image, seed in zip(x, sample_seeds.tolist()):
                with drawing_from(part_seed(seed, "erase")):
                    self.erase(image)
        if not self.recipe.soft_targets:
            return x, labels
        if self.mix is not None:
            with drawing_from(batch_seed):
                x, targets = self.mix(x, labels)
        else:
            targets = torch.nn.functional.one_hot(labels, self.recipe.num_classes).float()
        eps = self.recipe.label_smoothing
        return x, targets * (1 - eps) + eps / self.recipe.num_classes

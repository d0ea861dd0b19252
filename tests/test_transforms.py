"""The augmentation recipe: reduced-size decode keeps the crop geometry; targets and sizes are right."""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as v2
from PIL import Image

from vitc.config import load_config
from vitc.data.loading.decode import Box, decode_crop, image_size, plan_decode
from vitc.data.loading.draws import drawing_from, part_seed
from vitc.data.loading.transforms import (
    EvalSampleTransform,
    InPlaceCutMix,
    InPlaceMixUp,
    Recipe,
    TrainBatchTransform,
    TrainSampleTransform,
    center_crop_box,
)
from vitc.errors import VitcError


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def large_photo() -> bytes:
    """A 1200x1600 image with structure at every scale (so a shifted crop looks different)."""
    y, x = np.mgrid[0:1200, 0:1600].astype(np.float32)
    pixels = np.stack([127 + 120 * np.sin(x / 37) * np.cos(y / 53), 255 * x / 1600,
                       127 + 120 * np.sin((x + y) / 91)], axis=-1)
    return jpeg(pixels.clip(0, 255).astype(np.uint8))


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("box, expected_reduction", [
    (Box(101, 203, 900, 1100), 4),  # crop >= 4x the output: decoded at 1/4
    (Box(37, 555, 500, 470), 2),
    (Box(0, 0, 1200, 1600), 4),
])
def test_reduced_decode_crops_the_same_region_as_full_decode(large_photo, box, expected_reduction):
    size = (224, 224)
    plan = plan_decode(*image_size(large_photo), box, size)
    assert plan.reduction == expected_reduction
    reduced = decode_crop(large_photo, plan.box, size, reduce=True)
    full = decode_crop(large_photo, plan.box, size, reduce=False)
    shifted = decode_crop(large_photo, Box(plan.box.top + 8, plan.box.left + 8, plan.box.height, plan.box.width),
                          size, reduce=False)
    assert reduced.shape == full.shape == (3, 224, 224) and reduced.dtype == torch.uint8
    # same region: differences are only resampling noise, far below an 8-pixel shift's
    assert mean_abs_diff(reduced, full) < 2.5
    assert mean_abs_diff(shifted, full) > 3 * mean_abs_diff(reduced, full)


def test_snapped_box_stays_within_one_reduced_pixel_of_the_sampled_box():
    box = Box(101, 203, 901, 1103)
    snapped = plan_decode(1200, 1600, box, (224, 224)).box
    for a, b in zip((box.top, box.left, box.height, box.width),
                    (snapped.top, snapped.left, snapped.height, snapped.width)):
        assert abs(a - b) <= 4


def test_fast_jpeg_decode_differs_from_the_accurate_one_by_a_grey_level_or_two(large_photo):
    box, size = Box(100, 200, 700, 900), (224, 224)
    fast = decode_crop(large_photo, box, size, reduce=False, fast=True).int()
    accurate = decode_crop(large_photo, box, size, reduce=False, fast=False).int()
    assert not torch.equal(fast, accurate)
    assert (fast - accurate).abs().float().mean() < 2.0


def test_small_crops_are_decoded_at_full_size():
    assert plan_decode(375, 500, Box(10, 20, 300, 300), (224, 224)).reduction == 1


def recipe(**overrides) -> Recipe:
    return Recipe(image_size=32, num_classes=10, **overrides)


def test_mixup_cutmix_targets_sum_to_one_with_label_smoothing():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8)
    x, targets = TrainBatchTransform(recipe(random_erasing=0.5))(images, labels, torch.arange(8), 0)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 10 - 1e-6  # smoothing mass on every class


def test_labels_stay_integers_without_mixing_or_smoothing():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    _, targets = TrainBatchTransform(recipe(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0))(images, torch.arange(4),
                                                                                  torch.arange(4), 0)
    assert targets.dtype == torch.int64 and targets.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_random_erasing_paints_a_box_of_the_mean_colour_in_each_image_it_picks(p):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)  # no pixel is the (non-integer) mean
    plain = recipe(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0, random_erasing=p)
    x, _ = TrainBatchTransform(plain)(images, torch.arange(6), torch.arange(6), 0)
    erased = (x == 0).flatten(1).float().mean(1)  # 0 after normalizing = the mean colour
    if p == 0:
        assert erased.max() == 0
    else:  # torchvision's area range (0.02, 0.33) of every image
        assert erased.min() >= 0.015 and erased.max() <= 0.34


@pytest.mark.parametrize("ours, theirs, alpha", [(InPlaceMixUp, v2.MixUp, 0.8), (InPlaceCutMix, v2.CutMix, 1.0)])
def test_in_place_mixing_equals_torchvision(ours, theirs, alpha):
    batch, labels = torch.randn(6, 3, 20, 24), torch.tensor([0, 3, 1, 4, 2, 0])
    for seed in range(5):  # several lam draws and CutMix boxes
        torch.manual_seed(seed)
        want_x, want_y = theirs(alpha=alpha, num_classes=5)(batch.clone(), labels)
        torch.manual_seed(seed)
        got_x, got_y = ours(alpha=alpha, num_classes=5)(batch.clone(), labels)
        assert torch.allclose(got_x, want_x, atol=1e-6) and torch.equal(got_y, want_y)


def test_eval_transform_output_size_and_center_crop_box():
    photo = jpeg(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8), quality=90)
    out = EvalSampleTransform(recipe())(photo)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    # Resize(224 / 0.875 = 256) + CenterCrop(224) on 375x500 = the centred 328-pixel square
    assert center_crop_box(375, 500, 0.875) == Box(23, 86, 328, 328)


@pytest.mark.parametrize("augment", ["autoaugment", "randaugment", "none"])
def test_train_transform_gives_uint8_images_of_the_model_size(augment):
    photo = jpeg(np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8), quality=90)
    out = TrainSampleTransform(recipe(auto_augment=augment))(photo, seed=7)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("augment", ["autoaugment", "randaugment"])
def test_auto_augment_gives_the_pixels_of_torchvisions_own_pil_conversions(large_photo, augment):
    # vitc hands PIL its HWC memory and packs the planes back itself (cheaper than torchvision's
    # conversions): the pixels must be those torchvision's to_pil_image / pil_to_tensor give
    transform = TrainSampleTransform(recipe(auto_augment=augment))
    for seed in range(12):
        crop = decode_crop(large_photo, transform.plan(large_photo, seed), transform.size)
        with drawing_from(part_seed(seed, "finish")):
            flipped = crop.flip(-1) if torch.rand(()) < transform.recipe.hflip else crop
            expected = v2.functional.pil_to_tensor(transform.augment(v2.functional.to_pil_image(flipped)))
        out = transform(large_photo, seed)
        assert torch.equal(out, expected) and out.is_contiguous()


def test_recipe_rejects_a_bad_crop_scale():
    with pytest.raises(VitcError, match="data.crop_scale"):  # the config refuses it as it loads
        Recipe.from_config(load_config(None, ["data.crop_scale=[0.5, 0.1]"]), 10)

"""The augmentation recipe: reduced-size decode keeps the crop geometry; targets and sizes are right."""

import io
import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as v1
import torchvision.transforms.v2 as v2
from PIL import Image

from vitc.config import load_config
from vitc.data.loading.decode import Box, decode_crop, image_size, plan_decode
from vitc.data.loading.draws import drawing_from, part_seed
from vitc.data.loading.slots import pack
from vitc.data.loading.transforms import (
    MEAN,
    RATIO,
    STD,
    EvalSampleTransform,
    InPlaceCutMix,
    InPlaceMixUp,
    Recipe,
    TrainBatchTransform,
    TrainSampleTransform,
    center_crop_box,
    lighting_shift,
    normalize,
    sample_crop_box,
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


def torchvision_crop_box(height: int, width: int, scale: tuple[float, float]) -> Box:
    """torchvision's own RandomResizedCrop box, drawn from torch's generator."""
    return Box(*v1.RandomResizedCrop.get_params(torch.empty(3, height, width, device="meta"), list(scale), list(RATIO)))


class TorchDraws:
    """random.Random's two draws sample_crop_box makes, taken from torch's generator as get_params
    takes them (a float32 uniform, an inclusive randint)."""

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()

    def randint(self, low: int, high: int) -> int:
        return torch.randint(low, high + 1, size=(1,)).item()


# a wide image whose small-scale tries sometimes do not fit, so the fallback runs too
SHAPES = [(375, 500), (500, 375), (1200, 1600), (64, 400)]


@pytest.mark.parametrize("height, width", SHAPES)
def test_crop_box_given_torchs_draws_is_torchvisions_box(height, width):
    # the same uniform numbers in, the same box out: the algorithm is get_params' step for step
    # (its exp in float32 against math.exp could round a side the other way; for these draws none does)
    with drawing_from(7):
        theirs = [torchvision_crop_box(height, width, (0.08, 1.0)) for _ in range(2000)]
    with drawing_from(7):
        ours = [sample_crop_box(height, width, (0.08, 1.0), TorchDraws()) for _ in range(2000)]
    assert ours == theirs


@pytest.mark.parametrize("height, width", SHAPES)
def test_crop_box_from_python_random_lies_in_the_image_with_torchvisions_area_and_ratio(height, width):
    scale = (0.08, 1.0)
    boxes = [sample_crop_box(height, width, scale, random.Random(seed)) for seed in range(2000)]
    for box in boxes:
        assert 0 <= box.top and box.top + box.height <= height and 0 <= box.left and box.left + box.width <= width
        # a try's area and ratio were in range before its sides were rounded to whole pixels (the
        # fallback's too in these shapes: a 4:3 crop of 64x400 is a fifth of it)
        area, ratio = box.height * box.width / (height * width), box.width / box.height
        side_slack = 1 / min(box.height, box.width)
        assert scale[0] * (1 - 2 * side_slack) <= area <= scale[1] * (1 + 2 * side_slack)
        assert RATIO[0] * (1 - 2 * side_slack) <= ratio <= RATIO[1] * (1 + 2 * side_slack)
    with drawing_from(3):
        theirs = [torchvision_crop_box(height, width, scale) for _ in range(2000)]

    def quantiles(boxes, of):
        return np.quantile([of(b) for b in boxes], [0.1, 0.25, 0.5, 0.75, 0.9])

    for of in (lambda b: b.height * b.width / (height * width), lambda b: math.log(b.width / b.height),
               lambda b: (b.top + b.height / 2) / height, lambda b: (b.left + b.width / 2) / width):
        assert np.abs(quantiles(boxes, of) - quantiles(theirs, of)).max() < 0.04


@pytest.mark.parametrize("height, width, scale, expected", [
    (100, 1000, (0.99, 1.0), Box(0, 433, 100, 133)),  # too wide for any ratio in RATIO: 4:3 centred
    (1000, 100, (0.99, 1.0), Box(433, 0, 133, 100)),  # too tall: 3:4 centred
])
def test_crop_box_falls_back_to_torchvisions_centre_crop_when_no_try_fits(height, width, scale, expected):
    for seed in range(20):
        assert sample_crop_box(height, width, scale, random.Random(seed)) == expected
    with drawing_from(0):
        assert torchvision_crop_box(height, width, scale) == expected


def test_crop_box_is_a_function_of_the_sample_seed_and_leaves_torchs_generator_alone(large_photo):
    transform = TrainSampleTransform(recipe())
    state = torch.get_rng_state()
    boxes = [transform.plan(large_photo, seed) for seed in range(50)]
    assert torch.equal(torch.get_rng_state(), state)
    assert boxes == [transform.plan(large_photo, seed) for seed in range(50)]
    assert len(set(boxes)) > 45  # seeds draw apart (two may snap to one box on the 1/8 decode grid)


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


def test_a_batch_packs_the_pixels_torch_stack_gives_from_channels_last_and_contiguous_images(large_photo):
    transform = TrainSampleTransform(recipe(auto_augment="none"))
    resized = [decode_crop(large_photo, transform.plan(large_photo, seed), transform.size) for seed in range(3)]
    images = [*resized, *(transform(large_photo, seed) for seed in range(3))]  # flipped or not
    assert not resized[0].is_contiguous()  # torch's fast resize keeps the decoder's channels-last layout
    out = torch.full((8, *images[0].shape), 7, dtype=torch.uint8)
    pack(images, out)
    assert torch.equal(out[:6], torch.stack(images)) and (out[6:] == 7).all()


def test_lighting_from_the_transforms_own_generator_draws_what_the_seeded_global_one_draws():
    generator = torch.Generator()
    for seed in (0, 5, 2**40 + 3):
        assert torch.equal(lighting_shift(seed, 0.1, generator), lighting_shift(seed, 0.1))


def test_normalize_is_mean_std_normalisation_plus_each_images_shift_over_std():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    shifts = torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.5, -0.5]])
    expected = (images.float() - mean) / std
    assert torch.allclose(normalize(images), expected, atol=1e-5)
    assert torch.allclose(normalize(images, shifts), expected + shifts.view(2, 3, 1, 1) / std, atol=1e-5)


def test_recipe_rejects_a_bad_crop_scale():
    with pytest.raises(VitcError, match="data.crop_scale"):  # the config refuses it as it loads
        Recipe.from_config(load_config(None, ["data.crop_scale=[0.5, 0.1]"]), 10)

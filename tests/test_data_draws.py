"""Augmentation randomness is a pure function of position: a sample's pixels depend on the sample
and the epoch, a batch's mixing on its index in the epoch, never on workers or on what was skipped.

The default recipe throughout (random crops, flips, AutoAugment; MixUp/CutMix and label smoothing
where batches are compared whole). Sample k has class k, so with mixing off a label names its sample.
"""

import torch
from loaders import train_loader
from test_data_loader import BATCH, write_shards

from vitc.config import load_config
from vitc.distributed.env import DistEnv

SIZES = (9, 7, 8, 8)


def default_recipe(shards, *overrides):
    return load_config(None, [f"data.train_shards={shards}", f"data.val_shards={shards}", "model.image_size=16",
                              f"train.micro_batch={BATCH}", "data.shuffle_buffer=8", "data.random_erasing=0.25",
                              *overrides])


def pixels_by_sample(shards, workers: int, epoch: int) -> dict[int, torch.Tensor]:
    """label -> finished image, mixing and smoothing off so that a label names its sample."""
    cfg = default_recipe(shards, f"data.workers={workers}", "data.mixup_alpha=0", "data.cutmix_alpha=0",
                         "data.label_smoothing=0")
    loader = train_loader(cfg, DistEnv(), num_classes=sum(SIZES))
    loader.set_epoch(epoch)
    return {int(label): image for images, labels in loader for image, label in zip(images, labels)}


def test_a_sample_gets_the_same_pixels_whatever_the_number_of_workers(tmp_path):
    shards = write_shards(tmp_path, SIZES)
    in_process, one, two = (pixels_by_sample(shards, workers, epoch=1) for workers in (0, 1, 2))
    assert len(two) >= 24  # two workers each drop a partial batch
    assert set(two) <= set(one) == set(in_process)
    assert all(torch.equal(one[k], in_process[k]) for k in one)
    assert all(torch.equal(two[k], one[k]) for k in two)
    # and the draws are random: another epoch crops, flips and augments the same sample differently
    other_epoch = pixels_by_sample(shards, 1, epoch=2)
    assert sum(not torch.equal(other_epoch[k], one[k]) for k in one) > len(one) // 2


def test_a_resumed_loader_yields_exactly_the_batches_the_straight_one_yields(tmp_path):
    shards = write_shards(tmp_path, SIZES)
    cfg = default_recipe(shards, "data.workers=2")
    straight = list(train_loader(cfg, DistEnv(), num_classes=sum(SIZES)))
    interrupted = train_loader(cfg, DistEnv(), num_classes=sum(SIZES))
    for consumed, _ in enumerate(interrupted, 1):
        if consumed == 3:  # an odd count: the resumed DataLoader starts its round-robin at the wrong worker
            break
    resumed = train_loader(cfg, DistEnv(), num_classes=sum(SIZES))
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed)  # its worker skips the consumed samples without decoding them
    assert len(rest) == len(straight) - 3
    for (images, targets), (want_images, want_targets) in zip(rest, straight[3:]):
        assert targets.dtype == torch.float32  # MixUp/CutMix and smoothing are on
        assert torch.equal(images, want_images) and torch.equal(targets, want_targets)


def test_loading_leaves_the_training_process_random_stream_alone(tmp_path):
    shards = write_shards(tmp_path, SIZES)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    list(train_loader(default_recipe(shards, "data.workers=0"), DistEnv(), num_classes=sum(SIZES)))
    assert torch.equal(torch.rand(4), expected)  # dropout and drop path draw what they would have

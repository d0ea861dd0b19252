"""Augmentation randomness as a pure function of position in the data, not of the process drawing it.

A sample's draws (crop box, flip, AutoAugment/RandAugment) come from a seed made of (data.seed,
epoch, the sample's shard and key, how many times this worker has opened its piece this epoch);
a batch's MixUp/CutMix and RandomErasing draws from (data.seed, epoch, rank, the batch's index in
the rank's epoch). So a resumed run that skips the consumed samples without decoding them draws
exactly what the straight run drew for every later sample and batch, and a sample gets the same
pixels whatever the number of workers (which changes the order, not the sample's identity).

torchvision's transforms draw from torch's global CPU generator (`torch.rand`, `torch.randint`,
`Beta.sample`; no Python `random` in the ones vitc uses, torchvision 0.29), and take no generator
argument: `drawing_from` seeds that generator for the block and restores its state afterwards, so
the training process's own draws (dropout, drop path) are not disturbed. The crop box alone is
drawn in plain Python, from its own `random.Random(part_seed(seed, "crop"))`, which touches no
process-wide state (vitc.data.loading.transforms.sample_crop_box says why). Only the CPU generator is
touched (`torch.default_generator`, not `torch.manual_seed`, which would reseed every CUDA
generator): the transforms' parameters are drawn on the CPU even for CUDA images.
"""

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GENERATOR = threading.RLock()  # one seeded block at a time on torch's global CPU generator


def _seed(*parts) -> int:
    """A 63-bit seed from the parts' text: stable across processes, Python versions and machines."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_seed(epoch_seed: str, shard: str, key: str, opened: int) -> int:
    """The seed of one sample's draws; `opened`: earlier openings of its piece by this worker this epoch
    (0 but for `data.resampled` draws and a short worker's second pass, whose repeats draw anew)."""
    return _seed("sample", epoch_seed, shard, key, opened)


def batch_seed(epoch_seed: str, rank: int, index: int) -> int:
    """The seed of the draws for the rank's batch number `index` of the epoch (0-based)."""
    return _seed("batch", epoch_seed, rank, index)


def part_seed(seed: int, part: str) -> int:
    """Independent seeds for the parts of one sample's draws made in different places (the crop box in
    the worker, flip and auto-augment wherever the crop is decoded), so both paths draw alike."""
    return _seed(seed, part)


@contextmanager
def drawing_from(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside the block, its state restored after."""
    generator = torch.default_generator
    with _GENERATOR:
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            yield
        finally:
            generator.set_state(state)

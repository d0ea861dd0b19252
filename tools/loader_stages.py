"""Where the train loader's CPU goes, stage by stage, per image, in one process (one thread):

    PYTHONPATH=. .venv/bin/python tools/loader_stages.py SHARD_DIR [PASSES] [autoaugment|none]

The stages the loader runs for each sample (vitc.data.loading.transforms and .decode), timed by
CPU time around each: tar reading and parsing, crop box planning (JPEG header + the
RandomResizedCrop draw, `sample_crop_box`), decode (libjpeg-turbo, DCT-domain reduction, crop
copied out), resize to 224 px, flip + AutoAugment with the PIL conversions, packing a batch of
32 (`slots.pack`, as into the shared batch buffers), and the training process's per-batch work
(normalize, MixUp/CutMix, label smoothing). Not counted: transport between processes and the
workers' waiting.
"""

import collections
import random
import sys
import time

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

from vitc.data.loading.decode import decode_full, image_size, plan_decode
from vitc.data.loading.draws import part_seed
from vitc.data.loading.slots import pack
from vitc.data.loading.streams import shard_samples
from vitc.data.loading.transforms import (
    Recipe,
    TrainBatchTransform,
    TrainSampleTransform,
    sample_crop_box,
)
from vitc.data.shards.manifest import resolve_shards
from vitc.heap import retain_freed_memory

BATCH = 32


def _decode(data: bytes, h: int, w: int, p) -> np.ndarray:
    c = p.decoded_box
    return np.ascontiguousarray(decode_full(data, h, w, p.reduction)[c.top:c.top + c.height, c.left:c.left + c.width])


def _resize(crop: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return F.resize(torch.from_numpy(crop).permute(2, 0, 1), list(size), antialias=True)


def main(shard_dir: str, passes: int = 3, auto_augment: str = "autoaugment") -> None:
    retain_freed_memory()
    torch.set_num_threads(1)
    recipe = Recipe(224, 1000, auto_augment=auto_augment)
    sample, batch_transform = TrainSampleTransform(recipe), TrainBatchTransform(recipe)
    shards, _ = resolve_shards(shard_dir, None, "train_shards")
    cpu: collections.Counter = collections.Counter()
    images = 0

    def timed(stage, fn, *args):
        start = time.process_time()
        out = fn(*args)
        cpu[stage] += time.process_time() - start
        return out

    for _ in range(passes):
        pending = []
        for shard in shards:
            start = time.process_time()
            datas = [s["jpg"] for s in shard_samples(shard, 60.0)]
            cpu["read tar"] += time.process_time() - start
            for data in datas:
                seed = images
                images += 1

                def plan(data=data, seed=seed):
                    h, w = image_size(data)
                    box = sample_crop_box(h, w, recipe.crop_scale, random.Random(part_seed(seed, "crop")))
                    return h, w, plan_decode(h, w, box, sample.size)

                h, w, p = timed("plan crop", plan)
                crop = timed("decode", _decode, data, h, w, p)
                image = timed("resize", _resize, crop, sample.size)
                pending.append(timed("flip + augment", sample.finish, image, seed))
                if len(pending) == BATCH:
                    packed = torch.empty(BATCH, 3, *sample.size, dtype=torch.uint8)
                    timed("pack batch", pack, pending, packed)
                    labels, seeds = torch.zeros(BATCH, dtype=torch.int64), torch.arange(BATCH)
                    timed("normalize + mix (training process)", batch_transform, packed, labels, seeds, images)
                    pending = []
    total = sum(cpu.values())
    print(f"{images} images, {auto_augment}: CPU ms per image by stage")
    for stage, seconds in cpu.items():
        print(f"  {stage:38s} {1000 * seconds / images:6.3f}  ({seconds / total:5.1%})")
    print(f"  {'total':38s} {1000 * total / images:6.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, sys.argv[3] if len(sys.argv) > 3 else "autoaugment")

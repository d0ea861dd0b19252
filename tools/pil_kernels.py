"""The Pillow kernels a faster Pillow build could speed up in the loader, one run: CPU ms per call.

    PYTHONPATH=. .venv/bin/python tools/pil_kernels.py SHARD_DIR [ROUNDS]
    PYTHONPATH=/path/to/pillow-simd/site:. .venv/bin/python tools/pil_kernels.py SHARD_DIR [ROUNDS]

Issue #33 named pillow-simd as a candidate. The loader hands Pillow only AutoAugment (torchvision's
ImageNet policy with vitc's fill and interpolation, on the loader's own 224-px crops, each with its
own seed as in the workers); its resize is torch's antialiased one. This prints, for whichever
Pillow is first on the path: AutoAugment per image, the two ops that dominate it (Rotate and
Equalize), and the crop's resize to 224 px by Pillow beside torch's (vitc's), plus a digest of
the AutoAugment pixels so two builds can be compared, and in how many crops Pillow's resize
gives torch's pixels. One thread, best of ROUNDS passes.
"""

import hashlib
import sys
import time

import numpy as np
import PIL
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps

from bench_decoders import SIZE, crop_window, loader_crops  # tools/, beside this script
from vitc.data.loading.decode import decode_crop
from vitc.data.loading.draws import drawing_from
from vitc.data.loading.transforms import AUTOAUGMENT_FILL, Recipe, _auto_augment, _to_pil


def best_ms_per_call(f, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for item in items:
            f(item)
        best = min(best, time.process_time() - start)
    return 1000 * best / len(items)


def main(shard_dir: str, rounds: int = 3) -> None:
    datas, boxes = loader_crops(shard_dir)
    crops = [_to_pil(decode_crop(d, b, SIZE)) for d, b in zip(datas, boxes)]
    windows = [crop_window(d, b) for d, b in zip(datas, boxes)]  # the decoded crop windows, before the resize
    augment = _auto_augment(Recipe(224, 1))
    fill = (AUTOAUGMENT_FILL,) * 3
    seeded = list(enumerate(crops))

    def auto_augment(item):
        seed, image = item
        with drawing_from(seed):
            return augment(image)

    digest = hashlib.blake2b(digest_size=8)
    for item in seeded:
        digest.update(auto_augment(item).tobytes())
    pil_windows = [Image.fromarray(w) for w in windows]
    torch_windows = [torch.from_numpy(w).permute(2, 0, 1) for w in windows]
    rows = {
        "AutoAugment, per image": best_ms_per_call(auto_augment, seeded, rounds),
        "Rotate 20 deg (bilinear), per call": best_ms_per_call(
            lambda im: im.rotate(20, Image.BILINEAR, fillcolor=fill), crops, rounds),
        "Equalize, per call": best_ms_per_call(ImageOps.equalize, crops, rounds),
        "resize crop -> 224, Pillow bilinear": best_ms_per_call(
            lambda im: im.resize(SIZE, Image.BILINEAR), pil_windows, rounds),
        "resize crop -> 224, torch antialiased (vitc's)": best_ms_per_call(
            lambda t: F.resize(t, list(SIZE), antialias=True), torch_windows, rounds),
    }
    print(f"Pillow {PIL.__version__} from {PIL.__file__}; {len(datas)} images, best of {rounds}")
    for name, ms in rows.items():
        print(f"  {name:48s} {ms:6.3f} ms")
    print(f"  AutoAugment pixels digest {digest.hexdigest()}")
    same, worst = 0, 0
    for pil, tensor in zip(pil_windows, torch_windows):
        diff = (np.asarray(pil.resize(SIZE, Image.BILINEAR), dtype=np.int16)
                - F.resize(tensor, list(SIZE), antialias=True).permute(1, 2, 0).numpy())
        same += not diff.any()
        worst = max(worst, int(np.abs(diff).max()))
    print(f"  Pillow's resize equals torch's in {same} of {len(pil_windows)} crops (largest difference {worst} levels)")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))

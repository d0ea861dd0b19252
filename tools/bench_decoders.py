"""JPEG decoders on this machine, one run, same photos, rounds interleaved: images per CPU-second.

    PYTHONPATH=. .venv/bin/python tools/bench_decoders.py SHARD_DIR [ROUNDS]

Candidates for vitc's CPU decode (issue #33): Pillow (bench data's row (c)), vitc's own path
(simplejpeg = libjpeg-turbo with fast IDCT/upsampling and DCT-domain reduction; the crop copied out),
nvImageCodec's CPU backend (libjpeg-turbo; full and region-of-interest decode) and DALI's CPU
decoders (full, and `image_slice` on the crop window), each bare and followed by the resize to
224 px that the loader does. The crop windows are the loader's own RandomResizedCrop boxes.
nvImageCodec and DALI rows are skipped when they are not installed. One thread everywhere.
"""

import io
import statistics
import sys
import time

import numpy as np
import simplejpeg
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from vitc.data.loading.decode import decode_crop, decode_full, image_size, plan_decode
from vitc.data.loading.streams import shard_samples
from vitc.data.loading.transforms import Recipe, TrainSampleTransform
from vitc.data.shards.manifest import resolve_shards
from vitc.heap import retain_freed_memory

SIZE = (224, 224)
BATCH = 32


def loader_crops(shard_dir: str) -> tuple[list[bytes], list]:
    """Every JPEG of the shards and the crop box the train loader draws for it (seed = its index),
    with vitc's heap settings and one thread, as the loader's workers run."""
    retain_freed_memory()
    torch.set_num_threads(1)
    shards, _ = resolve_shards(shard_dir, None, "train_shards")
    datas = [s["jpg"] for shard in shards for s in shard_samples(shard, 60.0)]
    plan = TrainSampleTransform(Recipe(224, 1))
    return datas, [plan.plan(d, i) for i, d in enumerate(datas)]


def crop_window(data: bytes, box) -> np.ndarray:
    """The decoded crop window (reduced decode where it applies), copied out: HWC uint8, before the resize."""
    h, w = image_size(data)
    p = plan_decode(h, w, box, SIZE)
    pixels, c = decode_full(data, h, w, p.reduction), p.decoded_box
    return np.ascontiguousarray(pixels[c.top:c.top + c.height, c.left:c.left + c.width])


def main(shard_dir: str, rounds: int = 3) -> None:
    datas, boxes = loader_crops(shard_dir)

    def pil_full():
        for d in datas:
            Image.open(io.BytesIO(d)).convert("RGB").load()

    def vitc_full():
        for d in datas:
            simplejpeg.decode_jpeg(d, colorspace="RGB", fastdct=True, fastupsample=True)

    def vitc_crop():
        for d, b in zip(datas, boxes):
            crop_window(d, b)

    def vitc_crop_resize():
        for d, b in zip(datas, boxes):
            decode_crop(d, b, SIZE)

    candidates = {"Pillow full decode (row c)": pil_full, "vitc decoder full (simplejpeg)": vitc_full,
                  "vitc crop decode": vitc_crop, "vitc crop decode + resize": vitc_crop_resize}
    candidates.update(_nvimgcodec(datas, boxes))
    candidates.update(_dali(datas, boxes))
    rates: dict[str, list[float]] = {k: [] for k in candidates}
    for f in candidates.values():
        f()  # warm-up
    items = list(candidates.items())
    for r in range(rounds):
        for name, f in items[r % len(items):] + items[:r % len(items)]:
            start = time.process_time()
            n = f() or len(datas)
            rates[name].append(n / (time.process_time() - start))
    for name, v in rates.items():
        print(f"{name:36s} img/CPU-s {min(v):6.0f} - {max(v):6.0f}  median {statistics.median(v):6.0f}")


def _nvimgcodec(datas, boxes) -> dict:
    try:
        from nvidia import nvimgcodec as nv
    except ImportError:
        return {}
    decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                         backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])

    def full():
        for d in datas:
            np.asarray(decoder.decode(nv.CodeStream(d)).cpu())

    def roi(resize: bool):
        for d, b in zip(datas, boxes):
            region = nv.Region(b.top, b.left, b.top + b.height, b.left + b.width)
            image = np.asarray(decoder.decode(nv.CodeStream(d).get_sub_code_stream(region=region)).cpu())
            if resize:
                F.resize(torch.from_numpy(image).permute(2, 0, 1), list(SIZE), antialias=True)

    return {"nvImageCodec CPU full": full, "nvImageCodec CPU crop (ROI)": lambda: roi(False),
            "nvImageCodec CPU crop (ROI) + resize": lambda: roi(True)}


def _dali(datas, boxes) -> dict:
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return {}
    iterations = len(datas) // BATCH

    def source():
        i = 0
        while True:
            idx = [(i + k) % len(datas) for k in range(BATCH)]
            i += BATCH
            yield ([np.frombuffer(datas[j], np.uint8) for j in idx],
                   [np.array([boxes[j].left, boxes[j].top], np.int32) for j in idx],
                   [np.array([boxes[j].width, boxes[j].height], np.int32) for j in idx])

    def build(kind: str):
        @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipeline():
            enc, anchor, shape = fn.external_source(source=source(), num_outputs=3)
            if kind == "full":
                return fn.decoders.image(enc, device="cpu", output_type=types.RGB)
            image = fn.decoders.image_slice(enc, anchor, shape, device="cpu", output_type=types.RGB,
                                            normalized_anchor=False, normalized_shape=False)
            return fn.resize(image, size=list(SIZE), antialias=True) if kind == "resize" else image

        pipe = pipeline()
        pipe.build()

        def run():
            for _ in range(iterations):
                pipe.run()
            return iterations * BATCH
        return run

    return {"DALI CPU full": build("full"), "DALI CPU crop (image_slice)": build("crop"),
            "DALI CPU crop + DALI resize": build("resize")}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)

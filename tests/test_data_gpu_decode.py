"""`data.decode_device: cuda` never ends a run on one image: what nvJPEG refuses is decoded on the
CPU for that sample and counted, and `vitc shards verify` lists those samples beforehand.

No GPU here: the GPU decoder is stood in by a function that refuses what nvJPEG refuses, the way
torchvision's batched `decode_jpeg` does (the whole call raises), given to the loader as its decoder.
"""

import io

import numpy as np
import torch
from loaders import train_loader
from PIL import Image
from test_data_loader import BATCH, jpeg_bytes, write_shards

from vitc.cli import main
from vitc.config import load_config
from vitc.data.loading.gpu_decode import GpuDecode
from vitc.distributed.env import DistEnv

SIZES = (8, 8)
PNG, CMYK, TRUNCATED = 3, 9, 12  # sample indices (= labels)


def encoded(index: int, fmt: str, mode: str = "RGB") -> bytes:
    image = Image.open(io.BytesIO(jpeg_bytes(index))).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def nvjpeg_stand_in(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """All of a batch or nothing, like nvJPEG through torchvision: only YCbCr or grayscale JPEGs."""
    images = []
    for data in datas:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    raise RuntimeError(f"nvjpegDecode failed: unsupported {image.format} {image.mode}")
                images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device))
        except OSError as e:  # a truncated image
            raise RuntimeError(f"nvjpegDecode failed: {e}") from None
    return images


def shards_with_odd_images(root, bad: dict | None = None):
    return write_shards(root, SIZES, bad=bad,
                        images={PNG: ("png", encoded(PNG, "PNG")), CMYK: ("jpg", encoded(CMYK, "JPEG", "CMYK"))})


def one_epoch(shards, gpu: GpuDecode | None):
    cfg = load_config(None, [f"data.train_shards={shards}", "model.image_size=16", f"train.micro_batch={BATCH}",
                             "data.workers=1", "data.mixup_alpha=0", "data.cutmix_alpha=0", "data.label_smoothing=0",
                             "data.max_bad_fraction=0.1"])
    loader = train_loader(cfg, DistEnv(), num_classes=sum(SIZES), gpu=gpu)
    return loader, {int(label): image for images, labels in loader for image, label in zip(images, labels)}


def test_samples_nvjpeg_refuses_are_decoded_on_the_cpu_and_counted(tmp_path):
    shards = shards_with_odd_images(tmp_path, bad={TRUNCATED: "truncated"})
    gpu = GpuDecode(16, torch.device("cpu"), nvjpeg_stand_in)
    loader, pixels = one_epoch(shards, gpu)
    assert loader.gpu_fallbacks == 2  # the PNG and the CMYK JPEG
    assert loader.bad_samples == 1 and TRUNCATED not in pixels  # neither decoder reads it: skipped
    assert {PNG, CMYK} <= set(pixels)
    # decoded on the CPU with the sample's own draws: the very pixels the CPU loader gives it
    _, on_cpu = one_epoch(shards, None)
    assert torch.equal(pixels[PNG], on_cpu[PNG]) and torch.equal(pixels[CMYK], on_cpu[CMYK])


def test_verify_lists_the_samples_the_gpu_decoder_cannot_take(tmp_path, capsys):
    shards = shards_with_odd_images(tmp_path)
    assert main(["shards", "verify", str(shards)]) == 0  # valid samples: not problems
    out = capsys.readouterr().out
    assert "2 samples the GPU decoder" in out
    assert f"train-000000.tar: sample 's{PNG:05d}': not a JPEG" in out
    assert f"train-000001.tar: sample 's{CMYK:05d}': CMYK/YCCK JPEG" in out

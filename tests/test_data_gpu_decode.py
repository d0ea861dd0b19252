"""`data.decode_device: cuda` decodes off the training thread, in the loader's order, exactly and
resumably, never ends a run on one image (what nvJPEG refuses is decoded on the CPU for that sample
and counted, and `vitc shards verify` lists those samples beforehand), and its thread ends with the
pass or the loader.

No GPU here: the GPU decoder is stood in by a function that refuses what nvJPEG refuses, the way
torchvision's batched `decode_jpeg` does (the whole call raises), given to the loader as its decoder.
"""

import io
import threading
import time

import numpy as np
import pytest
import torch
from loaders import train_loader
from PIL import Image
from test_data_loader import BATCH, jpeg_bytes, write_shards

from vitc.cli import main
from vitc.config import load_config
from vitc.data.loading.gpu_check import check_gpu_decode
from vitc.data.loading.gpu_decode import GpuDecode
from vitc.data.loading.prefetch import Prefetch
from vitc.distributed.env import DistEnv
from vitc.errors import VitcError

SIZES = (8, 8)
PNG, CMYK, TRUNCATED = 3, 9, 12  # sample indices (= labels)


def encoded(index: int, fmt: str, mode: str = "RGB") -> bytes:
    image = Image.open(io.BytesIO(jpeg_bytes(index))).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


DECODE_THREADS: set[str] = set()  # where the stand-in ran


def nvjpeg_stand_in(datas: list[bytes], boxes, device: torch.device) -> list[torch.Tensor]:
    """All of a batch or nothing, like nvJPEG through torchvision: only YCbCr or grayscale JPEGs;
    each image's crop box."""
    DECODE_THREADS.add(threading.current_thread().name)
    images = []
    for data, b in zip(datas, boxes):
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    raise RuntimeError(f"nvjpegDecode failed: unsupported {image.format} {image.mode}")
                full = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device)
                images.append(full[:, b.top:b.top + b.height, b.left:b.left + b.width])
        except OSError as e:  # a truncated image
            raise RuntimeError(f"nvjpegDecode failed: {e}") from None
    return images


def shards_with_odd_images(root, bad: dict | None = None):
    return write_shards(root, SIZES, bad=bad,
                        images={PNG: ("png", encoded(PNG, "PNG")), CMYK: ("jpg", encoded(CMYK, "JPEG", "CMYK"))})


def gpu_loader(shards, gpu: GpuDecode | None, sizes=SIZES, *overrides):
    cfg = load_config(None, [f"data.train_shards={shards}", "model.image_size=16", f"train.micro_batch={BATCH}",
                             "data.workers=1", "data.mixup_alpha=0", "data.cutmix_alpha=0", "data.label_smoothing=0",
                             "data.max_bad_fraction=0.1", *overrides])
    return train_loader(cfg, DistEnv(), num_classes=sum(sizes), gpu=gpu)


def one_epoch(shards, gpu: GpuDecode | None):
    loader = gpu_loader(shards, gpu)
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


def stand_in(prefetch: int = 2) -> GpuDecode:
    return GpuDecode(16, torch.device("cpu"), nvjpeg_stand_in, prefetch=prefetch)


def test_batches_are_decoded_off_the_training_thread_in_the_loaders_order(tmp_path):
    shards = write_shards(tmp_path, sizes=(9, 7, 8))
    DECODE_THREADS.clear()
    on_gpu = [(images, labels) for images, labels in gpu_loader(shards, stand_in(), (9, 7, 8), "data.workers=2")]
    assert DECODE_THREADS == {"vitc-gpu-decode"}  # the decoder never ran on the training thread
    on_cpu = list(gpu_loader(shards, None, (9, 7, 8), "data.workers=2"))
    # the same samples in the same batches and order as the CPU loader delivers them
    assert [labels.tolist() for _, labels in on_gpu] == [labels.tolist() for _, labels in on_cpu]
    # and the same pixels whatever the prefetch depth: draws are the sample's, not the thread's
    again = list(gpu_loader(shards, stand_in(prefetch=1), (9, 7, 8), "data.workers=2",
                            "data.auto_augment=autoaugment"))
    twice = list(gpu_loader(shards, stand_in(prefetch=3), (9, 7, 8), "data.workers=2",
                            "data.auto_augment=autoaugment"))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, twice))


def test_a_resumed_gpu_decoded_epoch_gives_the_straight_runs_batches_bit_for_bit(tmp_path):
    shards = write_shards(tmp_path, sizes=(9, 7, 8))
    args = (shards, (9, 7, 8), "data.workers=2", "data.auto_augment=autoaugment", "data.random_erasing=0.25")
    straight = list(gpu_loader(args[0], stand_in(), *args[1:]))
    first = gpu_loader(args[0], stand_in(), *args[1:])
    batches = iter(first)
    head = [next(batches) for _ in range(2)]
    state = first.state_dict()
    first.close()
    resumed = gpu_loader(args[0], stand_in(), *args[1:])
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(head) + len(rest) == len(straight)
    for (x, y), (sx, sy) in zip(head + rest, straight):
        assert torch.equal(x, sx) and torch.equal(y, sy)


def test_the_decode_thread_ends_with_a_pass_left_part_way_and_with_the_loader(tmp_path):
    shards = write_shards(tmp_path, sizes=(9, 7, 8))
    gpu = stand_in()
    loader = gpu_loader(shards, gpu, (9, 7, 8))
    batches = iter(loader)
    next(batches)
    running = gpu._running
    assert running is not None and running.alive
    loader.close()  # what the trainer does at the end, with the pass still referenced
    assert not running.alive and gpu._running is None
    assert len(list(loader)) == len(loader) - 1  # the epoch goes on where it stopped, on a new thread


def test_persistent_workers_outlive_each_passs_decode_thread(tmp_path):
    # workers die with the thread that forked them (PR_SET_PDEATHSIG): not the decode thread's
    shards = write_shards(tmp_path, sizes=(9, 7, 8))
    loader = gpu_loader(shards, stand_in(), (9, 7, 8), "data.workers=2")
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert len(list(loader)) == len(loader)
    loader.close()


def test_the_prefetch_thread_runs_at_most_its_depth_ahead_and_carries_errors():
    made = []

    def source():
        for i in range(100):
            made.append(i)
            if i == 20:
                raise VitcError("shard x.tar: broken")
            yield i

    prefetch = Prefetch(source(), depth=3)
    items = iter(prefetch)
    assert next(items) == 0
    deadline = time.monotonic() + 30
    while len(made) < 5 and time.monotonic() < deadline:  # 1 consumed + 3 queued + 1 waiting for room
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(made) == 5
    with pytest.raises(VitcError, match="shard x.tar: broken"):
        list(items)
    assert prefetch.close() and not prefetch.alive


def test_closing_the_prefetch_closes_its_source():
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    prefetch = Prefetch(source(), depth=2)
    assert next(iter(prefetch)) == 0
    assert prefetch.close()
    assert closed.is_set()


def test_the_gpu_smoke_check_runs_on_the_cpu_with_a_stand_in():
    lines = check_gpu_decode(torch.device("cpu"), nvjpeg_stand_in)
    assert any("CMYK" in line and "CPU" in line for line in lines)
    assert any(line.startswith("rgb") for line in lines) and any(line.startswith("grayscale") for line in lines)

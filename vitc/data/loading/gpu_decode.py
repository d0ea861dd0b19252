"""`data.decode_device: cuda`: nvJPEG decodes whole batches in the training process, on a side
stream one batch ahead of their use, and any sample it cannot take is decoded on the CPU instead.

The workers only read each sample and plan its crop box (from the JPEG header, with the sample's
seed: vitc.data.loading.draws); here a batch is decoded by one `torchvision.io.decode_jpeg` call on
a list (nvJPEG's batched decode), each image cropped and resized, flipped and auto-augmented on the
GPU with its own seed. A sample nvJPEG cannot take — a PNG or WebP member, a CMYK JPEG (ImageNet-1k
holds 22, which `vitc shards build` stores unchanged), anything `vitc.data.samples.gpu_decode_refusal`
names or the decoder itself refuses — is decoded by the CPU decoder (libjpeg-turbo/PIL) for that
sample alone and counted (`fallbacks`, logged); one neither decoder reads is a bad sample, dropped
from its batch and counted like the workers' bad samples.

Verified by reading only (no GPU on this project's machines): `nvjpeg_decode` and the stream and
event lines of `SideStream`. Everything else runs in tests on the CPU, with the GPU decoder stood
in by a function that refuses what nvJPEG refuses (tests/test_data_gpu_decode.py).
"""

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torchvision.transforms.v2.functional as F

from vitc.data.loading.decode import Box, UndecodableImage, decode_crop
from vitc.data.samples import gpu_decode_refusal

log = logging.getLogger(__name__)

Decoder = Callable[[list[bytes], torch.device], list[torch.Tensor]]


def nvjpeg_decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] images decoded by nvJPEG in one batched call; raises RuntimeError when it
    refuses any of them (torchvision's `decode_jpeg` on CUDA). GPU only: verified by reading."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


class SideStream:
    """Work enqueued on a second CUDA stream, used on the current one once its event has passed, so
    decoding the next batch overlaps the step on this one. On the CPU (tests) it does nothing.
    The CUDA lines are verified by reading only."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def enqueue(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def done(self) -> torch.cuda.Event | None:
        return self.stream.record_event() if self.stream is not None else None

    def use(self, event: torch.cuda.Event | None, tensors: tuple[torch.Tensor, ...]) -> None:
        if event is None:
            return
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_event(event)
        for t in tensors:  # made on the side stream: the allocator must not reuse them before `current` is done
            t.record_stream(current)


class GpuDecode:
    """Decodes the workers' (JPEG bytes, crop boxes, labels, seeds) batches into uint8 [B,3,S,S] on `device`."""

    def __init__(self, size: int, device: torch.device | None = None, decoder: Decoder = nvjpeg_decode,
                 fast: bool = True):
        self.size, self.decoder, self.fast = (size, size), decoder, fast
        self.device = device  # None: this rank's CUDA device, read at the first batch (the engine selects it)
        self.fallbacks = 0  # samples decoded on the CPU because nvJPEG cannot take them
        self.bad = 0  # samples neither decoder could read, dropped from their batch
        self._side: SideStream | None = None

    @classmethod
    def select(cls, decode_device: str, image_size: int, fast: bool) -> "GpuDecode | None":
        if decode_device != "cuda":
            return None
        if not torch.cuda.is_available():
            log.warning("data.decode_device is 'cuda' but CUDA is not available: decoding on the CPU")
            return None
        return cls(image_size, fast=fast)

    def batches(self, items: Iterator[tuple], finish) -> Iterator[tuple]:
        """(worker, (datas, boxes, labels, seeds), slot) items -> (worker, (images, labels, seeds), slot),
        each batch enqueued before the previous one is handed on. `finish(image, seed)` flips and augments."""
        if self.device is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._side = self._side or SideStream(self.device)
        ahead = None
        for worker, (datas, boxes, labels, seeds), slot in items:
            with self._side.enqueue():
                images, kept = self.images(datas, boxes, seeds.tolist(), finish)
                payload = images, labels[kept].to(self.device, non_blocking=True), seeds[kept]
                event = self._side.done()
            if ahead is not None:
                yield self._ready(*ahead)
            ahead = worker, payload, slot, event
        if ahead is not None:
            yield self._ready(*ahead)

    def _ready(self, worker: int, payload: tuple, slot, event) -> tuple:
        self._side.use(event, payload[:2])
        return worker, payload, slot

    def images(self, datas: list[bytes], boxes: list[Box], seeds: list[int], finish) -> tuple[torch.Tensor, list[int]]:
        """The finished images of one batch, and the indices of the samples in it (all but the unreadable)."""
        decoded = self._decode_on_device(datas)
        images, kept = [], []
        for i, (data, box, seed) in enumerate(zip(datas, boxes, seeds)):
            image = decoded[i]
            if isinstance(image, torch.Tensor):
                image = F.resized_crop(image, box.top, box.left, box.height, box.width, list(self.size),
                                       antialias=True)
            else:
                image = self._decode_on_cpu(data, box, image)
            if image is not None:
                images.append(finish(image, seed))
                kept.append(i)
        if not images:
            return torch.empty(0, 3, *self.size, dtype=torch.uint8, device=self.device), kept
        return torch.stack(images), kept

    def _decode_on_device(self, datas: list[bytes]) -> list[torch.Tensor | str]:
        """Each image decoded by the GPU decoder, or why it cannot take it. One batched call for the
        batch; when that is refused, one call per image finds the ones it refuses."""
        refusals = [gpu_decode_refusal(d) for d in datas]
        todo = [i for i, r in enumerate(refusals) if r is None]
        out: list[torch.Tensor | str] = list(refusals)
        try:
            for i, image in zip(todo, self.decoder([datas[i] for i in todo], self.device) if todo else []):
                out[i] = image
        except RuntimeError:
            for i in todo:
                try:
                    out[i] = self.decoder([datas[i]], self.device)[0]
                except RuntimeError as e:
                    out[i] = f"nvJPEG refused it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        return out

    def _decode_on_cpu(self, data: bytes, box: Box, reason: str) -> torch.Tensor | None:
        try:
            image = decode_crop(data, box, self.size, fast=self.fast)
        except UndecodableImage as e:
            self.bad += 1
            log.warning("skipped a sample neither nvJPEG nor the CPU decoder reads: %s", e)
            return None
        self.fallbacks += 1
        log.warning("decoded a sample on the CPU: %s (`vitc shards verify` lists such samples)", reason)
        return image.to(self.device)

"""`data.decode_device: cuda`: batches decoded on the GPU, on a thread and a side CUDA stream of their
own, `prefetch` batches ahead; the training thread only waits on each batch's event.

The workers only read each sample and plan its crop box (from the JPEG header, with the sample's
seed: vitc.data.loading.draws). Here, on the decode thread (vitc.data.loading.prefetch), a batch
is decoded by one batched call that decodes only each image's crop box where the decoder can
(nvImageCodec's region-of-interest decode on the GPU, using the A100/H100 hardware JPEG engines
for baseline JPEGs, when `nvidia-nvimgcodec-cu12` is installed: `pip install vitc[gpu-decode]`;
else torchvision's nvJPEG `decode_jpeg`, which decodes the whole image), each crop resized,
flipped and auto-augmented on the GPU with its own seed; then an event is recorded on the side
stream. A sample the GPU decoder cannot take — a PNG or WebP member, a CMYK JPEG (ImageNet-1k
holds 22, which `vitc shards build` stores unchanged), anything
`vitc.data.samples.gpu_decode_refusal` names or the decoder itself refuses — is decoded by the
CPU decoder (libjpeg-turbo/PIL) for that sample alone and counted (`fallbacks`, logged); one
neither decoder reads is a bad sample, dropped from its batch and counted like the workers' bad
samples.

Verified by reading only (no GPU on this project's machines): `nvimgcodec_decode`,
`nvjpeg_decode` and the CUDA lines of `SideStream`; `vitc.data.loading.gpu_check.check_gpu_decode`
runs them on a GPU node (tools/gpu_smoke.sh). Everything else — the thread, ordering, fallbacks,
exactness, shutdown — runs in tests on the CPU, with the GPU decoder stood in by a function that
refuses what nvJPEG refuses (tests/test_data_gpu_decode.py).
"""

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator

import torch
import torchvision.transforms.v2.functional as F

from vitc.data.loading.decode import Box, UndecodableImage, decode_crop
from vitc.data.loading.prefetch import Prefetch
from vitc.data.samples import gpu_decode_refusal

log = logging.getLogger(__name__)

PREFETCH = 2  # batches decoded ahead of the step: one in use, one ready, one being made

# (JPEG bytes, crop boxes, device) -> each image's box region, uint8 [3, h, w] on the device, or
# None where the decoder refuses that image; or RuntimeError when it refuses the whole call.
Decoder = Callable[[list[bytes], list[Box], torch.device], list[torch.Tensor | None]]


@functools.cache
def _nvimgcodec_decoder(device_index: int):
    from nvidia import nvimgcodec

    # GPU backends only: what they refuse goes to vitc's own CPU decoder, the pixels the CPU loader gives
    return nvimgcodec.Decoder(device_id=device_index, backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY),
                                                                 nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)])


def nvimgcodec_decode(datas: list[bytes], boxes: list[Box], device: torch.device) -> list[torch.Tensor | None]:
    """Only each box decoded, by nvImageCodec in one batched call on the current CUDA stream
    (hardware JPEG engines where the GPU has them, CUDA kernels otherwise); EXIF orientation is
    ignored, as the CPU decoder ignores it. GPU only: verified by reading."""
    from nvidia import nvimgcodec

    streams = [nvimgcodec.CodeStream(d).get_sub_code_stream(
        region=nvimgcodec.Region(b.top, b.left, b.top + b.height, b.left + b.width)) for d, b in zip(datas, boxes)]
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.SRGB,
                                     sample_format=nvimgcodec.P_RGB)
    stream = torch.cuda.current_stream(device)
    decoded = _nvimgcodec_decoder(device.index).decode(streams, params=params, cuda_stream=stream.cuda_stream)
    return [torch.from_dlpack(image.__dlpack__(stream=stream.cuda_stream)) if image is not None else None
            for image in decoded]


def nvjpeg_decode(datas: list[bytes], boxes: list[Box], device: torch.device) -> list[torch.Tensor]:
    """Whole images decoded by nvJPEG in one batched call (torchvision's `decode_jpeg` on CUDA), then
    each box taken as a view; raises RuntimeError when nvJPEG refuses any. GPU only: verified by reading."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return [image[:, b.top:b.top + b.height, b.left:b.left + b.width] for image, b in zip(images, boxes)]


def default_decoder() -> Decoder:
    """nvImageCodec's region decode when it is installed, else torchvision's nvJPEG."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return nvjpeg_decode
    return nvimgcodec_decode


class SideStream:
    """Work enqueued on a second CUDA stream, used on the current one once its event has passed, so
    decoding the next batch overlaps the step on this one. On the CPU (tests) it does nothing.
    The CUDA lines are verified by reading only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def enqueue(self):
        """On the decode thread: this device and the side stream current (both are per thread)."""
        if self.stream is None:
            yield
            return
        torch.cuda.set_device(self.device)
        with torch.cuda.stream(self.stream):
            yield

    def done(self) -> torch.cuda.Event | None:
        return self.stream.record_event() if self.stream is not None else None

    def use(self, event: torch.cuda.Event | None, tensors: tuple[torch.Tensor, ...]) -> None:
        if event is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)  # the GPU waits; the training thread does not
        for t in tensors:  # made on the side stream: the allocator must not reuse them before `current` is done
            t.record_stream(current)


class GpuDecode:
    """Decodes the workers' (JPEG bytes, crop boxes, labels, seeds) batches into uint8 [B,3,S,S] on `device`."""

    def __init__(self, size: int, device: torch.device | None = None, decoder: Decoder | None = None,
                 fast: bool = True, prefetch: int = PREFETCH):
        self.size, self.fast, self.prefetch = (size, size), fast, prefetch
        self.decoder = decoder or default_decoder()
        self.device = device  # None: this rank's CUDA device, read at the first batch (the engine selects it)
        self.fallbacks = 0  # samples decoded on the CPU because the GPU decoder cannot take them
        self.bad = 0  # samples neither decoder could read, dropped from their batch
        self._side: SideStream | None = None
        self._running: Prefetch | None = None

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
        in their order, made on the decode thread up to `prefetch` batches ahead.
        `finish(image, seed)` flips and augments."""
        if self.device is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._side = self._side or SideStream(self.device)
        self.close()  # a pass left part-way: its thread ends before the next starts
        self._running = Prefetch(self._decoded(items, finish), self.prefetch, self._side.enqueue,
                                 name="vitc-gpu-decode")
        try:
            for worker, payload, slot, event in self._running:
                self._side.use(event, payload[:2])
                yield worker, payload, slot
        finally:
            self.close()

    def close(self) -> bool:
        """Stop the decode thread (it closes the workers' stream it reads); True when none is left running."""
        running, self._running = self._running, None
        return running.close() if running is not None else True

    def _decoded(self, items: Iterator[tuple], finish) -> Iterator[tuple]:
        """On the decode thread, with the side stream current."""
        try:
            for worker, (datas, boxes, labels, seeds), slot in items:
                images, kept = self.images(datas, boxes, seeds.tolist(), finish)
                payload = images, labels[kept].to(self.device, non_blocking=True), seeds[kept]
                yield worker, payload, slot, self._side.done()
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def images(self, datas: list[bytes], boxes: list[Box], seeds: list[int], finish) -> tuple[torch.Tensor, list[int]]:
        """The finished images of one batch, and the indices of the samples in it (all but the unreadable)."""
        decoded = self._decode_on_device(datas, boxes)
        images, kept = [], []
        for i, (data, box, seed) in enumerate(zip(datas, boxes, seeds)):
            image = decoded[i]
            if isinstance(image, torch.Tensor):
                image = F.resize(image, list(self.size), antialias=True)
            else:
                image = self._decode_on_cpu(data, box, image)
            if image is not None:
                images.append(finish(image, seed))
                kept.append(i)
        if not images:
            return torch.empty(0, 3, *self.size, dtype=torch.uint8, device=self.device), kept
        return torch.stack(images), kept

    def _decode_on_device(self, datas: list[bytes], boxes: list[Box]) -> list[torch.Tensor | str]:
        """Each box decoded by the GPU decoder, or why it cannot take it. One batched call for the
        batch; when that is refused as a whole, one call per image finds the ones it refuses."""
        refusals = [gpu_decode_refusal(d) for d in datas]
        todo = [i for i, r in enumerate(refusals) if r is None]
        out: list[torch.Tensor | str] = list(refusals)
        try:
            decoded = self.decoder([datas[i] for i in todo], [boxes[i] for i in todo], self.device) if todo else []
            for i, image in zip(todo, decoded):
                out[i] = image if image is not None else "the GPU decoder refused it"
        except RuntimeError:
            for i in todo:
                try:
                    image = self.decoder([datas[i]], [boxes[i]], self.device)[0]
                    out[i] = image if image is not None else "the GPU decoder refused it"
                except RuntimeError as e:
                    out[i] = f"the GPU decoder refused it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        return out

    def _decode_on_cpu(self, data: bytes, box: Box, reason: str) -> torch.Tensor | None:
        try:
            image = decode_crop(data, box, self.size, fast=self.fast)
        except UndecodableImage as e:
            self.bad += 1
            log.warning("skipped a sample neither the GPU nor the CPU decoder reads: %s", e)
            return None
        self.fallbacks += 1
        log.warning("decoded a sample on the CPU: %s (`vitc shards verify` lists such samples)", reason)
        return image.to(self.device)

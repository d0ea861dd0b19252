"""The GPU decode path checked on a real GPU in the first hour on a node (tools/gpu_smoke.sh):

    python -c "from vitc.data.loading.gpu_check import check_gpu_decode; print(*check_gpu_decode(), sep='\\n')"

An RGB (4:2:0), a grayscale and a CMYK JPEG, each cropped to a box as the loader plans it, go
through `GpuDecode` with the decoder a run would use (nvImageCodec's region decode, or nvJPEG);
each result is compared with the CPU loader's pixels of the same box. RGB and grayscale must be
decoded on the GPU and stay within `TOLERANCE` grey levels on average (GPU and CPU IDCT and chroma
upsampling differ slightly); CMYK, which nvJPEG does not take, must come back from the CPU
fallback, pixel for pixel. The decode runs on the decode thread and side stream, as in training.
"""

import io

import numpy as np
import torch
from PIL import Image

from vitc.data.loading.decode import Box, decode_crop
from vitc.data.loading.gpu_decode import Decoder, GpuDecode
from vitc.errors import VitcError

TOLERANCE = 3.0  # mean absolute difference, grey levels
SIZE = 64


def _photo(height: int = 300, width: int = 400) -> Image.Image:
    """Smooth gradients and a little noise: JPEG-like content without shipping a file."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    return Image.fromarray(np.clip(rgb + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, mode: str) -> bytes:
    buf = io.BytesIO()
    image.convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def check_gpu_decode(device: torch.device | None = None, decoder: Decoder | None = None) -> list[str]:
    """One line per case; raises VitcError naming the case that fails. Needs CUDA unless a `device`
    and a stand-in `decoder` are given (the test suite runs it so on the CPU)."""
    if device is None:
        if not torch.cuda.is_available():
            raise VitcError("check_gpu_decode needs a CUDA device (none is available)")
        device = torch.device("cuda", torch.cuda.current_device())
    gpu = GpuDecode(SIZE, device, decoder)
    photo, box = _photo(), Box(40, 60, 200, 240)
    cases = [("rgb", _jpeg(photo, "RGB")), ("grayscale", _jpeg(photo, "L")), ("CMYK", _jpeg(photo, "CMYK"))]

    def finish(image, seed):
        return image

    lines = []
    for name, data in cases:
        before = gpu.fallbacks
        batch = next(gpu.batches(iter([(0, ([data], [box], torch.tensor([0]), torch.tensor([0])), None)]), finish))
        image = batch[1][0][0].cpu()
        on_cpu = decode_crop(data, box, (SIZE, SIZE), fast=gpu.fast)
        diff = (image.float() - on_cpu.float()).abs().mean().item()
        fell_back = gpu.fallbacks > before
        where = "decoded on the CPU (fallback)" if fell_back else f"decoded on {device} by {gpu.decoder.__name__}"
        lines.append(f"{name}: {where}, mean |GPU - CPU| = {diff:.2f} grey levels")
        if name == "CMYK" and (not fell_back or diff != 0):
            raise VitcError(f"GPU decode check: {lines[-1]}; expected the CPU fallback, pixel for pixel")
        if name != "CMYK" and (fell_back or diff > TOLERANCE):
            raise VitcError(f"GPU decode check: {lines[-1]}; expected the GPU decoder within {TOLERANCE}")
    gpu.close()
    return lines

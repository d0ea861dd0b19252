"""JPEG bytes -> the uint8 pixels of one crop, decoding at reduced size when the crop allows.

Decode dominates the loader's CPU cost (docs/loader.md, issue #4), so a crop that will be shrunk to the
output size anyway is decoded in the DCT domain at 1/2, 1/4 or 1/8 scale (libjpeg-turbo, through
simplejpeg) — the largest reduction that still leaves the crop at least the output size. Only the
power-of-two scales are used: libjpeg-turbo's other M/8 scales are slower than a full decode
(docs/loader.md, "Where the CPU goes").

The crop box is always expressed in full-resolution pixels. A reduced decode snaps it to whole
reduced pixels; `plan_decode` returns that snapped box, which is then *the* box: the full-decode
path given the same box reads exactly the same image region, so both paths share their geometry.
"""

import io
import math
import re
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image


REDUCTIONS = (8, 4, 2)  # DCT-domain scales 1/8, 1/4, 1/2, tried largest reduction first


class UndecodableImage(ValueError):
    """The bytes are not an image PIL or libjpeg-turbo can read (truncated, corrupt, empty)."""


@dataclass(frozen=True)
class Box:
    """A crop in full-resolution pixels: rows top..top+height, columns left..left+width."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class DecodePlan:
    """How to decode one crop: DCT reduction factor, the crop in decoded pixels and in full pixels."""

    reduction: int
    decoded_box: Box
    box: Box


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the JPEG header, without decoding; other formats through PIL's header."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return height, width
    except ValueError:
        try:
            width, height = Image.open(io.BytesIO(data)).size
            return height, width
        except Exception as e:  # PIL raises many types for garbage bytes
            raise UndecodableImage(f"not a readable image ({_pil_reason(e)})") from None


def _pil_reason(error: Exception) -> str:
    """PIL's message without the in-memory file's repr it names ("<_io.BytesIO object at 0x...>")."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error)) or type(error).__name__


def _snap(start: int, length: int, full: int, r: int) -> tuple[int, int, int, int]:
    """One axis of a crop on the 1/r grid: (decoded start, decoded length, full start, full length)."""
    decoded_full = math.ceil(full / r)  # libjpeg-turbo's scaled size
    d_start = min(round(start / r), decoded_full - 1)
    d_len = max(1, min(round(length / r), decoded_full - d_start))
    # decoded pixel k covers full pixels [k*r, min((k+1)*r, full)): the last one may be partial
    f_start = d_start * r
    return d_start, d_len, f_start, min((d_start + d_len) * r, full) - f_start


def plan_decode(height: int, width: int, box: Box, out_size: tuple[int, int], is_jpeg: bool = True) -> DecodePlan:
    """The largest DCT reduction that keeps `box` at least `out_size`, and the snapped box."""
    reduction = 1
    if is_jpeg:
        reduction = next((r for r in REDUCTIONS
                          if box.height / r >= out_size[0] and box.width / r >= out_size[1]), 1)
    if reduction == 1:
        return DecodePlan(1, box, box)
    top, h, f_top, f_h = _snap(box.top, box.height, height, reduction)
    left, w, f_left, f_w = _snap(box.left, box.width, width, reduction)
    return DecodePlan(reduction, Box(top, left, h, w), Box(f_top, f_left, f_h, f_w))


def decode_full(data: bytes, height: int, width: int, reduction: int = 1, fast: bool = True) -> np.ndarray:
    """RGB uint8 [H/r, W/r, 3]. libjpeg-turbo first; PIL for what it refuses (PNG/WebP in an index).

    `fast`: libjpeg-turbo's fast integer IDCT and fast chroma upsampling, for differences of a grey
    level or two (data.fast_jpeg_decode; its speed-up in docs/loader.md); otherwise its accurate
    defaults, which PIL uses too.
    """
    try:
        if reduction == 1:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                      min_height=math.ceil(height / reduction),
                                      min_width=math.ceil(width / reduction))
    except ValueError as jpeg_error:
        if reduction != 1:
            raise UndecodableImage(f"corrupt JPEG ({jpeg_error})") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.array(image.convert("RGB"))
        except Exception as e:
            raise UndecodableImage(f"corrupt image ({jpeg_error}; PIL: {_pil_reason(e)})") from None


def decode_crop(data: bytes, box: Box, out_size: tuple[int, int], reduce: bool = True,
                fast: bool = True) -> torch.Tensor:
    """The `box` region of the image, resized (antialiased bilinear) to `out_size`: uint8 [3, h, w].

    With `reduce`, `box` is first snapped to the reduced grid (see `plan_decode`); pass a box that
    came out of `plan_decode` to get the same region with and without reduction.
    """
    height, width = image_size(data)
    plan = plan_decode(height, width, box, out_size, is_jpeg=reduce and data[:2] == b"\xff\xd8")
    pixels = decode_full(data, height, width, plan.reduction, fast)
    b = plan.decoded_box
    # torch's uint8 antialiased resize takes its fast (AVX2) kernel only on channels-last-dense input,
    # which a window of the decoded image is not: the crop is copied out whole first, the same pixels
    # either way (docs/loader.md, "Where the CPU goes")
    crop = np.ascontiguousarray(pixels[b.top:b.top + b.height, b.left:b.left + b.width])
    return F.resize(torch.from_numpy(crop).permute(2, 0, 1), list(out_size), antialias=True)


"""What a shard stores for an input image: its own JPEG bytes, or a downscaled re-encode.

Every input is decoded in full here, so a truncated or corrupt file is caught (and listed in the
manifest) when the shards are written, not in the middle of training. This relies on PIL's default
`ImageFile.LOAD_TRUNCATED_IMAGES = False`; nothing in vitc may set it.
"""

import contextlib
import io
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError


class BadInput(Exception):
    """An input that is not a decodable image; `str(e)` is the reason kept in the manifest."""


def shorter_side_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """The (w, h) with the shorter side at `max_side`, or None when no downscale is needed."""
    w, h = size
    if max_side is None or min(w, h) <= max_side:
        return None
    scale = max_side / min(w, h)
    return (max_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), max_side)


def prepare_jpeg(data: bytes, max_side: int | None, quality: int) -> bytes:
    """The JPEG to store: `data` itself when it is a JPEG needing no downscale (never upscaled),
    else RGB re-encoded at `quality` with the shorter side at `max_side`."""
    with image_errors(), Image.open(io.BytesIO(data)) as image:
        target = shorter_side_size(image.size, max_side)
        is_jpeg = image.format == "JPEG"
        if target is not None and is_jpeg:
            # DCT-domain downscale to >= target: decode dominates the cost of a resize.
            image.draft("RGB", target)
        image.load()
        if is_jpeg and target is None:
            return data
        image = image.convert("RGB")
        if target is not None:
            image = image.resize(target, Image.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def check_image(data: bytes) -> None:
    """Raise BadInput unless `data` decodes fully as an image."""
    with image_errors(), Image.open(io.BytesIO(data)) as image:
        image.load()


@contextlib.contextmanager
def image_errors() -> Iterator[None]:
    """PIL's errors on a bad image -> BadInput with the reason a user reads in the manifest."""
    try:
        yield
    except UnidentifiedImageError:
        raise BadInput("not an image (PIL cannot identify the format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadInput(f"corrupt image ({e})") from None

"""Real images that ship inside dependencies, written as ImageFolder trees.

The demo and the tests need real JPEGs without a download: scikit-learn carries 1,797
handwritten digits (10 classes, 8×8) and scikit-image a dozen photographs. Each function writes
`root/<class>/<index>.jpg` and returns `root`.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vitc.fileio import atomic_write_bytes

# scikit-image photographs that ship with the package (no download); one class per photo.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "colorwheel", "camera", "coins", "grass", "gravel", "brick", "clock")


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def digits_imagefolder(root: str | Path, size: int = 32, per_class: int | None = None,
                       quality: int = 95) -> Path:
    """scikit-learn's handwritten digits, upscaled to size×size RGB JPEGs; classes '0'..'9'."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    counts: dict[int, int] = {}
    for pixels, label in zip(digits.images, digits.target):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        index = counts[label] = counts.get(label, 0) + 1
        gray = Image.fromarray(np.uint8(pixels * (255 / 16)), mode="L")
        _save_jpeg(gray.resize((size, size), Image.BICUBIC), root / str(label) / f"{index - 1:05d}.jpg", quality)
    return root


def photo_imagefolder(root: str | Path, classes: int = 4, per_class: int = 8,
                      size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> Path:
    """Random crops (scale, flip) of scikit-image's photos at ImageNet-like size; class = photo."""
    import skimage.data

    if not 1 <= classes <= len(PHOTOS):
        raise ValueError(f"classes must be in 1..{len(PHOTOS)}, got {classes}")
    root, rng = Path(root), np.random.default_rng(seed)
    for name in PHOTOS[:classes]:
        photo = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        w, h = photo.size
        for i in range(per_class):
            scale = rng.uniform(0.5, 1.0)
            cw, ch = int(w * scale), int(h * scale)
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            crop = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            _save_jpeg(crop, root / name / f"{i:05d}.jpg", quality)
    return root

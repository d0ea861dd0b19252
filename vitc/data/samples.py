"""One shard sample as training and `vitc shards verify` both read it: its image and its label.

A sample is webdataset's dict of the tar members that share a key, e.g. {'__key__', 'jpg', 'cls'}.
`vitc shards build` writes `<key>.jpg` and `<key>.cls` (the class index as ASCII digits); shards
from other tools (webdataset's ShardWriter, img2dataset) may hold png/webp images and a `.json`
with the label. The loader and the verifier call these two functions, so a sample that verifies
is a sample that trains with the same label.

Label precedence: `.cls` before `.json`; inside a `.json`, a `cls` field before `label` (the
loader's order, which training has always used: `cls` is the name our writer gives the label). A
label is a class index: ASCII digits (surrounding whitespace allowed) or a JSON integer; a
negative number, a float, a boolean or any other text is a bad sample, never truncated or cast.
"""

import json
import re

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("cls", "json")
JSON_LABEL_FIELDS = ("cls", "label")


class BadSample(ValueError):
    """A sample the loader skips and the verifier reports; `str(e)` says what is wrong with it."""


def sample_image(sample: dict) -> tuple[str, bytes]:
    """(key, encoded bytes) of the sample's image: the first of IMAGE_KEYS it has."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise BadSample(f"no image (expected a .{' or .'.join(IMAGE_KEYS)} file)")
    return key, sample[key]


def sample_label(sample: dict, num_classes: int | None = None) -> tuple[int, str]:
    """(class index, the key it came from), below `num_classes` when that is given."""
    if "cls" in sample:
        key, text = "cls", sample["cls"].decode("utf-8", "replace").strip()
    elif "json" in sample:
        key, text = "json", _json_label(sample["json"])
    else:
        raise BadSample(f"no label (expected a .{' or .'.join(LABEL_KEYS)} file)")
    if not re.fullmatch(r"[0-9]+", text):
        raise BadSample(f"label '{text[:20]}' in .{key} is not a class index (an integer >= 0)")
    label = int(text)
    if num_classes is not None and label >= num_classes:
        raise BadSample(f"label {label} out of range: expected a class index below {num_classes}")
    return label, key


def _json_label(data: bytes) -> str:
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSample(f"label .json is not valid JSON ({e})") from None
    field = next((f for f in JSON_LABEL_FIELDS if isinstance(meta, dict) and f in meta), None)
    if field is None:
        raise BadSample(f"no label: the .json has no {' or '.join(JSON_LABEL_FIELDS)} field")
    value = meta[field]
    if isinstance(value, str):
        return value.strip()
    # bool is an int in Python; true/false is not a class index
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


# JPEG start-of-frame markers nvJPEG decodes: baseline, extended sequential and progressive Huffman
# (ITU T.81 table B.1); the rest are lossless, hierarchical or arithmetic-coded.
GPU_FRAMES = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}


def gpu_decode_refusal(data: bytes) -> str | None:
    """Why nvJPEG (`data.decode_device: cuda`) cannot take this image, or None when it can: a
    baseline or progressive Huffman JPEG in YCbCr or grayscale. Read from the markers alone (a
    structural check: the loader decodes such a sample on the CPU instead)."""
    if data[:2] != b"\xff\xd8":
        return "not a JPEG (PNG, WebP, ...)"
    i, adobe_transform = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return "damaged JPEG marker segment"
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xEE and data[i + 4:i + 9] == b"Adobe" and length >= 12:
            adobe_transform = data[i + 15]  # 0: RGB or CMYK as stored, 1: YCbCr, 2: YCCK
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return _frame_refusal(marker, data[i + 9] if i + 9 < len(data) else 0, adobe_transform)
        i += 2 + length
    return "no JPEG frame header"


def _frame_refusal(marker: int, components: int, adobe_transform: int | None) -> str | None:
    if marker not in GPU_FRAMES:
        return f"JPEG coding SOF{marker - 0xC0} (lossless, hierarchical or arithmetic)"
    if components == 4:
        return "CMYK/YCCK JPEG (4 components)"
    if components not in (1, 3):
        return f"JPEG with {components} components"
    if components == 3 and adobe_transform == 0:
        return "RGB-coded JPEG (Adobe transform 0, not YCbCr)"
    return None

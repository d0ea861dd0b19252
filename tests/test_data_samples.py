"""One sample format: `vitc shards verify` passes exactly the samples training reads, with the same labels."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from loaders import eval_loader
from PIL import Image

from vitc.config import load_config
from vitc.data.samples import BadSample, sample_label
from vitc.data.shards.manifest import Manifest, ShardRecord
from vitc.data.shards.verify import scan_shard
from vitc.distributed.env import DistEnv

NUM_CLASSES = 10

# Every label form a shard may carry: (files of the sample besides its image, label or None if bad).
# Where two labels compete, the losing one is beyond the classes: a reader that picked it would
# call the sample bad, so a different precedence in verify shows as a disagreement.
LABEL_FORMS = {
    "cls": ({"cls": b"1"}, 1),
    "cls_padded": ({"cls": b" 2\n"}, 2),
    "json_cls": ({"json": {"cls": 3}}, 3),
    "json_label": ({"json": {"label": 4}}, 4),
    "json_both": ({"json": {"cls": 5, "label": NUM_CLASSES + 2}}, 5),  # cls wins inside a .json
    "cls_and_json": ({"cls": b"6", "json": {"cls": NUM_CLASSES + 5}}, 6),  # .cls wins over .json
    "json_digit_text": ({"json": {"label": "7"}}, 7),
    "cls_negative": ({"cls": b"-1"}, None),
    "cls_word": ({"cls": b"cat"}, None),
    "cls_plus": ({"cls": b"+3"}, None),
    "cls_beyond_classes": ({"cls": str(NUM_CLASSES).encode()}, None),
    "json_float": ({"json": {"label": 3.0}}, None),
    "json_fraction": ({"json": {"cls": 3.7}}, None),
    "json_bool": ({"json": {"cls": True}}, None),
    "json_null_cls_beats_label": ({"json": {"cls": None, "label": 2}}, None),
    "json_no_field": ({"json": {"name": "n01440764"}}, None),
    "json_list": ({"json": [3]}, None),
    "json_broken": ({"json": b"{not json"}, None),
    "no_label": ({}, None),
}


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def write_label_forms(root):
    """One shard holding a sample of every label form, and a manifest that counts them all (so the
    loader's bad-sample budget, a fraction of that count, lets every bad one be skipped)."""
    root.mkdir()
    path = root / "val-000000.tar"
    with wds.TarWriter(str(path)) as writer:
        for i, (key, (files, _)) in enumerate(LABEL_FORMS.items()):
            sample = {"__key__": key, "jpg": jpeg(i)}
            for ext, value in files.items():
                sample[ext] = json.dumps(value).encode() if isinstance(value, (dict, list)) else value
            writer.write(sample)
    classes = {f"c{i}": i for i in range(NUM_CLASSES)}
    Manifest("val", [ShardRecord.of_file(path, len(LABEL_FORMS))], classes, {"kind": "indexed", "path": "test"}).save(root)
    return root


def test_verify_and_the_loader_agree_on_every_label_form(tmp_path):
    shards = write_label_forms(tmp_path / "shards")
    expected = {key: label for key, (_, label) in LABEL_FORMS.items()}

    scan = scan_shard(shards / "val-000000.tar", decode=True, num_classes=NUM_CLASSES)
    cfg = load_config(None, [f"data.val_shards={shards}", "model.image_size=16", "data.workers=0",
                             f"model.num_classes={NUM_CLASSES}", "data.max_bad_fraction=1"])
    loader = eval_loader(cfg, DistEnv(), batch_size=4)
    loaded = [int(v) for _, labels in loader for v in labels if v >= 0]

    verified_bad = {key for key, _ in scan.bad}
    assert verified_bad == {key for key, label in expected.items() if label is None}
    assert loader.bad_samples == len(verified_bad)
    # labels 1..7 each come from one good form, so the loader's labels name the samples it kept
    assert sorted(loaded) == sorted(label for label in expected.values() if label is not None)


@pytest.mark.parametrize("key", [k for k, (_, label) in LABEL_FORMS.items() if label is None])
def test_a_bad_label_names_what_is_wrong(key):
    files, _ = LABEL_FORMS[key]
    sample = {ext: json.dumps(v).encode() if isinstance(v, (dict, list)) else v for ext, v in files.items()}
    with pytest.raises(BadSample, match=r"label|JSON"):
        sample_label(sample, NUM_CLASSES)

"""Run `vitc train` and write what this rank read for the integrity check and what it resumed from.

Usage (under torchrun or alone): python tests/integrity_probe.py OUT vitc-train-args...
Each rank writes OUT.rankR.json: "crc": every file it CRC-32'd (vitc.checkpoint.integrity.crc32, the
one function that reads a checkpoint file for its checksum), "loaded": the tag it restored.
"""

import json
import os
import sys
from pathlib import Path

from vitc.checkpoint import integrity
from vitc.cli import main
from vitc.engine import trainer

out, train_args = sys.argv[1], sys.argv[2:]
crc_read: list[str] = []
loaded: list[str] = []
crc32, restore = integrity.crc32, trainer.restore


def counted_crc32(path: Path) -> int:
    crc_read.append(str(path))
    return crc32(path)


def recorded_restore(self, point):
    loaded.append(point.tag)
    return restore(self, point)


integrity.crc32, trainer.restore = counted_crc32, recorded_restore
try:
    code = main(["train", *train_args])
finally:
    Path(f"{out}.rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"crc": crc_read, "loaded": loaded}))
sys.exit(code)

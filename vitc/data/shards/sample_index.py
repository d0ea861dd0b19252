"""Where a shard's samples start, so that a reader whose piece begins mid-shard seeks to it.

A rank's window of the data set, dealt to its workers, is cut wherever a batch boundary falls
(vitc.data.loading.epoch_plan): most pieces start inside a shard. A tar stream has no index, so a
reader reaching sample 7,000 of a shard would read and parse the 6,999 before it; at 128 ranks x 8
workers over ImageNet-21k's 10,000-sample shards that is 41 % more bytes read than decoded
(docs/loader.md, "Reading only what a worker decodes"). The manifest records, per shard, where
every INDEX_STRIDE-th sample starts (the byte offset of its first tar header) and its key; a
local shard is then opened at the nearest recorded sample at or before the piece's start.

Samples are counted as webdataset's `group_by_keys` groups tar members (a new key prefix starts a
sample; directories, links and webdataset's `__meta__` files are not samples). Only the headers are
read: tarfile's random-access mode seeks over each member's data.
"""

import re
import tarfile
from pathlib import Path

from webdataset.tariterators import base_plus_ext

INDEX_STRIDE = 256  # samples between index entries: at most 255 samples are read and skipped per piece
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these names


def sample_index(path: str | Path, samples: int, stride: int = INDEX_STRIDE) -> list[list]:
    """[[sample number, byte offset of its first header, key], ...] for samples stride, 2 x stride, ...
    of the tar at `path`; empty when the tar's grouping does not give `samples` samples (an index
    that might point elsewhere is not written: readers then read from the start)."""
    entries, count, key = [], 0, None
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg() or _META.match(info.name):
                    continue
                prefix, _ = base_plus_ext(info.name)
                if prefix is None or prefix == key:
                    continue
                if count and count % stride == 0:
                    entries.append([count, info.offset, prefix])
                key, count = prefix, count + 1
    except (tarfile.TarError, OSError):
        return []
    return entries if count == samples else []

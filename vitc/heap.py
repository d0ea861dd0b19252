"""Keep freed memory in this process's heap instead of handing it back to the kernel (glibc only).

A CPU training step allocates and frees the same large tensors again and again: float batches of
19 MB at 32 x 224 px, MixUp's rolled copy, activations. glibc serves blocks above its mmap
threshold with a fresh mmap and unmaps them on free, and trims the heap top above its trim
threshold, so every such tensor is page-faulted in anew (the cost, with and without:
docs/loader.md, "Where the CPU goes"). PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc
for this; nothing in torch or Python sets glibc's own knobs, hence `mallopt` through ctypes. The
cost: the process keeps its peak heap mapped rather than returning it between steps.

Left alone when the user has tuned malloc already (MALLOC_*_ env variables, or another allocator
preloaded) and off glibc.
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept
_done = False


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are set now or were."""
    global _done
    if _done:
        return True
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or os.environ.get("LD_PRELOAD"):
        return False  # the user's own malloc tuning or allocator wins
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc's; musl and others have different knobs  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return False
    _done = bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    log.debug("glibc malloc: mmap and trim thresholds %s", "set to 1 GiB" if _done else "refused")
    return _done

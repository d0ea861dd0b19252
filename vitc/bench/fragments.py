"""Hold the machine's fragmented free memory while contenders run, so that every contender's memory
comes from the same kind of free blocks.

Linux serves a page fault from the smallest free block it has (the buddy allocator's
`__rmqueue_smallest`): a process that allocates first gets the scattered pages that small free
blocks hold, a later one pages split off large blocks. On this 2-core Firecracker VM that alone
made six identical training loops, each in its own process, run at 14.2, 16.0, 18.3, 20.1, 22.0
and 23.0 images/s in the order they were started (+62 %); with the free blocks under 2 MiB held
by the parent first, at 23.5-24.2 (+2.9 %, no order) (`tools/bench_noise.py --loops 6 --iters 3
--rounds 4`, docs/engine.md). Whichever contender a bench starts first would pay that, so the
parent takes those blocks before every group of contenders and keeps them until the bench ends.

Nothing in torch or the standard library does this. The free lists are read from /proc/buddyinfo
(Linux; elsewhere nothing is held); never more than half of MemAvailable is held.
"""

import logging
import mmap
import os
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK = 2 << 20  # free blocks below this (the huge-page / pageblock size) count as fragments
BUDDYINFO, MEMINFO = Path("/proc/buddyinfo"), Path("/proc/meminfo")


def fragmented_free_bytes(buddyinfo: str) -> int:
    """Bytes of free memory in blocks smaller than BLOCK, from /proc/buddyinfo's text
    ("Node 0, zone Normal <free blocks of order 0> <order 1> ...")."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for line in buddyinfo.splitlines():
        counts = line.split()[4:]
        total += sum(int(n) * (page << order) for order, n in enumerate(counts) if page << order < BLOCK)
    return total


def _available_bytes() -> int:
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class FragmentHold:
    """Context manager; `take()` holds (writes) as much memory as the free fragments hold now."""

    def __init__(self):
        self.maps: list[mmap.mmap] = []
        self.held = 0

    def take(self) -> int:
        """Hold the current fragments; returns the bytes newly held (0 off Linux)."""
        try:
            fragments = fragmented_free_bytes(BUDDYINFO.read_text())
            want = min(fragments, _available_bytes() // 2)
        except OSError:
            return 0
        page = mmap.PAGESIZE
        want -= want % page
        if want <= 0:
            return 0
        block = mmap.mmap(-1, want, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, want, page):  # a write per page: each page faulted in, now
            block[offset] = 1
        self.maps.append(block)
        self.held += want
        log.info("holding %.2f GiB of fragmented free memory (blocks under %d MiB) so every contender's "
                 "memory comes from the same kind of free blocks", self.held / 2**30, BLOCK >> 20)
        if want < fragments:
            log.warning("%.2f GiB of fragmented free memory left unheld (at most half of the available memory "
                        "is held): the first contenders started may be slower for it", (fragments - want) / 2**30)
        return want

    def __enter__(self) -> "FragmentHold":
        return self

    def __exit__(self, *exc) -> None:
        for block in self.maps:
            block.close()
        self.maps.clear()

"""Shared-memory batch buffers that loader workers fill and the training process reads, reused.

DataLoader sends each batch a worker makes through a fresh shared-memory segment: created and
faulted in page by page in the worker, mapped and faulted in again in the training process, then
unmapped (its cost: docs/loader.md, "Where the CPU goes"). Here each worker owns a few fixed
buffers, made before the workers fork and faulted in once; a batch travels as the index of the
buffer holding it. torch and DataLoader have no such reusable channel, hence this module.

Ownership: `owner[w, k]` is the pass (generation) whose batch fills worker w's buffer k, 0 when
free. A worker writes only into a buffer that is free or holds a batch of an earlier pass (batches
of an abandoned pass are dropped unread); the training process frees a buffer once it has made its
own copy (the float batch). DataLoader delivers batches in task order, so a worker never waits on a
buffer the training process can only free after a batch from that same worker: no deadlock.
"""

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from vitc.errors import VitcError

log = logging.getLogger(__name__)
PER_WORKER = 4  # DataLoader's prefetch_factor (2) + the batch being finished + one spare


def pack(images: list[torch.Tensor], out: torch.Tensor) -> None:
    """Copy uint8 [3, S, S] CPU images into the first len(images) of `out` [N, 3, S, S].

    By numpy: a resized image is a channels-last view (torch's fast uint8 resize keeps its input's
    layout), and numpy's transposing copy of one is twice as fast as torch.stack's, 0.05 against
    0.10 ms per 224 px image (docs/loader.md, "Where the CPU goes now")."""
    batch = out.numpy()
    for i, image in enumerate(images):
        np.copyto(batch[i], image.numpy())


@dataclass(frozen=True)
class SlotRef:
    """Where a worker left a batch: its buffer index and how many images it holds."""

    slot: int
    count: int


class BatchSlots:
    """uint8 buffers [workers, PER_WORKER, batch, 3, size, size] in shared memory, with their owners."""

    def __init__(self, workers: int, batch: int, size: int):
        shape = (workers, PER_WORKER, batch, 3, size, size)
        try:
            self.images = torch.empty(shape, dtype=torch.uint8).share_memory_()
        except RuntimeError as e:  # /dev/shm too small (a container's default is 64 MB)
            raise VitcError(f"loader: cannot place {math.prod(shape) / 2**20:.0f} MB of batch buffers "
                            f"({workers} data.workers x {PER_WORKER} x batch {batch} x 3 x {size}^2) in shared "
                            f"memory: {e}. Give /dev/shm more room (docker --shm-size), or lower data.workers "
                            f"or train.micro_batch") from None
        self.owner = torch.zeros((workers, PER_WORKER), dtype=torch.int64).share_memory_()
        self._parent = os.getpid()  # the training process; a worker whose parent is gone stops waiting
        self._next = 0  # a worker's round-robin start (each worker has its own copy)
        log.info("loader: %d shared batch buffers of %.1f MB", workers * PER_WORKER,
                 self.images[0, 0].numel() / 2**20)

    def fill(self, worker: int, generation: int, images: list[torch.Tensor]) -> SlotRef:
        """In a worker: stack `images` into a buffer of this worker's that is free for this pass."""
        k = self._acquire(worker, generation)
        pack(images, self.images[worker, k])
        self.owner[worker, k] = generation
        return SlotRef(k, len(images))

    def _acquire(self, worker: int, generation: int) -> int:
        delay = 1e-4
        while True:
            owners = self.owner[worker].tolist()
            for i in range(PER_WORKER):
                k = (self._next + i) % PER_WORKER
                if owners[k] != generation:
                    self._next = k + 1
                    return k
            # all four hold batches the training process has not taken yet: it is busy (a step, a
            # checkpoint), so wait as long as it lives
            if os.getppid() != self._parent:
                raise VitcError("the training process is gone; loader worker stopping")
            time.sleep(delay)
            delay = min(2 * delay, 0.01)

    def take(self, worker: int, ref: SlotRef) -> torch.Tensor:
        """In the training process: the batch, a view valid until `release`."""
        return self.images[worker, ref.slot, : ref.count]

    def release(self, worker: int, ref: SlotRef) -> None:
        self.owner[worker, ref.slot] = 0

"""What runs inside one DataLoader worker: its pieces of shards -> shuffled samples -> decoded batches.

A worker reads the pieces (sample ranges of shards) its `WorkerPlan` names, shuffles with
webdataset's buffer (seeded by the plan), skips the batches a resumed run already consumed, decodes
and augments each sample (its draws seeded by its identity: vitc.data.loading.draws), skips
and counts bad ones, and yields exactly `plan.quota` batches. A worker that comes up short because
samples were bad makes a second pass over its pieces (logged: those samples repeat) rather than
leave its rank with fewer batches than the others. Errors travel to the main process as `Failure`
items so the message arrives intact, naming the shard.
"""

import collections
import contextlib
import functools
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from vitc.data.loading.decode import UndecodableImage
from vitc.data.loading.draws import sample_seed
from vitc.data.loading.epoch_plan import Piece, WorkerPlan
from vitc.data.loading.slots import BatchSlots
from vitc.data.loading.streams import shard_samples
from vitc.data.samples import BadSample, sample_image, sample_label
from vitc.errors import VitcError

log = logging.getLogger(__name__)

PUBLISH_POLL_S = 0.01  # how often a worker started early looks for the first pass


@dataclass(frozen=True)
class Failure:
    """A worker's VitcError, carried to the main process as data."""

    message: str


class BatchStream(IterableDataset):
    """Batches for one rank, one `WorkerPlan` per DataLoader worker (or one in-process stream).

    The plans come from `planner` (see vitc.data.loading.epoch_plan) for the pass `start_pass` published.
    Each item is (payload, worker index, bad samples so far in this worker). The payload is
    (uint8 images [B,3,S,S], int64 labels, int64 sample seeds), or — when `decode_in_worker` is false
    (nvJPEG decode on the GPU in the main process) — (JPEG bytes, crop boxes, labels, sample seeds).
    The main process finishes the
    batch (normalize, erase, mix): a uint8 batch crosses to it through shared memory at a quarter of
    a float batch's bytes, and that copy was the largest per-image cost in the workers (docs/loader.md).
    """

    def __init__(self, planner, workers: int, batch: int, num_classes: int, sample_transform,
                 decode_in_worker: bool, shuffle_buffer: int, resampled: bool,
                 max_bad_fraction: float, read_timeout_s: float):
        self.planner, self.batch, self.num_classes = planner, batch, num_classes
        self.sample_transform = sample_transform
        self.decode_in_worker, self.shuffle_buffer, self.resampled = decode_in_worker, shuffle_buffer, resampled
        self.max_bad_fraction, self.timeout = max_bad_fraction, read_timeout_s
        self.bad = 0
        # The pass to run: [generation (counts passes), epoch, resume fraction (NaN: use the counts),
        # batches consumed per worker]. Written by the main process before each pass, read by each
        # worker as the pass starts: workers forked once (persistent) learn the new epoch through this
        # shared memory, not through a copy.
        self._position = torch.zeros(3 + max(1, workers), dtype=torch.float64).share_memory_()
        self.slots: BatchSlots | None = None  # see use_slots

    def use_slots(self, workers: int, image_size: int) -> None:
        """Send uint8 batches through reused shared buffers (vitc.data.loading.slots). Before workers fork."""
        if self.slots is None and self.decode_in_worker and workers > 0:
            self.slots = BatchSlots(workers, self.batch, image_size)

    def start_pass(self, epoch: int, consumed: list[int] | None, fraction: float = 0.0) -> list[WorkerPlan]:
        """Publish the next pass to the workers: skip `consumed` batches per worker, or when that is None
        (a different layout) `fraction` of every quota. Returns the plans the workers will compute."""
        self._position[0] += 1
        self._position[1] = epoch
        if consumed is None:
            self._position[2] = fraction
        else:
            self._position[2] = math.nan
            self._position[3:] = torch.tensor(consumed, dtype=torch.float64)
        return self.plans()

    def release_waiting(self) -> None:
        """Let workers waiting for a first pass that never came end their iteration, so that
        DataLoader's shutdown reaches them (they ignore SIGTERM, which is how it would stop them)."""
        if self._position[0] == 0:
            self._position[0] = -1

    def plans(self) -> list[WorkerPlan]:
        _, epoch, fraction, *consumed = self._position.tolist()
        if math.isnan(fraction):
            return self.planner.plans(int(epoch), [int(c) for c in consumed], 0.0)
        return self.planner.plans(int(epoch), None, fraction)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        while self._position[0] == 0:  # started before any pass was published (start_workers)
            time.sleep(PUBLISH_POLL_S)
        if self._position[0] < 0:  # the loader closed before its first pass: nothing to do
            return
        plan = self.plans()[worker]
        self.bad = 0
        slots = self.slots if info is not None else None  # in this process, batches need no transport
        try:
            yield from self._batches(worker, plan, slots, int(self._position[0]))
        except VitcError as e:
            yield Failure(str(e))

    def _batches(self, worker: int, plan: WorkerPlan, slots: BatchSlots | None, generation: int):
        items = self._good_samples(worker, plan)
        produced = plan.skip
        while plan.quota is None or produced < plan.quota:
            chunk = list(itertools.islice(items, self.batch))
            if not chunk:
                break
            labels = torch.tensor([c[-1] for c in chunk], dtype=torch.int64)
            seeds = torch.tensor([c[-2] for c in chunk], dtype=torch.int64)
            if not self.decode_in_worker:
                payload = [c[0] for c in chunk], [c[1] for c in chunk], labels, seeds
            elif slots is not None:
                payload = slots.fill(worker, generation, [c[0] for c in chunk]), labels, seeds
            else:  # stacked into a new shared-memory segment when in a worker
                payload = default_collate([c[0] for c in chunk]), labels, seeds
            yield payload, worker, self.bad
            produced += 1
        items.close()  # stops reading the current shard (and kills its `pipe:` command)

    def _good_samples(self, worker: int, plan: WorkerPlan) -> Iterator[tuple]:
        budget = self.max_bad_fraction * (plan.quota * self.batch if self.resampled else plan.samples)
        opened: collections.Counter = collections.Counter()  # per piece: its repeats draw anew
        known_bad: set[tuple[str, str]] = set()  # skipped again, uncounted, by a second pass
        for repeat in itertools.count():
            stream = worker_order(plan, functools.partial(self._open, opened=opened), self.shuffle_buffer,
                                  self.resampled)
            if repeat == 0 and plan.skip:  # resumed: these were consumed before the checkpoint
                stream = itertools.islice(stream, plan.skip * self.batch, None)
            good = 0
            for sample in stream:
                identity = sample.get("__url__"), sample.get("__key__")
                item = None if identity in known_bad else self._decode(sample, budget, plan)
                if item is None:
                    known_bad.add(identity)
                    continue
                good += 1
                yield item
            if plan.quota is None or self.resampled:
                return
            if good == 0:
                raise VitcError(f"no decodable sample in shards {plan.shard_names}")
            log.warning("worker %d: %d bad samples left it short of %d batches: reading its samples again "
                        "(some samples repeat this epoch)", worker, self.bad, plan.quota)

    def _open(self, piece: Piece, opened: collections.Counter) -> Iterator[dict]:
        """The piece's samples (a local shard with a sample index is opened near the piece's start;
        otherwise those before it are read, not decoded), each tagged with how often this worker
        opened the piece before."""
        times = opened[piece]
        opened[piece] += 1
        with contextlib.closing(shard_samples(piece.shard, self.timeout, piece.start)) as samples:  # stops its reader
            for sample in itertools.islice(samples, piece.samples):
                sample["__opened__"] = times
                yield sample

    def _decode(self, sample: dict, budget: float, plan: WorkerPlan) -> tuple | None:
        try:
            _, data = sample_image(sample)
            label, _ = sample_label(sample, self.num_classes)
            seed = sample_seed(plan.epoch_seed, sample["__url__"], sample["__key__"], sample["__opened__"])
            if not self.decode_in_worker:
                return data, self.sample_transform.plan(data, seed), seed, label
            return self.sample_transform(data, seed), seed, label
        except (BadSample, UndecodableImage) as e:
            self.bad += 1
            where = f"shard {sample.get('__url__')}: sample '{sample.get('__key__')}'"
            if self.bad > budget:
                raise VitcError(f"{where}: {e}; {self.bad} bad samples exceed data.max_bad_fraction="
                                f"{self.max_bad_fraction:g} of this worker's {plan.samples} samples "
                                f"(check the shards with `vitc shards verify`)") from None
            log.warning("skipped %s: %s", where, e)
            return None



def worker_order(plan: WorkerPlan, open_piece: Callable[[Piece], Iterator], shuffle_buffer: int,
                 resampled: bool) -> Iterator:
    """The samples of `plan` in the order its worker takes them: its pieces in turn (resampled: drawn
    with replacement, forever), through webdataset's shuffle buffer seeded by the plan.

    The order depends on the plan and the number of samples only, not on their content, so
    vitc.data.ledger replays it with `open_piece` giving sample positions instead of reading tars.
    """
    rng = random.Random(plan.seed)

    def pieces() -> Iterator:
        if resampled:
            while True:
                yield from open_piece(rng.choice(plan.pieces))
        for piece in plan.pieces:
            yield from open_piece(piece)

    stream = pieces()
    if shuffle_buffer > 1:
        stream = wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng)(stream)
    return stream

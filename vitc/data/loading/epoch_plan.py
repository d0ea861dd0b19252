"""Who reads which samples, and how many batches each rank yields: pure functions of the manifest.

Every rank computes the same plan from the manifest's per-shard counts, so all ranks agree on the
number of batches per epoch without talking to each other (unequal counts hang the collectives).
webdataset's `split_by_node`/`split_by_worker` deal whole shards round-robin, which can neither make
sample counts equal when shard sizes differ nor keep a worker busy when a rank holds fewer shards
than workers. Here the unit is a `Piece`, a range of one shard's samples in tar order: the data set
is one cycle of samples (its shards in an order fixed by data.seed), every rank reads an equal
window of it and every worker an equal run of its rank's window, cut wherever a batch boundary falls.

The remainder, the `N mod (ranks x batch)` samples that do not fill a batch on every rank, is not
dropped: epoch e reads the cycle from position `e x M` on (M = the samples an epoch reads), so the
samples left after one epoch's window are the first ones the next epoch reads. Each sample is left
out of at most one epoch in a row, and no sample is read twice within an epoch.
"""

import bisect
import functools
import itertools
import random
from dataclasses import dataclass

from vitc.data.shards.manifest import Shard


@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of a shard, counted in its tar order."""

    shard: Shard
    start: int
    stop: int

    @classmethod
    def whole(cls, shard: Shard) -> "Piece":
        return cls(shard, 0, shard.samples)

    @property
    def samples(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    """One DataLoader worker's share of an epoch on one rank."""

    pieces: tuple[Piece, ...]
    quota: int | None  # batches to yield; None = all its samples (eval, last batch partial)
    skip: int = 0  # batches already consumed before a resume
    seed: str = ""  # seeds this worker's shuffle buffer (and, resampled, its draws of shards)
    epoch_seed: str = ""  # with each sample's identity, seeds its augmentation (vitc.data.loading.draws)

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.pieces)

    @property
    def shard_names(self) -> str:
        return ", ".join(dict.fromkeys(p.shard.name for p in self.pieces))


@dataclass(frozen=True)
class EpochPlanner:
    """One rank's train plans for any epoch and resume position: the same answer in every process.

    The loader's persistent workers each call it at the start of a pass with the position the main
    process published, so no plan has to travel to them.
    """

    shards: tuple[Shard, ...]  # every train shard
    workers: int
    batch: int
    batches: int  # per rank per epoch (len of the loader)
    data_seed: int
    rank: int
    world_size: int = 1
    resampled: bool = False

    def plans(self, epoch: int, consumed: list[int] | None, fraction: float) -> list[WorkerPlan]:
        """Worker plans for `epoch`, skipping `consumed` batches per worker (None: `fraction` of each quota)."""
        seed = f"{self.data_seed}/{epoch}/{self.rank}"
        quotas = even_quotas(self.batches, self.workers)
        if self.resampled:  # every worker draws from every shard, with replacement
            deal = [tuple(Piece.whole(s) for s in self.shards)] * self.workers
        else:
            window = rank_window(self.shards, self.data_seed, epoch, self.rank, self.world_size,
                                 self.batches * self.batch)
            deal = deal_to_workers(window, [q * self.batch for q in quotas], random.Random(seed))
        skips = skips_after(consumed, quotas, fraction)
        epoch_seed = f"{self.data_seed}/{epoch}"
        return [WorkerPlan(deal[w], quotas[w], skips[w], f"{seed}/{w}", epoch_seed) for w in range(self.workers)]


@dataclass(frozen=True)
class FixedPlans:
    """Plans that do not change between passes (eval)."""

    fixed: tuple[WorkerPlan, ...]

    def plans(self, epoch: int, consumed: list[int] | None, fraction: float) -> list[WorkerPlan]:
        return list(self.fixed)


def train_batches_per_rank(samples: int, batch: int, world_size: int) -> int:
    """Full batches every rank yields in every epoch: the data set split evenly, whatever the shards."""
    return samples // (batch * world_size)


@functools.lru_cache(maxsize=4)
def cycle(shards: tuple[Shard, ...], data_seed: int) -> tuple[tuple[Shard, ...], tuple[int, ...]]:
    """The shards in the order the epochs walk through them, with each one's first position: by name,
    then shuffled once per run, so that a rank's window mixes shards written apart (a shard directory
    may be written class by class)."""
    order = sorted(shards, key=lambda s: s.name)
    random.Random(f"{data_seed}/cycle").shuffle(order)
    return tuple(order), tuple(itertools.accumulate((s.samples for s in order), initial=0))


def rank_window(shards: tuple[Shard, ...], data_seed: int, epoch: int, rank: int, world_size: int,
                length: int) -> list[Piece]:
    """The `length` samples rank `rank` reads in `epoch`: its window of the cycle, which starts where the
    previous epoch's reading stopped (the remainder comes first in the next epoch)."""
    order, starts = cycle(shards, data_seed)
    position = (epoch * world_size * length + rank * length) % starts[-1]
    out, i = [], bisect.bisect_right(starts, position) - 1
    while length:  # the window's pieces, wrapping around the end of the cycle
        offset = position - starts[i]
        take = min(order[i].samples - offset, length)
        if take:
            out.append(Piece(order[i], offset, offset + take))
        length -= take
        position, i = (starts[i + 1], i + 1) if i + 1 < len(order) else (0, 0)
    return out


def deal_to_workers(window: list[Piece], sizes: list[int], rng: random.Random) -> list[tuple[Piece, ...]]:
    """A rank's window over its workers, `sizes[w]` samples each: pieces shuffled, the run rotated by a
    random offset (so the cuts, and which samples share a worker, move every epoch), then cut in turn."""
    pieces = list(window)
    rng.shuffle(pieces)
    total = sum(p.samples for p in pieces)
    if total:
        head, tail = _cut(pieces, [rng.randrange(total), total])
        pieces = tail + head
    return [tuple(run) for run in _cut(pieces, sizes)]


def _cut(pieces: list[Piece], sizes: list[int]) -> list[list[Piece]]:
    """Consecutive runs of `sizes[i]` samples from `pieces`, splitting a piece where a run ends."""
    out, queue = [], list(reversed(pieces))
    for size in sizes:
        run = []
        while size and queue:
            piece = queue.pop()
            take = min(piece.samples, size)
            run.append(Piece(piece.shard, piece.start, piece.start + take))
            if take < piece.samples:
                queue.append(Piece(piece.shard, piece.start + take, piece.stop))
            size -= take
        out.append(run)
    return out


def eval_deal(shards: list[Shard], world_size: int, workers: int) -> list[list[tuple[Piece, ...]]]:
    """Every sample once: the shards (by name) split into `world_size` near-equal runs, each into
    `workers` near-equal runs, so every worker reads even when there are fewer shards than workers."""
    order = sorted(shards, key=lambda s: s.name)
    pieces = [Piece.whole(s) for s in order]
    ranks = _cut(pieces, even_quotas(sum(s.samples for s in order), world_size))
    return [[tuple(run) for run in _cut(r, even_quotas(sum(p.samples for p in r), workers))] for r in ranks]


def even_quotas(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one, the larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def delivery_order(quotas: list[int], skips: list[int]) -> list[int]:
    """The worker of each batch of an epoch in the order a whole pass delivers them (DataLoader takes
    its workers round-robin; one that has yielded its quota drops out), less each worker's first
    `skips[w]` batches (consumed before a resume)."""
    order, left = [], list(skips)
    for r in range(max(quotas, default=0)):
        for w, quota in enumerate(quotas):
            if r < quota and left[w]:
                left[w] -= 1
            elif r < quota:
                order.append(w)
    return order


def loader_position(state: dict, world_size: int, workers: int, batch: int,
                 batches: int) -> tuple[list[int] | None, float | None]:
    """Where a saved loader state continues on this layout: (batches each worker consumed, None) when
    ranks, workers and batch match; else (None, the fraction of the epoch consumed), since per-worker
    positions do not map onto another split."""
    if all(state.get(k) == v for k, v in (("world_size", world_size), ("workers", workers), ("batch", batch))):
        return list(state["worker_batches"]), None
    return None, min(1.0, state["batches_consumed"] / max(1, state.get("batches_per_epoch", batches)))


def skips_after(consumed: list[int] | None, quotas: list[int], fraction: float) -> list[int]:
    """Batches each worker skips on resume: exact per-worker counts when the layout is unchanged,
    else the same fraction of every worker's quota."""
    if consumed is not None and len(consumed) == len(quotas):
        return [min(c, q) for c, q in zip(consumed, quotas)]
    return [int(q * fraction) for q in quotas]

"""Who reads which shard, and how many batches each rank yields: pure functions of the manifest.

Every rank computes the same plan from the manifest's per-shard counts, so all ranks agree on the
number of batches per epoch without talking to each other (unequal counts hang the collectives).
webdataset's `split_by_node`/`split_by_worker` deal shards round-robin, which cannot make
sample counts equal when shard sizes differ; this module balances them and states the remainder.
"""

import random
from dataclasses import dataclass

from vitc.data.shards.manifest import Shard


@dataclass(frozen=True)
class WorkerPlan:
    """One DataLoader worker's share of an epoch on one rank."""

    shards: tuple[Shard, ...]
    quota: int | None  # batches to yield; None = all its samples (eval, last batch partial)
    skip: int = 0  # batches already consumed before a resume
    seed: str = ""  # seeds this worker's shard order and shuffle buffer
    epoch_seed: str = ""  # with each sample's identity, seeds its augmentation (vitc.data.loading.draws)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass(frozen=True)
class EpochPlanner:
    """One rank's train plans for any epoch and resume position: the same answer in every process.

    The loader's persistent workers each call it at the start of a pass with the position the main
    process published, so no plan has to travel to them.
    """

    shards: tuple[Shard, ...]  # this rank's shards; all shards when resampled
    workers: int
    batch: int
    batches: int  # per rank per epoch (len of the loader)
    data_seed: int
    rank: int
    resampled: bool = False

    def plans(self, epoch: int, consumed: list[int] | None, fraction: float) -> list[WorkerPlan]:
        """Worker plans for `epoch`, skipping `consumed` batches per worker (None: `fraction` of each quota)."""
        seed = f"{self.data_seed}/{epoch}/{self.rank}"
        if self.resampled:
            deal = [self.shards] * self.workers
            quotas = even_quotas(self.batches, self.workers)
        else:
            deal = [tuple(s) for s in assign_to_workers(list(self.shards), self.workers, seed)]
            quotas = worker_quotas([sum(s.samples for s in w) for w in deal], self.batch, self.batches)
        skips = skips_after(consumed, quotas, fraction)
        epoch_seed = f"{self.data_seed}/{epoch}"
        return [WorkerPlan(deal[w], quotas[w], skips[w], f"{seed}/{w}", epoch_seed) for w in range(self.workers)]


@dataclass(frozen=True)
class FixedPlans:
    """Plans that do not change between passes (eval)."""

    fixed: tuple[WorkerPlan, ...]

    def plans(self, epoch: int, consumed: list[int] | None, fraction: float) -> list[WorkerPlan]:
        return list(self.fixed)


def _greedy(shards: list[Shard], bins: int) -> list[list[Shard]]:
    """Each shard, in the given order, to the bin with the fewest samples (ties: lowest index)."""
    out: list[list[Shard]] = [[] for _ in range(bins)]
    loads = [0] * bins
    for shard in shards:
        i = min(range(bins), key=lambda b: (loads[b], b))
        out[i].append(shard)
        loads[i] += shard.samples
    return out


def assign_to_ranks(shards: list[Shard], world_size: int) -> list[list[Shard]]:
    """Largest shard first to the least-loaded rank: fixed for the whole run, so len() is too."""
    return _greedy(sorted(shards, key=lambda s: (-s.samples, s.name)), world_size)


def assign_to_workers(shards: list[Shard], workers: int, seed: str | None) -> list[list[Shard]]:
    """A rank's shards over its workers; with a seed, the deal changes every epoch."""
    order = sorted(shards, key=lambda s: (-s.samples, s.name))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return _greedy(order, workers)


def train_batches_per_rank(rank_shards: list[list[Shard]], batch: int, workers: int) -> int:
    """Full batches every rank can yield in any epoch: the minimum over ranks.

    Each worker batches its own samples and drops its partial batch, so a rank loses fewer than
    `workers` batches to that whatever the per-epoch deal: floor(n / batch) - (workers - 1) is safe.
    """
    return min(max(0, sum(s.samples for s in shards) // batch - (workers - 1)) for shards in rank_shards)


def worker_quotas(counts: list[int], batch: int, total: int) -> list[int]:
    """Split `total` batches over workers holding `counts` samples: no worker asked beyond its data."""
    quotas = [c // batch for c in counts]
    for _ in range(sum(quotas) - total):  # trim the largest first, so the deal stays even
        i = max(range(len(quotas)), key=lambda w: (quotas[w], -w))
        quotas[i] -= 1
    return quotas


def even_quotas(total: int, workers: int) -> list[int]:
    return [total // workers + (w < total % workers) for w in range(workers)]


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


def skips_after(consumed: list[int] | None, quotas: list[int], fraction: float) -> list[int]:
    """Batches each worker skips on resume: exact per-worker counts when the layout is unchanged,
    else the same fraction of every worker's quota."""
    if consumed is not None and len(consumed) == len(quotas):
        return [min(c, q) for c, q in zip(consumed, quotas)]
    return [int(q * fraction) for q in quotas]

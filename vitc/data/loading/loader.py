"""Streaming train/eval loaders over WebDataset shards (docs/loader.md), as the engine calls them.

    loader = build_train_loader(cfg, run, dist)   # run = vitc.run.resolve_run(...): run.micro_batch per rank
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)
        for images, targets in loader: ...                # len(loader) batches on every rank
    state = loader.state_dict()                           # into the checkpoint; load_state_dict resumes

Train: every rank reads an equal window of the data set and every worker an equal run of it, cut
across shards by sample ranges (vitc.data.loading.epoch_plan); every rank yields exactly `len(loader)`
full batches, computed from the manifest alone; the samples that do not fill a batch on every rank
(`remainder`, logged) are read first by the next epoch. Order is a function of
(data.seed, epoch, rank, worker): the pieces dealt to a worker, then webdataset's shuffle buffer.
`data.resampled: true` draws shards with replacement instead (len = num_samples / global batch).
Targets are float [B, num_classes] (MixUp/CutMix, label smoothing) when those are on, else int64.

Eval: every sample exactly once across ranks, in order. Ranks yield the same number of batches
(ZeRO-3 forwards are collectives); a rank that runs out first yields padding batches of one zero
image with label -1, which metrics must not count (`labels >= 0`).

Bad samples (undecodable image, missing or out-of-range label) are skipped and counted per rank
(`bad_samples`); more than data.max_bad_fraction of a worker's samples stops the run with a
VitcError naming the shard. A shard that cannot be opened or stalls for data.read_timeout_s raises
a VitcError naming it.
"""

import atexit
import collections
import functools
import gc
import logging
import math
import multiprocessing
import multiprocessing.util  # its exit handler is registered first, so it runs after ours (below)
import os
import weakref

import torch
from torch.utils.data import DataLoader

from vitc.data.loading.draws import batch_seed
from vitc.data.loading.epoch_plan import (
    EpochPlanner,
    FixedPlans,
    WorkerPlan,
    delivery_order,
    eval_deal,
    loader_position,
    train_batches_per_rank,
)
from vitc.data.loading.gpu_decode import GpuDecode
from vitc.data.loading.slots import SlotRef
from vitc.data.loading.transforms import (
    EvalSampleTransform,
    Recipe,
    TrainBatchTransform,
    TrainSampleTransform,
    normalize,
)
from vitc.data.loading.workers import BatchStream, Failure
from vitc.data.processes import follow_parent
from vitc.data.shards.manifest import Shard
from vitc.distributed.env import DistEnv
from vitc.errors import VitcError
from vitc.heap import retain_freed_memory

log = logging.getLogger(__name__)
STATE_VERSION = 1


class _Loader:
    """What train and eval share: the DataLoader over a BatchStream, failures, bad-sample counts."""

    def __init__(self, cfg, dist: DistEnv, batch: int, batch_transform, gpu: GpuDecode | None, on_gpu: bool):
        d = cfg.data
        if batch < 1:
            raise VitcError(f"train.micro_batch must be >= 1, got {batch}")
        if d.workers < 0 or d.shuffle_buffer < 0 or d.read_timeout_s <= 0:
            raise VitcError(f"data.workers and data.shuffle_buffer must be >= 0 and data.read_timeout_s > 0, "
                            f"got {d.workers}, {d.shuffle_buffer}, {d.read_timeout_s}")
        self.cfg, self.dist, self.batch = cfg, dist, batch
        self.batch_transform = batch_transform  # uint8 batch -> float batch + targets, in this process
        self.workers = max(1, d.workers)  # 0 workers = one stream in this process
        on_cuda = on_gpu and torch.cuda.is_available()  # the run's device (vitc.run.Run.on_gpu)
        # select() warns when data.decode_device asks for CUDA and there is none
        self.gpu = gpu or (GpuDecode.select(d.decode_device, cfg.model.image_size, d.fast_jpeg_decode)
                           if on_cuda or not torch.cuda.is_available() else None)
        pin = d.pin_memory if d.pin_memory != "auto" else on_cuda
        self._pin = bool(pin) and self.gpu is None
        self.batch_on_cuda = _batch_on_cuda(d.batch_device, self.gpu is not None) and on_cuda
        self._bad = [0] * self.workers
        self.bad_samples_before = 0
        self.stream: BatchStream  # set by the subclass
        self._dataloader: DataLoader | None = None  # built on the first pass; kept with persistent workers
        self._waiting = None  # the iterator of workers started early, for the first pass (start_workers)
        self._pass = None  # a weak reference to the pass being delivered (`_delivered`)

    @property
    def bad_samples(self) -> int:
        """Samples skipped so far on this rank (undecodable, or label missing/out of range)."""
        return self.bad_samples_before + sum(self._bad) + (self.gpu.bad if self.gpu is not None else 0)

    @property
    def gpu_fallbacks(self) -> int:
        """Samples of this run on this rank that the GPU decoder could not take, decoded on the CPU instead."""
        return self.gpu.fallbacks if self.gpu is not None else 0

    def _batches(self, order: list[int] | None = None, first: int = 0, epoch_seed: str = ""):
        """This pass's finished batches, as (worker, batch); the pass is the one `stream.start_pass` set.

        `order`: whose batch comes next, one worker per batch (train: the order a whole pass delivers,
        which a resumed pass, whose DataLoader starts its round-robin at worker 0, must keep);
        `first`: the index in the epoch of the first batch, which with `epoch_seed` seeds its mixing.
        """
        delivered = self._delivered()
        self._pass = weakref.ref(delivered)
        if order is not None:
            delivered = in_worker_order(delivered, order)
        if self.gpu is not None:
            delivered = self.gpu.batches(delivered, self.stream.sample_transform.finish)
        for index, (worker, payload, slot) in enumerate(delivered, first):
            batch = self.batch_transform(*payload, batch_seed(epoch_seed, self.dist.rank, index))
            if slot is not None:  # a new float batch is made: the buffer is free again
                self.stream.slots.release(worker, slot)
            yield worker, batch

    def start_workers(self) -> None:
        """Fork the persistent workers now, before the caller builds its model: a worker forked
        later would map the model, the optimizer and DeepSpeed's buffers (copy-on-write, but counted
        in its RSS and touched by its reference counts). They wait for the first pass to be published."""
        if self.cfg.data.workers and self.cfg.data.persistent_workers and self._dataloader is None:
            self._dataloader = self._new_dataloader()
            self._waiting = _start(self._dataloader)

    def _delivered(self):
        """(worker, payload, its shared buffer or None) as the DataLoader delivers them.

        The workers are forked here, on the calling (training) thread, not lazily on the thread that
        iterates the result (GPU decode's): PR_SET_PDEATHSIG kills a worker when the thread that
        forked it ends, which would kill persistent workers with each pass's decode thread."""
        if self._dataloader is None or not self.cfg.data.persistent_workers:
            self._dataloader = self._new_dataloader()
        self.bad_samples_before += sum(self._bad)  # counts restart with the pass
        self._bad = [0] * self.workers
        # read now, not at build time: the engine selects this rank's GPU before iterating
        device = torch.device("cuda", torch.cuda.current_device()) if self.batch_on_cuda else None
        if device is None and self.gpu is None:
            retain_freed_memory()  # float batches are made here, on the CPU: no page faults for each
        iterator = self._waiting if self._waiting is not None else _start(self._dataloader)
        self._waiting = None
        return self._delivering(iterator, device)

    def _delivering(self, iterator, device: torch.device | None):
        stream = self.stream
        for item in iterator:
            if isinstance(item, Failure):
                raise VitcError(item.message)
            payload, worker, bad = item
            self._bad[worker] = bad
            slot = payload[0] if isinstance(payload[0], SlotRef) else None
            if slot is not None:
                payload = stream.slots.take(worker, slot), *payload[1:]
            if device is not None:  # from pageable memory: the source is read before .to returns
                payload = *(t.to(device, non_blocking=True) for t in payload[:2]), payload[2]
            yield worker, payload, slot

    def _new_dataloader(self) -> DataLoader:
        workers = self.cfg.data.workers
        if not self._pin:  # pinned batches take DataLoader's own path (its pinning thread copies them)
            self.stream.use_slots(workers, self.cfg.model.image_size)
        # fork, whatever start method this process inherited (a torch.multiprocessing.spawn child has
        # 'spawn', which re-imports torch in every worker: ~10 s each here). Workers never touch CUDA:
        # GPU decode runs in this process.
        context = "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None
        if workers:
            _WITH_WORKERS.add(self)
        # its own generator: DataLoader draws a base seed at every pass, which would otherwise move the
        # training process's global generator (dropout, drop path) differently in a resumed run
        return DataLoader(self.stream, batch_size=None, num_workers=workers, pin_memory=self._pin,
                          generator=torch.Generator().manual_seed(self.cfg.data.seed),
                          multiprocessing_context=context, worker_init_fn=functools.partial(_start_worker, os.getpid()),
                          persistent_workers=bool(workers) and self.cfg.data.persistent_workers)

    def close(self) -> None:
        """Let the worker processes go: DataLoader stops them when its iterator is freed, so a pass
        left part-way (its generator suspended, still referenced) is closed first. Process exit
        closes every loader (`_close_at_exit`)."""
        self.stream.release_waiting()
        # GPU decode: its thread reads the pass and closes it; one still waiting for a worker's batch
        # after the timeout is a daemon that ends when it arrives (the workers' shutdown sends it)
        gpu_done = self.gpu.close() if self.gpu is not None else True
        if gpu_done and self._pass is not None and (delivered := self._pass()) is not None:
            delivered.close()
        self._dataloader = self._waiting = self._pass = None


# multiprocessing's exit handler SIGTERMs DataLoader's daemonic workers and joins them; ours ignore
# SIGTERM (the trainer decides when they end), so a loader still holding workers at exit, whether
# persistent after a finished pass or waiting for a first pass that never came, would hang its
# process there. Registered after multiprocessing's handler, this one runs first (atexit is LIFO)
# and lets them go the way DataLoader stops them.
_WITH_WORKERS: "weakref.WeakSet[_Loader]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for loader in list(_WITH_WORKERS):
        loader.close()


def _start(dataloader: DataLoader):
    """`iter(dataloader)`, with the workers forked (when they are) from a frozen garbage collector.

    gc.freeze() before fork, as Python's gc docs advise for forked children: the workers' collector
    then never walks the objects they inherit (torch, the model), nor dirties those pages
    (copy-on-write faults); its cost: docs/loader.md, "Where the CPU goes".
    """
    gc.freeze()
    try:
        return iter(dataloader)
    finally:
        gc.unfreeze()


def in_worker_order(items, order: list[int]):
    """`items` ((worker, ...) tuples) in `order` of workers, holding the ones that arrive early."""
    held: dict[int, collections.deque] = collections.defaultdict(collections.deque)
    items = iter(items)
    for worker in order:
        while not held[worker]:
            item = next(items, None)
            if item is None:
                return
            held[item[0]].append(item)
        yield held[worker].popleft()


def _start_worker(parent_pid: int, _worker_id: int) -> None:
    # Slurm signals every process of the step (SIGUSR1 before the time limit, SIGTERM on scancel):
    # the trainer saves its checkpoint, so its workers must live on until it lets them go.
    follow_parent(parent_pid)


class TrainLoader(_Loader):
    """`len(self)` batches of (images float32 [B,3,S,S], targets) per epoch on every rank."""

    def __init__(self, cfg, dist: DistEnv, batch: int, shards: list[Shard], recipe: Recipe,
                 gpu: GpuDecode | None = None, on_gpu: bool = False, grad_accum: int = 1):
        super().__init__(cfg, dist, batch, TrainBatchTransform(recipe), gpu, on_gpu)
        self.epoch, self.batches_consumed = 0, 0
        self._worker_batches = [0] * self.workers
        self._resume_fraction: float | None = None
        # whole optimizer steps: an epoch then reads floor(samples / global batch) global batches,
        # the same on any number of ranks when train.global_batch is fixed
        self._len = train_batches_per_rank(manifest_samples(shards), batch * grad_accum, dist.world_size) * grad_accum
        if self._len == 0:
            raise VitcError(f"data.train_shards: {manifest_samples(shards)} samples in {len(shards)} shards "
                            f"give no full optimizer step ({grad_accum} x {batch} images) per rank on "
                            f"{dist.world_size} ranks: add data or lower train.micro_batch")
        used = self._len * batch * dist.world_size
        self.remainder = 0 if cfg.data.resampled else manifest_samples(shards) - used
        d = cfg.data
        planner = EpochPlanner(tuple(shards), self.workers, batch, self._len, d.seed, dist.rank, dist.world_size,
                               d.resampled)
        self.stream = BatchStream(planner, self.workers, batch, recipe.num_classes,
                                  TrainSampleTransform(recipe), self.gpu is None, d.shuffle_buffer, d.resampled,
                                  d.max_bad_fraction, d.read_timeout_s)
        if dist.rank == 0:
            log.info("train loader: %d batches of %d per rank per epoch on %d ranks; %d of %d samples "
                     "do not fill a batch on every rank: each epoch leaves that many out and the next reads "
                     "them first", self._len, batch, dist.world_size, self.remainder, manifest_samples(shards))

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (a new order); setting the epoch a resumed state is in keeps its position."""
        if epoch != self.epoch:
            self.epoch, self.batches_consumed = epoch, 0
            self._worker_batches = [0] * self.workers
            self._resume_fraction = None

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_consumed": self.batches_consumed,
                "batches_per_epoch": self._len, "worker_batches": list(self._worker_batches),
                "world_size": self.dist.world_size,
                "workers": self.workers, "batch": self.batch, "bad_samples": self.bad_samples}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch after its consumed batches (exactly, when ranks/workers/batch match)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise VitcError(f"loader state: expected version {STATE_VERSION}, got {state!r:.200}")
        self.epoch, self.bad_samples_before = int(state["epoch"]), int(state.get("bad_samples", 0))
        self._bad = [0] * self.workers
        consumed, self._resume_fraction = loader_position(state, self.dist.world_size, self.workers, self.batch, self._len)
        self._worker_batches = consumed if consumed is not None else [0] * self.workers
        if consumed is None:
            log.warning("loader state saved with world_size/workers/batch %s/%s/%s, now %s/%s/%s: resuming "
                        "epoch %d at the same fraction (%.3f), not the exact sample", state.get("world_size"),
                        state.get("workers"), state.get("batch"), self.dist.world_size, self.workers,
                        self.batch, self.epoch, self._resume_fraction)
        self.batches_consumed = sum(self._worker_batches)

    def __iter__(self):
        if self.batches_consumed >= self._len:  # iterated again without set_epoch: the next epoch
            self.set_epoch(self.epoch + 1)
        if self._resume_fraction is None:
            plans = self.stream.start_pass(self.epoch, self._worker_batches)
        else:
            plans = self.stream.start_pass(self.epoch, None, self._resume_fraction)
        self._worker_batches = [p.skip for p in plans]
        self.batches_consumed = sum(self._worker_batches)
        self._resume_fraction = None  # from here on the per-worker counts are exact
        order = delivery_order([p.quota for p in plans], self._worker_batches)
        for worker, batch in self._batches(order, self.batches_consumed, plans[0].epoch_seed):
            self._worker_batches[worker] += 1
            self.batches_consumed += 1
            yield batch
        if self.batches_consumed != self._len:
            raise RuntimeError(f"train loader yielded {self.batches_consumed} of {self._len} batches")


class EvalLoader(_Loader):
    """(images float32 [B,3,S,S], labels int64 [B]): every sample once across ranks; label -1 = padding."""

    def __init__(self, cfg, dist: DistEnv, batch: int, shards: list[Shard], recipe: Recipe, on_gpu: bool = False):
        super().__init__(cfg, dist, batch, _normalize_batch, None, on_gpu)
        self.recipe = recipe
        by_rank = eval_deal(shards, dist.world_size, self.workers)
        plans = tuple(WorkerPlan(w, None, 0, f"eval/{dist.rank}/{i}") for i, w in enumerate(by_rank[dist.rank]))
        self._len = max(sum(math.ceil(sum(p.samples for p in w) / batch) for w in workers) for workers in by_rank)
        d = cfg.data
        self.stream = BatchStream(FixedPlans(plans), self.workers, batch, recipe.num_classes,
                                  EvalSampleTransform(recipe), self.gpu is None, 0, False, d.max_bad_fraction,
                                  d.read_timeout_s)

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        self.stream.start_pass(0, [0] * self.workers)
        yielded = 0
        for _, batch in self._batches():
            yielded += 1
            yield batch
        size = self.recipe.image_size
        for _ in range(self._len - yielded):  # equal batch counts on every rank; label -1 = not a sample
            yield torch.zeros(1, 3, size, size), torch.full((1,), -1, dtype=torch.int64)


def _batch_on_cuda(choice: str, gpu_decode: bool) -> bool:
    """Whether uint8 batches move to this rank's GPU to be finished there."""
    if choice == "cpu" or gpu_decode:  # GPU-decoded batches are on the GPU already
        return False
    if not torch.cuda.is_available():
        if choice == "cuda":
            log.warning("data.batch_device is 'cuda' but CUDA is not available: finishing batches on the CPU")
        return False
    return True


def _normalize_batch(images: torch.Tensor, labels: torch.Tensor, *_seeds) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize(images), labels


def manifest_samples(shards: list[Shard]) -> int:
    return sum(s.samples for s in shards)


def build_train_loader(cfg, run, dist: DistEnv, gpu: GpuDecode | None = None) -> TrainLoader:
    """The train loader for this rank of `run`, a vitc.run.Run (its training shards, already checked
    against the class count; `run.micro_batch` images per rank; its device). Not imported for the
    annotation: vitc.run reads this package's manifests, and the packages must not import each other.
    `gpu`: the decoder for `data.decode_device: cuda` (default: nvImageCodec or nvJPEG on this rank's device)."""
    if run.train is None:
        raise VitcError("data.train_shards is not set: training needs shards (see docs/loader.md)")
    # len() is a multiple of the run's gradient accumulation: an epoch is whole optimizer steps
    return TrainLoader(cfg, dist, run.micro_batch, list(run.train.shards),
                       Recipe.from_config(cfg, run.spec.num_classes), gpu, run.on_gpu, run.grad_accum)


def build_eval_loader(cfg, run, dist: DistEnv, batch_size: int | None = None) -> EvalLoader:
    """The eval loader for this rank over the run's validation shards, `batch_size` images per rank
    (default `run.micro_batch`)."""
    if run.val is None:
        raise VitcError("data.val_shards is not set: evaluation needs shards (see docs/loader.md)")
    recipe = Recipe.from_config(cfg, run.num_classes if run.num_classes is not None else run.val.manifest.num_classes)
    return EvalLoader(cfg, dist, batch_size or run.micro_batch, list(run.val.shards), recipe, run.on_gpu)


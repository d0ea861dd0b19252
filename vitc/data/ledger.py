"""Which samples each epoch of a run delivered to training, reconstructed after the fact (`vitc data ledger`).

The loader's order is a function of (data.seed, epoch, rank, worker) and of the layout (ranks,
workers, micro-batch): what a run trained on follows from where each stretch of it started and
stopped reading. The trainer writes that position into RUN_DIR/metrics.jsonl as a `data` record
(`position_record`) when it starts, fresh or resumed, and with every checkpoint, beside the loader
state the checkpoint holds. The ledger keeps the stretches that lead to the newest checkpoint (work
after a checkpoint that a later invocation did not resume from is lost, and so is its exposure),
replays each stretch with the loader's own planner and worker order (vitc.data.loading.epoch_plan,
vitc.data.loading.workers.worker_order) over sample positions instead of images, and counts per epoch
how often each sample was delivered. Nothing is read but the manifest and metrics.jsonl.

It assumes every sample decodes: a bad sample the loader skipped shifts its worker by one sample,
and a worker left short reads its pieces again; the ledger reports the count of those (rank 0's).
"""

import bisect
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitc.data.loading.epoch_plan import (
    EpochPlanner,
    delivery_order,
    even_quotas,
    loader_position,
    skips_after,
)
from vitc.errors import VitcError

RECORD = "data"  # the metrics.jsonl kind of a data position
EXAMPLES = 10  # samples named per epoch for "never" and "twice or more"


def position_record(event: str, epoch: int, micro_in_epoch: int, micro_per_epoch: int, loader_state: dict,
                    resumed_from: int | None = None) -> dict:
    """The data position the trainer logs at `event` ('start' or 'save'): its epoch and micro-batch in
    it, and rank 0's loader state (every rank consumes the same batches per worker)."""
    return {"event": event, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "micro_per_epoch": micro_per_epoch,
            "resumed_from": resumed_from, "loader": loader_state}


@dataclass(frozen=True)
class Layout:
    """How one invocation read: ranks, workers per rank, micro-batch, batches per rank per epoch."""

    world_size: int
    workers: int
    batch: int
    batches: int

    @classmethod
    def of(cls, loader_state: dict) -> "Layout":
        s = loader_state
        return cls(s["world_size"], s["workers"], s["batch"], s["batches_per_epoch"])

    @property
    def quotas(self) -> list[int]:
        return even_quotas(self.batches, self.workers)


@dataclass
class EpochExposure:
    """How often each sample was delivered in one epoch (1-based, as the trainer logs epochs)."""

    epoch: int
    counts: np.ndarray  # per sample: shards by name, samples in tar order
    world_sizes: list[int] = field(default_factory=list)
    complete: bool = False

    def summary(self, names) -> dict:
        c = self.counts
        return {"epoch": self.epoch, "complete": self.complete, "world_sizes": self.world_sizes,
                "delivered": int(c.sum()), "once": int((c == 1).sum()), "never": int((c == 0).sum()),
                "twice": int((c == 2).sum()), "more": int((c > 2).sum()),
                "never_examples": [names(i) for i in np.flatnonzero(c == 0)[:EXAMPLES]],
                "repeated_examples": [names(i) for i in np.flatnonzero(c > 1)[:EXAMPLES]],
                "digest": hashlib.blake2b(c.tobytes(), digest_size=8).hexdigest()}


@dataclass
class Ledger:
    run_dir: str
    samples: int
    epochs: list[dict]  # EpochExposure.summary() of each epoch the run reached
    stretches: int  # records replayed (a start and each checkpoint)
    bad_samples: int

    def to_json(self) -> dict:
        return {"run_dir": self.run_dir, "samples": self.samples, "stretches": self.stretches,
                "bad_samples": self.bad_samples, "epochs": self.epochs}

    def describe(self) -> str:
        lines = [(f"{self.run_dir}: {self.samples} samples, {len(self.epochs)} epoch(s) reconstructed from "
                  f"{self.stretches} data positions in metrics.jsonl"),
                 f"{'epoch':>5} {'ranks':>7} {'delivered':>10} {'once':>10} {'never':>8} {'twice':>8} {'more':>6}  digest"]
        for e in self.epochs:
            ranks = "/".join(map(str, e["world_sizes"])) + ("" if e["complete"] else "*")
            lines.append(f"{e['epoch']:>5} {ranks:>7} {e['delivered']:>10} {e['once']:>10} {e['never']:>8} "
                         f"{e['twice']:>8} {e['more']:>6}  {e['digest']}")
        if any(not e["complete"] for e in self.epochs):
            lines.append("* epoch not finished at the newest checkpoint")
        if self.bad_samples:
            lines.append(f"{self.bad_samples} bad samples skipped on rank 0: counted here as delivered")
        return "\n".join(lines)


def read_positions(run_dir: Path) -> list[dict]:
    """The `data` records of RUN_DIR/metrics.jsonl, in the order they were written."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise VitcError(f"{run_dir}: no metrics.jsonl (expected a vitc train run directory)")
    records = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == RECORD]
    if not records:
        raise VitcError(f"{path}: no '{RECORD}' records (data positions are logged by vitc train since the "
                        f"exposure ledger exists; an older run cannot be reconstructed)")
    return records


def surviving(records: list[dict], newest_step: int | None) -> list[dict]:
    """The records on the path to the newest checkpoint: a resumed invocation drops what came after
    the checkpoint it resumed from, a fresh start drops everything before it."""
    kept: list[dict] = []
    for record in records:
        if record["event"] == "start":
            resumed = record["resumed_from"]
            kept = [] if resumed is None else [k for k in kept if k["step"] <= resumed]
        kept.append(record)
    return [k for k in kept if newest_step is None or k["step"] <= newest_step]


class _Replay:
    """Counts per epoch, filled stretch by stretch."""

    def __init__(self, shards, data_seed: int, shuffle_buffer: int, resampled: bool):
        self.shards = tuple(shards)
        self.seed, self.shuffle_buffer, self.resampled = data_seed, shuffle_buffer, resampled
        ordered = sorted(self.shards, key=lambda s: s.name)
        self.names = [s.name for s in ordered]
        self.starts = list(itertools.accumulate((s.samples for s in ordered), initial=0))
        self.first = dict(zip(self.names, self.starts))
        self.total = self.starts[-1]
        self.epochs: dict[int, EpochExposure] = {}  # being counted
        self.summaries: dict[int, dict] = {}  # counted: one count array per epoch would not fit at 21k scale

    def name(self, index: int) -> str:
        i = bisect.bisect_right(self.starts, index) - 1
        return f"{self.names[i]}#{index - self.starts[i]}"

    def exposure(self, epoch: int) -> EpochExposure:
        if epoch not in self.epochs:
            self.epochs[epoch] = EpochExposure(epoch + 1, np.zeros(self.total, dtype=np.uint16))
        return self.epochs[epoch]

    def summarize(self, before: int | None = None) -> list[dict]:
        """Summaries of the epochs before `before` (all: None), their counts dropped; every summary so far."""
        for epoch in [e for e in self.epochs if before is None or e < before]:
            self.summaries[epoch] = self.epochs.pop(epoch).summary(self.name)
        return [self.summaries[e] for e in sorted(self.summaries)]

    def deliver(self, layout: Layout, epoch: int, start: list[int], stop: list[int]) -> None:
        """Count the batches [start[w], stop[w]) of every worker of every rank in `epoch`."""
        from vitc.data.loading.workers import worker_order

        if all(b <= a for a, b in zip(start, stop)):
            return
        exposure = self.exposure(epoch)
        if layout.world_size not in exposure.world_sizes:
            exposure.world_sizes.append(layout.world_size)
        for rank in range(layout.world_size):
            planner = EpochPlanner(self.shards, layout.workers, layout.batch, layout.batches, self.seed, rank,
                                   layout.world_size, self.resampled)
            for plan, a, b in zip(planner.plans(epoch, None, 0.0), start, stop):
                if b <= a:
                    continue
                if a == 0 and b * layout.batch == plan.samples and not self.resampled:  # the whole run
                    for p in plan.pieces:
                        exposure.counts[self.first[p.shard.name] + p.start:self.first[p.shard.name] + p.stop] += 1
                    continue
                order = worker_order(plan, self._positions, self.shuffle_buffer, self.resampled)
                taken = list(itertools.islice(order, a * layout.batch, b * layout.batch))
                np.add.at(exposure.counts, np.asarray(taken, dtype=np.int64), 1)

    def _positions(self, piece):
        first = self.first[piece.shard.name]
        return iter(range(first + piece.start, first + piece.stop))


def _advance(layout: Layout, consumed: list[int], batches: int) -> list[int]:
    """Per-worker counts after `batches` more batches in the order the loader delivers them."""
    after = list(consumed)
    for worker in delivery_order(layout.quotas, consumed)[:batches]:
        after[worker] += 1
    return after


def _begin(record: dict, resumed_state: dict | None, layout: Layout) -> tuple[int, list[int], int]:
    """(epoch, batches consumed per worker, trainer micro-batch in it) where a stretch begins."""
    state = resumed_state if record["event"] == "start" else record["loader"]
    if state is None or state["epoch"] < record["epoch"]:  # a fresh run, or at an epoch's end
        return record["epoch"], [0] * layout.workers, 0
    consumed, fraction = loader_position(state, layout.world_size, layout.workers, layout.batch, layout.batches)
    return state["epoch"], skips_after(consumed, layout.quotas, fraction or 0.0), record["micro_in_epoch"]


def _saved_loader_state(run_dir: Path, step: int) -> dict:
    """Rank 0's loader state as checkpoint `step` holds it (for a run whose log lacks it); the
    checkpoint's model-state file is read whole."""
    import torch

    from vitc.checkpoint.store import checkpoint_root, tag_for

    path = checkpoint_root(run_dir) / tag_for(step) / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise VitcError(f"{run_dir}: the run resumed from checkpoint step {step}, whose data position is "
                        f"neither in metrics.jsonl nor on disk ({path} is gone)")
    return torch.load(path, map_location="cpu", weights_only=False)["ranks"][0]["loader"]


def build_ledger(run_dir: str | Path) -> Ledger:
    """The exposure ledger of the run in `run_dir` (its config.yaml, metrics.jsonl and checkpoints)."""
    from vitc.checkpoint.store import newest_checkpoint
    from vitc.config import load_config
    from vitc.data.shards.manifest import resolve_shards

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise VitcError(f"{run_dir}: no config.yaml (expected a vitc train run directory)")
    records = read_positions(run_dir)
    d = load_config(run_dir / "config.yaml").data
    shards, _ = resolve_shards(d.train_shards, d.train_manifest, "train_shards")
    newest = newest_checkpoint(run_dir)
    path = surviving(records, newest.step if newest else None)
    replay = _Replay(shards, d.seed, d.shuffle_buffer, d.resampled)
    saves = {r["step"]: r["loader"] for r in path if r["event"] == "save"}  # with each checkpoint
    for before, record in itertools.pairwise(path):
        if record["event"] != "save":
            continue
        layout = Layout.of(record["loader"])
        resumed = None
        if before["event"] == "start" and before["resumed_from"] is not None:
            step = before["resumed_from"]
            resumed = saves[step] if step in saves else _saved_loader_state(run_dir, step)
        epoch, consumed, micro = _begin(before, resumed, layout)
        replay.summarize(before=epoch)  # the path never returns to an earlier epoch
        end = record["loader"]
        if end["epoch"] < epoch:  # saved again before the next epoch began: nothing read
            continue
        while epoch < end["epoch"]:  # the rest of an epoch that ended before this checkpoint
            finished = _advance(layout, consumed, record["micro_per_epoch"] - micro)
            replay.deliver(layout, epoch, consumed, finished)
            replay.exposure(epoch).complete = True
            epoch, consumed, micro = epoch + 1, [0] * layout.workers, 0
        if epoch == end["epoch"]:
            replay.deliver(layout, epoch, consumed, end["worker_batches"])
        if (record["epoch"] > end["epoch"] or record["micro_in_epoch"] >= record["micro_per_epoch"]
                or sum(end["worker_batches"]) >= end["batches_per_epoch"]):  # saved at the epoch's end
            replay.exposure(end["epoch"]).complete = True
    last = path[-1]["loader"]
    return Ledger(str(run_dir), replay.total,
                  replay.summarize(),
                  len(path), int(last.get("bad_samples", 0)))

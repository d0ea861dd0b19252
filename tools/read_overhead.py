"""Samples a train epoch reads but does not decode, from the loader's own plans, with and without
the shards' sample index (vitc.data.shards.sample_index):

    PYTHONPATH=. .venv/bin/python tools/read_overhead.py [SAMPLES] [PER_SHARD] [RANKS] [WORKERS] [GLOBAL_BATCH]

Defaults: ImageNet-21k (14,197,122 samples) in `vitc shards build`'s 10,000-sample shards, 128 ranks
x 8 workers, global batch 4,096. A worker whose piece starts at sample s of a shard reads the s
samples before it when the shard has no index, and s mod INDEX_STRIDE with one. Sampled ranks:
every eighth; the figure is over their workers, for epoch 1.
"""

import sys

from vitc.data.loading.epoch_plan import EpochPlanner
from vitc.data.shards.manifest import Shard
from vitc.data.shards.sample_index import INDEX_STRIDE


def main(samples: int = 14_197_122, per_shard: int = 10_000, ranks: int = 128, workers: int = 8,
         global_batch: int = 4096) -> None:
    sizes = [per_shard] * (samples // per_shard) + ([samples % per_shard] if samples % per_shard else [])
    shards = tuple(Shard(f"train-{i:06d}.tar", f"train-{i:06d}.tar", n) for i, n in enumerate(sizes))
    batch = global_batch // ranks
    batches = samples // (ranks * batch)
    decoded = without = with_index = 0
    for rank in range(0, ranks, max(1, ranks // 8)):
        for plan in EpochPlanner(shards, workers, batch, batches, 0, rank, ranks).plans(1, None, 0.0):
            decoded += plan.samples
            without += sum(p.start for p in plan.pieces)
            with_index += sum(p.start % INDEX_STRIDE for p in plan.pieces)
    print(f"{samples:,} samples in {len(shards):,} shards, {ranks} ranks x {workers} workers, global batch "
          f"{global_batch}: samples read and skipped per sample decoded: {without / decoded:.1%} without a "
          f"sample index, {with_index / decoded:.2%} with one every {INDEX_STRIDE}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))

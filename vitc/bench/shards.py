"""Images/s of `vitc shards build` with 1 and 2 workers over the same source (for `vitc bench data`)."""

import math
import os
import shutil
import statistics
import tempfile
import time

from vitc.data.shards.build import BuildOptions, build_shards
from vitc.data.shards.sources import list_source


def bench_shard_build(src: str | os.PathLike, tmpdir: str | os.PathLike, workers: tuple[int, ...] = (1, 2),
                      max_side: int | None = None, quality: int = 90, rounds: int = 3) -> dict[int, float]:
    """Median images/s of full builds of `src` (listing to manifest) per worker count.

    Worker counts take turns round by round, so drift in a shared machine's load hits all alike.
    Shards are sized so the largest worker count gets four shards each: a worker writes whole
    shards, so fewer shards than workers would measure idle processes, not the writer.
    """
    inputs = len(list_source(src).items)
    options = BuildOptions(samples_per_shard=max(1, math.ceil(inputs / (4 * max(workers)))),
                           max_side=max_side, quality=quality)
    rates: dict[int, list[float]] = {n: [] for n in workers}
    for _ in range(rounds):
        for n in workers:
            out = tempfile.mkdtemp(prefix=f"build-{n}-workers-", dir=tmpdir)  # fresh: nothing to resume
            start = time.perf_counter()
            build_shards(src, out, "bench", options, n, progress=False)
            rates[n].append(inputs / (time.perf_counter() - start))
            shutil.rmtree(out)
    return {n: statistics.median(r) for n, r in rates.items()}

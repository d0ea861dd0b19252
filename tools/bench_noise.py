"""The noise floor of `vitc bench engine` on this machine: N identical plain PyTorch loops, each
in its own fresh process, timed exactly as the bench times its contenders (`vitc.bench.timing`).
Their spread is what no engine overhead below it can be told from; the rates in start order show
whether the spread follows the order the processes were started in (docs/engine.md). With
`--processes K` each loop is the median of K processes, as `vitc bench ... --processes K` times
its contenders: the loops' spread is then what is left of the noise floor.

    .venv/bin/python tools/bench_noise.py [--loops 4] [--processes 1] [--model vit_p_1gf] [--batch 32]
        [--iters 5] [--rounds 5]
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python tools/bench_noise.py   # torch's CPU allocator asks for huge pages
"""

import argparse
import inspect

from vitc.bench.engine import bench_engine
from vitc.bench.timing import Contender, time_in_processes
from vitc.cli.args import add_timing_args

BENCH = {k: v.default for k, v in inspect.signature(bench_engine).parameters.items()}  # its defaults

if __name__ == "__main__":  # the contenders are spawned: they re-import this file
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--model", default=BENCH["name"])
    parser.add_argument("--batch", type=int, default=BENCH["batch"])
    add_timing_args(parser, rounds=BENCH["rounds"], iters=BENCH["iters"])
    args = parser.parse_args()
    loops = [Contender(f"plain{i}", "vitc.bench.engine:plain_step", {"name": args.model, "batch": args.batch})
             for i in range(args.loops)]
    timings = time_in_processes(loops, BENCH["warmup"], args.iters, args.rounds, args.processes)
    rates = [t.rate for t in timings.values()]
    print("images/s in start order: " + ", ".join(f"{r:.2f}" for r in rates))
    if args.processes > 1:
        print("spread of each loop's processes: " + ", ".join(f"{t.spread:+.1%}" for t in timings.values()))
    print(f"spread (fastest / slowest - 1): {max(rates) / min(rates) - 1:+.1%}")

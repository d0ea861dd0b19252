"""The noise floor of `vitc bench engine` on this machine: N identical plain PyTorch loops, each
in its own fresh process, timed exactly as the bench times its contenders (`vitc.bench.timing`).
Their spread is what no engine overhead below it can be told from; the rates in start order show
whether the spread follows the order the processes were started in (docs/engine.md).

    .venv/bin/python tools/bench_noise.py [--loops 4] [--model vit_p_1gf] [--batch 32]
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python tools/bench_noise.py   # torch's CPU allocator asks for huge pages
"""

import argparse

from vitc.bench.timing import Contender, time_in_processes

if __name__ == "__main__":  # the contenders are spawned: they re-import this file
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--model", default="vit_p_1gf")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    loops = [Contender(f"plain{i}", "vitc.bench.engine:plain_step", {"name": args.model, "batch": args.batch})
             for i in range(args.loops)]
    timings = time_in_processes(loops, warmup=2, iters=3, rounds=args.rounds)
    rates = [t.rate for t in timings.values()]
    print("images/s in start order: " + ", ".join(f"{r:.2f}" for r in rates))
    print(f"spread (fastest / slowest - 1): {max(rates) / min(rates) - 1:+.1%}")

"""Engine configurations against the plain loop, in one run timed as `vitc bench engine` times its
contenders (each in its own process, rounds interleaved, the plain loop twice for the noise floor):
what a DeepSpeed setting costs on this machine (docs/engine.md).

    .venv/bin/python tools/bench_engine_variants.py VARIANT [VARIANT ...] [--model vit_p_1gf] [--batch 32]
        [--iters 5] [--rounds 5] [--processes 1]

A VARIANT is NAME=STAGE[,key=value ...][,no-leaves]: a ZeRO stage, config overrides (a passthrough
`deepspeed.` key included), and `no-leaves` for ZeRO-3 hooks on every linear and norm instead of
one set per transformer block. For example (vitc's CPU defaults, then DeepSpeed's):

    .venv/bin/python tools/bench_engine_variants.py z2=2 \
        z2-contiguous=2,deepspeed.zero_optimization.contiguous_gradients=true z3=3 z3-no-leaves=3,no-leaves
"""

import argparse
import inspect

from vitc.bench.engine import NOISE, bench_engine, format_engine_bench
from vitc.bench.timing import Contender, time_in_processes
from vitc.cli.args import add_timing_args

BENCH = {k: v.default for k, v in inspect.signature(bench_engine).parameters.items()}  # its defaults


def variant(text: str, model: str, batch: int) -> Contender:
    name, _, spec = text.partition("=")
    stage, *rest = spec.split(",")
    if not name or not stage.isdigit():
        raise SystemExit(f"variant '{text}': expected NAME=STAGE[,key=value ...][,no-leaves]")
    overrides = [r for r in rest if r != "no-leaves"]
    return Contender(name, "vitc.bench.engine:engine_step",
                     {"name": model, "batch": batch, "stage": int(stage), "overrides": overrides,
                      "block_leaves": "no-leaves" not in rest})


if __name__ == "__main__":  # the contenders are spawned: they re-import this file
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", metavar="VARIANT")
    parser.add_argument("--model", default=BENCH["name"])
    parser.add_argument("--batch", type=int, default=BENCH["batch"])
    add_timing_args(parser, rounds=BENCH["rounds"], iters=BENCH["iters"])
    args = parser.parse_args()
    plain = {"name": args.model, "batch": args.batch}
    contenders = [Contender("plain", "vitc.bench.engine:plain_step", plain),
                  *(variant(v, args.model, args.batch) for v in args.variants),
                  Contender(NOISE, "vitc.bench.engine:plain_step", plain)]
    print(format_engine_bench(time_in_processes(contenders, BENCH["warmup"], args.iters, args.rounds,
                                                args.processes)))

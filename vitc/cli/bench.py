"""`vitc bench model|engine|meters|startup|data`: speed, each contender against a baseline measured
in the same run, each in its own fresh process (vitc/bench/)."""

import argparse

from vitc.cli.args import MODEL_HELP, add_timing_args


def cmd_bench_model(args: argparse.Namespace) -> int:
    from vitc.bench.model import bench_model, format_model_bench

    print(format_model_bench(bench_model(args.model, args.batch, args.iters, args.rounds, args.processes)))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from vitc.bench.data import bench_data

    print(bench_data(args.shards, args.images, args.batch, args.workers, args.rounds, args.auto_augment,
                     args.random_erasing, not args.no_shard_build, processes=args.processes).describe())
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from vitc.bench.engine import bench_engine, format_engine_bench

    print(format_engine_bench(bench_engine(args.model, args.batch, args.iters, args.rounds, args.stages,
                                                  processes=args.processes)))
    return 0


def cmd_bench_meters(args: argparse.Namespace) -> int:
    from vitc.bench.meters import bench_meters, format_meters_bench

    print(format_meters_bench(bench_meters(args.model, args.batch, args.iters, args.rounds, args.processes,
                                           args.stage, args.log_every, args.book_steps, args.book_rounds)))
    return 0


def cmd_bench_startup(args: argparse.Namespace) -> int:
    from vitc.bench.startup import bench_startup, format_startup

    print(format_startup(*bench_startup(args.out, args.rounds)))
    return 0


def _add_bench_engine_parser(bench_sub: argparse._SubParsersAction) -> None:
    engine = bench_sub.add_parser(
        "engine", help="step time through DeepSpeed (ZeRO 0-3) vs a plain PyTorch loop")
    engine.add_argument("--model", default="vit_p_1gf", help=MODEL_HELP)
    engine.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    add_timing_args(engine, rounds=5, iters=5)
    engine.add_argument("--stages", default="0,1,2,3", help="ZeRO stages to time, comma-separated")
    engine.set_defaults(func=cmd_bench_engine)
    startup = bench_sub.add_parser(
        "startup", help="seconds from `vitc train` to its first step (the demo model, CPU)")
    startup.add_argument("--out", default="runs/demo", help="directory for the demo shards and the run")
    startup.add_argument("--rounds", type=int, default=3, help="fresh processes timed (median taken)")
    startup.set_defaults(func=cmd_bench_startup)
    meters = bench_sub.add_parser(
        "meters", help="what MFU/goodput metering costs a training step: its bookkeeping alone (CPU µs) "
                       "over the step's time, and the whole step with vs without; each in its own process")
    meters.add_argument("--model", default="vit_p_1gf")
    meters.add_argument("--batch", type=int, default=32)
    meters.add_argument("--stage", type=int, default=1, choices=(0, 1, 2, 3), help="ZeRO stage of the step")
    meters.add_argument("--log-every", type=int, default=20, help="steps per log line (log.every_steps)")
    add_timing_args(meters, rounds=5, iters=20)
    meters.add_argument("--book-steps", type=int, default=500,
                        help="steps per round of the bookkeeping alone (default 500)")
    meters.add_argument("--book-rounds", type=int, default=101,
                        help="interleaved rounds of the bookkeeping alone (default 101)")
    meters.set_defaults(func=cmd_bench_meters)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="speed benchmarks, each against a baseline in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_model = bench_sub.add_parser("model", help="forward+backward images/s: ViT_C vs ViT_P vs timm")
    bench_model.add_argument("--model", default="vit_c_1gf", help=MODEL_HELP)
    bench_model.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    add_timing_args(bench_model, rounds=3, iters=3)
    bench_model.set_defaults(func=cmd_bench_model)
    bench_data = bench_sub.add_parser(
        "data", help="train loader images/s/core vs torchvision ImageFolder and bare JPEG decode",
        description="Images/s per core of (a) the vitc train loader, (b) torchvision ImageFolder + "
                    "DataLoader with the same recipe, (c) bare full-size PIL decode, over the same "
                    "JPEGs taken from DIR's shards; plus `vitc shards build` images/s with 1 and 2 "
                    "workers. Per core = images per CPU-second of the main process and its workers.")
    bench_data.add_argument("--shards", required=True, metavar="DIR", help="a shard directory with manifest.json")
    bench_data.add_argument("--images", type=int, metavar="N", help="use the first N images (default: all)")
    bench_data.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    bench_data.add_argument("--workers", type=int, default=2, help="loader workers for (a) and (b)")
    add_timing_args(bench_data, rounds=5)
    bench_data.add_argument("--auto-augment", choices=("autoaugment", "randaugment", "none"),
                            default="autoaugment")
    bench_data.add_argument("--random-erasing", type=float, default=0.25,
                            help="RandomErasing probability in both pipelines (default 0.25, DeiT's)")
    bench_data.add_argument("--no-shard-build", action="store_true", help="skip the shard-build rows")
    bench_data.set_defaults(func=cmd_bench_data)
    _add_bench_engine_parser(bench_sub)

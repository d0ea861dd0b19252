"""`vitc` subcommands. Thin: parse arguments, call one function, print its result.

A VitcError (bad input) is printed as one line without a traceback and exits 2; any other
exception is a bug and keeps its traceback.
"""

import argparse
import logging
import sys

from vitc.errors import VitcError
from vitc.log import setup_logging


def cmd_audit(args: argparse.Namespace) -> int:
    from vitc.audit.report import audit_row, check_parity, format_rows, parity_pairs, resolve_targets

    specs = resolve_targets(args.models, args.overrides, args.resolution, args.num_classes)
    print(format_rows([audit_row(spec) for spec, _ in specs], args.format))
    if not args.parity:
        return 0
    results = check_parity(parity_pairs(specs))
    for result in results:
        print(("parity ok: " if result.ok else "parity FAILED: ") + result.describe(),
              file=sys.stderr if args.format != "table" else sys.stdout)
    return 0 if all(r.ok for r in results) else 1


def cmd_bench_model(args: argparse.Namespace) -> int:
    from vitc.bench.model import bench_model, format_model_bench

    print(format_model_bench(bench_model(args.model, args.batch, args.iters, args.rounds)))
    return 0


def _split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (targets, key=value overrides)."""
    return [v for v in values if "=" not in v], [v for v in values if "=" in v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitc", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    audit = sub.add_parser(
        "audit", help="flops, activations and parameters of models (fvcore + analytic check)",
        description="Count flops (1 multiply-add = 1 flop), activations and parameters with fvcore, "
                    "check them against per-module formulas, and optionally check conv/patchify "
                    "flop parity. MODEL is a registry name, 'paper', 'all' or a YAML config; "
                    "key=value overrides apply to every model named.")
    audit.add_argument("models", nargs="+", metavar="MODEL_OR_CONFIG [key=value]")
    audit.add_argument("--resolution", type=int, help="input size (default: model.image_size)")
    audit.add_argument("--num-classes", type=int, help="classifier outputs (default: model.num_classes)")
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")
    audit.add_argument("--parity", action="store_true",
                       help="fail when a conv-stem model's flops differ from its patchify twin's "
                            "by more than audit.parity_tolerance")
    audit.set_defaults(func=cmd_audit, split=True)

    bench = sub.add_parser("bench", help="speed benchmarks, each against a baseline in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_model = bench_sub.add_parser("model", help="forward+backward images/s: ViT_C vs ViT_P vs timm")
    bench_model.add_argument("--model", default="vit_c_1gf")
    bench_model.add_argument("--batch", type=int, default=16)
    bench_model.add_argument("--iters", type=int, default=3, help="steps per timed round")
    bench_model.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    bench_model.set_defaults(func=cmd_bench_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (`vitc audit m --parity model.depth=12`)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "split", False):
        args.models, args.overrides = _split_overrides(args.models)
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    if getattr(args, "split", False):
        if not args.models:
            print("vitc: error: name at least one model or config", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except VitcError as e:
        print(f"vitc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

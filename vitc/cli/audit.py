"""`vitc audit` and `vitc bench model`: model cost and model speed."""

import argparse
import sys

from vitc.cli.args import MODEL_HELP, add_timing_args


def cmd_audit(args: argparse.Namespace) -> int:
    from vitc.audit.report import audit_row, check_parity, format_rows, parity_pairs, resolve_targets

    specs = resolve_targets(args.targets, args.overrides, args.resolution, args.num_classes)
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

    print(format_model_bench(bench_model(args.model, args.batch, args.iters, args.rounds, args.processes)))
    return 0


def add_parsers(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="flops, activations and parameters of models (fvcore + analytic check)",
        description="Count flops (1 multiply-add = 1 flop), activations and parameters with fvcore, "
                    "check them against per-module formulas, and optionally check conv/patchify "
                    "flop parity. MODEL is a registry name, 'paper', 'all' or a YAML config; "
                    "key=value overrides apply to every model named.")
    audit.add_argument("targets", nargs="+", metavar="MODEL_OR_CONFIG [key=value]")
    audit.add_argument("--resolution", type=int, help="input size (default: model.image_size)")
    audit.add_argument("--num-classes", type=int, help="classifier outputs (default: model.num_classes)")
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")
    audit.add_argument("--parity", action="store_true",
                       help="fail when a conv-stem model's flops differ from its patchify twin's "
                            "by more than audit.parity_tolerance")
    audit.set_defaults(func=cmd_audit, split="targets")

    bench_model = bench_sub.add_parser("model", help="forward+backward images/s: ViT_C vs ViT_P vs timm")
    bench_model.add_argument("--model", default="vit_c_1gf", help=MODEL_HELP)
    bench_model.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    add_timing_args(bench_model, rounds=3, iters=3)
    bench_model.set_defaults(func=cmd_bench_model)

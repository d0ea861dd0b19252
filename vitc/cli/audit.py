"""`vitc audit`: model cost (flops, activations, parameters) and conv/patchify parity."""

import argparse
import sys


def cmd_audit(args: argparse.Namespace) -> int:
    from vitc.audit.report import (
        audit_row,
        check_parity,
        format_rows,
        parity_pairs,
        resolve_targets,
    )

    from tqdm import tqdm

    specs = resolve_targets(args.targets, args.overrides, args.resolution, args.num_classes)
    # tracing takes seconds per model: `vitc audit all` shows its progress on stderr
    traced = tqdm(specs, desc="fvcore trace", unit="model", file=sys.stderr, disable=len(specs) < 2, leave=False)
    print(format_rows([audit_row(spec) for spec, _ in traced], args.format))
    if not args.parity:
        return 0
    results = check_parity(parity_pairs(specs))
    for result in results:
        print(("parity ok: " if result.ok else "parity FAILED: ") + result.describe(),
              file=sys.stderr if args.format != "table" else sys.stdout)
    return 0 if all(r.ok for r in results) else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
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

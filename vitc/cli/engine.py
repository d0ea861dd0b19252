"""`vitc train`, `vitc eval`, `vitc export` and `vitc demo`."""

import argparse
import json

from vitc.cli.args import given, job_rank, one_config
from vitc.errors import VitcError


def cmd_train(args: argparse.Namespace) -> int:
    from vitc.config import load_config
    from vitc.preflight import check_run_inputs

    cfg = load_config(one_config(args, "train"), args.overrides)
    dist = job_rank(args)
    check_run_inputs(cfg, dist.world_size)  # before torch, the run's lock or a worker: writes nothing

    from vitc.engine.train import train

    outcome = train(cfg, dist)
    if dist.is_main:
        print(f"{cfg.train.run_dir}: {outcome.describe()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitc.config import load_config
    from vitc.engine.evaluate import evaluate_weights

    # `weights=FILE` is short for `eval.weights=FILE`, like --weights; given both ways, neither wins
    overrides = [f"eval.{o}" if o.startswith("weights=") else o for o in args.overrides]
    if args.weights:
        named = [o for o in overrides if o.startswith("eval.weights=")]
        if named:
            raise VitcError(f"vitc eval: the weights are named twice (--weights {args.weights} and "
                            f"{named[0]}): give one")
        overrides.append(f"eval.weights={json.dumps(args.weights)}")  # JSON is YAML: the path stays text
    cfg = load_config(one_config(args, "eval"), overrides)
    dist = job_rank(args)
    accuracy = evaluate_weights(cfg, dist)
    if dist.is_main:
        print(f"{cfg.eval.weights}: top-1 {accuracy.top1:.2f}%  top-5 {accuracy.top5:.2f}%  "
              f"({accuracy.count} images)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    if args.format == "vitc" and out.is_dir():
        raise VitcError(f"vitc export --out: '{out}' is a directory; expected a .safetensors file name "
                        "(--format timm writes a directory)")
    if args.format == "timm" and out.exists() and not out.is_dir():
        raise VitcError(f"vitc export --format timm --out: '{out}' is a file; expected a directory")

    from vitc.log import prints_to_log
    from vitc.weights.export import export_weights

    with prints_to_log("deepspeed.zero_to_fp32"):  # its progress lines: stdout is for the path
        path = export_weights(args.run_dir, args.out, args.dtype, args.ema, args.format)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitc.config import check_flag

    if args.epochs is not None:  # through the schema, as schedule.epochs in a config is
        check_flag("schedule.epochs", args.epochs, "--epochs")
    if hasattr(args, "out") and Path(args.out).exists() and not Path(args.out).is_dir():
        raise VitcError(f"vitc demo --out: '{args.out}' is a file; expected a directory for shards and runs")

    from vitc.pipelines.demo import format_demo, run_demo

    print(format_demo(run_demo(**given(args, "out"), epochs=args.epochs)))
    return 0


def _add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a model with DeepSpeed ZeRO (docs/engine.md)",
        description="Train as CONFIG says (key=value overrides after it). Runs as one process, "
                    "under torchrun or under Slurm srun; resumes from the newest complete "
                    "checkpoint in train.run_dir.")
    train.add_argument("configs", nargs="+", metavar="CONFIG [key=value]")
    train.set_defaults(func=cmd_train, split="configs")
    evaluate = sub.add_parser(
        "eval", help="top-1/top-5 of exported weights on the config's eval data",
        description="Evaluate a .safetensors file from `vitc export` (--weights FILE, or weights=FILE "
                    "among the overrides; not both) on CONFIG's data.val_shards: top-1 and top-5 "
                    "over every image once, on as many ranks as the launcher starts.")
    evaluate.add_argument("configs", nargs="+", metavar="CONFIG [key=value]")
    evaluate.add_argument("--weights", help="a .safetensors file from `vitc export` (or weights=FILE)")
    evaluate.set_defaults(func=cmd_eval, split="configs")
    export = sub.add_parser(
        "export", help="newest complete checkpoint of a run -> one .safetensors state dict",
        description="Consolidate the ZeRO partitions of RUN_DIR's newest complete checkpoint "
                    "(DeepSpeed's zero_to_fp32) into weights that vitc.models loads without DeepSpeed.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, help="output .safetensors file (a directory for --format timm)")
    export.add_argument("--format", choices=("vitc", "timm"), default="vitc",
                        help="timm: config.json + model.safetensors that timm.create_model('local-dir:OUT') "
                             "loads (conv-stem models after `import vitc.weights.timm_models`)")
    export.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    export.add_argument("--ema", action="store_true", help="export the EMA weights instead")
    export.set_defaults(func=cmd_export)
    demo = sub.add_parser(
        "demo", help="train a conv-stem ViT and its patchify twin on real digits, on CPU",
        description="Shard scikit-learn's handwritten digits, train ViT_C and ViT_P (equal flops) "
                    "through `vitc train`, evaluate both and print flops, params, top-1 and time.")
    demo.add_argument("--out", default=argparse.SUPPRESS, help="directory for shards and runs (default: runs/demo)")
    demo.add_argument("--epochs", type=int, help="override the demo configs' schedule.epochs")
    demo.set_defaults(func=cmd_demo)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_engine_parsers(sub)

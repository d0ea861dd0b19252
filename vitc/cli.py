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


def cmd_slurm_submit(args: argparse.Namespace) -> int:
    from vitc.launch.slurm import resolve_submission, submit

    cfg = resolve_submission(_one_config(args, "slurm submit"), args.overrides, nodes=args.nodes,
                             gpus_per_node=args.gpus_per_node, partition=args.partition,
                             time=args.time, account=args.account)
    result = submit(cfg, dry_run=args.dry_run)
    if args.dry_run:
        print(result.script, end="")
        print(f"dry run: nothing written; would save {result.config_path} and submit "
              f"{result.script_path}", file=sys.stderr)
    else:
        print(f"submitted job {result.job_id}: {result.script_path}\n"
              f"follow it with: vitc slurm status {result.run_dir}")
    return 0


def cmd_slurm_status(args: argparse.Namespace) -> int:
    from vitc.launch.slurm import job_status

    print(job_status(args.run_dir).describe())
    return 0


def cmd_shards_build(args: argparse.Namespace) -> int:
    from vitc.data.shards import BuildOptions, build_shards

    options = BuildOptions(args.samples_per_shard, args.max_shard_bytes, args.max_side, args.quality,
                           args.shuffle_seed)
    try:
        print(build_shards(args.src, args.out, args.prefix, options, args.workers).describe())
    except KeyboardInterrupt:
        print(f"vitc: interrupted; finished shards are kept: re-run the same command to write the "
              f"rest into {args.out}", file=sys.stderr)
        return 130
    return 0


def cmd_shards_verify(args: argparse.Namespace) -> int:
    from vitc.data.verify import verify_shards

    report = verify_shards(args.dir, args.workers)
    print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def cmd_shards_index(args: argparse.Namespace) -> int:
    from vitc.data.verify import index_shards

    m = index_shards(args.dir, args.prefix, args.workers)
    print(f"{args.dir}: indexed {len(m.shards)} shards, {m.num_samples} samples, {m.num_classes} "
          f"classes, {len(m.skipped)} samples without image or label")
    return 0


def _add_shards_parser(sub: argparse._SubParsersAction) -> None:
    shards = sub.add_parser("shards", help="write, verify and index WebDataset shards")
    shards_sub = shards.add_subparsers(dest="shards", required=True, metavar="ACTION")
    build = shards_sub.add_parser(
        "build", help="ImageFolder tree or per-synset tars -> <prefix>-%%06d.tar shards + manifest",
        description="Convert SRC (an ImageFolder tree of class folders, or a folder of per-synset "
                    "tars such as n01440764.tar) into OUT/<prefix>-%%06d.tar shards of <key>.jpg + "
                    "<key>.cls and OUT/manifest.json. Re-run after an interruption, it keeps the "
                    "finished shards and writes the rest. Corrupt and non-image inputs are skipped "
                    "and listed in the manifest.")
    build.add_argument("src")
    build.add_argument("out")
    build.add_argument("--prefix", default="train", help="shard name prefix (default: train)")
    build.add_argument("--samples-per-shard", type=int, default=10_000, metavar="N")
    build.add_argument("--max-shard-bytes", type=int, default=1_000_000_000, metavar="B",
                       help="cap on a shard's planned size, from its inputs' sizes (default 1e9)")
    build.add_argument("--max-side", type=int, metavar="S",
                       help="downscale so the shorter side is at most S (never upscaled); "
                            "JPEGs already within it keep their bytes")
    build.add_argument("--quality", type=int, default=90, metavar="Q",
                       help="JPEG quality of re-encoded images (default 90)")
    build.add_argument("--shuffle-seed", type=int, default=0, metavar="SEED",
                       help="seed of the global shuffle of samples across shards (default 0)")
    build.add_argument("--workers", type=int, default=1, metavar="W",
                       help="processes, each writing whole shards (the result does not depend on W)")
    build.set_defaults(func=cmd_shards_build)
    verify = shards_sub.add_parser(
        "verify", help="check shards against their manifest (exit 1 naming the bad shard/sample)",
        description="Check every shard in DIR against DIR/manifest.json: present, bytes, sha256, "
                    "sample count, every image decodes and every label is a class index in range.")
    verify.add_argument("dir")
    verify.add_argument("--workers", type=int, default=1, metavar="W")
    verify.set_defaults(func=cmd_shards_verify)
    index = shards_sub.add_parser(
        "index", help="write a manifest for shards made by another tool",
        description="Write DIR/manifest.json for <prefix>*.tar shards written by another tool "
                    "(webdataset's ShardWriter, img2dataset): images in .jpg/.jpeg/.png/.webp, "
                    "labels in .cls or in a 'label'/'cls' field of .json; class i is named 'i'.")
    index.add_argument("dir")
    index.add_argument("--prefix", help="index only DIR/<prefix>*.tar (default: every .tar)")
    index.add_argument("--workers", type=int, default=1, metavar="W")
    index.set_defaults(func=cmd_shards_index)


def _one_config(args: argparse.Namespace, command: str) -> str:
    if len(args.models) != 1:
        raise VitcError(f"vitc {command}: expected one CONFIG file, got {args.models or 'none'}")
    return args.models[0]


def cmd_train(args: argparse.Namespace) -> int:
    from vitc.config import load_config
    from vitc.engine.trainer import train
    from vitc.launch.env import discover

    cfg = load_config(_one_config(args, "train"), args.overrides)
    dist = discover()
    setup_logging(dist.rank, logging.DEBUG if args.verbose else logging.INFO)
    result = train(cfg, dist)
    if dist.is_main:
        print(result.describe())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitc.config import load_config
    from vitc.engine.evaluate import evaluate_weights
    from vitc.launch.env import discover

    # `weights=FILE` is short for `eval.weights=FILE`, like --weights
    overrides = [f"eval.{o}" if o.startswith("weights=") else o for o in args.overrides]
    overrides += [f"eval.weights={args.weights}"] if args.weights else []
    cfg = load_config(_one_config(args, "eval"), overrides)
    dist = discover()
    setup_logging(dist.rank, logging.DEBUG if args.verbose else logging.INFO)
    accuracy = evaluate_weights(cfg, dist)
    if dist.is_main:
        print(f"{cfg.eval.weights}: top-1 {accuracy.top1:.2f}%  top-5 {accuracy.top5:.2f}%  "
              f"({accuracy.count} images)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vitc.engine.export import export_weights

    print(export_weights(args.run_dir, args.out, args.dtype, args.ema))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vitc.demo import format_demo, run_demo

    print(format_demo(run_demo(args.out, args.epochs)))
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from vitc.bench.engine import bench_engine, format_engine_bench

    print(format_engine_bench(bench_engine(args.model, args.batch, args.iters, args.rounds, args.stages)))
    return 0


def _add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a model with DeepSpeed ZeRO (docs/engine.md)",
        description="Train as CONFIG says (key=value overrides after it). Runs as one process, "
                    "under torchrun or under Slurm srun; resumes from the newest complete "
                    "checkpoint in train.run_dir.")
    train.add_argument("models", nargs="+", metavar="CONFIG [key=value]")
    train.set_defaults(func=cmd_train, split=True)
    evaluate = sub.add_parser("eval", help="top-1/top-5 of exported weights on the config's eval data")
    evaluate.add_argument("models", nargs="+", metavar="CONFIG [key=value]")
    evaluate.add_argument("--weights", help="a .safetensors file from `vitc export` (or weights=FILE)")
    evaluate.set_defaults(func=cmd_eval, split=True)
    export = sub.add_parser(
        "export", help="newest complete checkpoint of a run -> one .safetensors state dict",
        description="Consolidate the ZeRO partitions of RUN_DIR's newest complete checkpoint "
                    "(DeepSpeed's zero_to_fp32) into weights that vitc.models loads without DeepSpeed.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, help="output .safetensors file")
    export.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    export.add_argument("--ema", action="store_true", help="export the EMA weights instead")
    export.set_defaults(func=cmd_export)
    demo = sub.add_parser(
        "demo", help="train a conv-stem ViT and its patchify twin on real digits, on CPU",
        description="Shard scikit-learn's handwritten digits, train ViT_C and ViT_P (equal flops) "
                    "through `vitc train`, evaluate both and print flops, params, top-1 and time.")
    demo.add_argument("--out", default="runs/demo", help="directory for shards and runs")
    demo.add_argument("--epochs", type=int, help="override the demo configs' schedule.epochs")
    demo.set_defaults(func=cmd_demo)


def _add_bench_engine_parser(bench_sub: argparse._SubParsersAction) -> None:
    engine = bench_sub.add_parser(
        "engine", help="step time through DeepSpeed (ZeRO 0-3) vs a plain PyTorch loop")
    engine.add_argument("--model", default="vit_p_1gf")
    engine.add_argument("--batch", type=int, default=32)
    engine.add_argument("--iters", type=int, default=5, help="steps per timed round")
    engine.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    engine.add_argument("--stages", default="0,1,2,3", help="ZeRO stages to time, comma-separated")
    engine.set_defaults(func=cmd_bench_engine)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from vitc.launch.env import discover
    from vitc.pipeline import run_pipeline

    if len(args.models) != 2:
        raise VitcError(f"vitc pipeline: expected PRETRAIN_CONFIG and FINETUNE_CONFIG, got {args.models}")
    dist = discover()
    setup_logging(dist.rank, logging.DEBUG if args.verbose else logging.INFO)
    result = run_pipeline(*args.models, args.run_dir, args.overrides, dist)
    if dist.is_main:
        print(result.describe())
    return 0 if result.stopped is None else 3


def _add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    pipeline = sub.add_parser(
        "pipeline", help="pretrain -> export -> finetune -> export -> eval in one run directory",
        description="Pretrain with PRETRAIN_CONFIG, export, finetune with FINETUNE_CONFIG from the "
                    "exported weights (position embeddings interpolated, head per finetune.head), "
                    "export and evaluate, all in --run-dir. Re-running skips every complete stage "
                    "and resumes the interrupted one. key=value overrides apply to both stages; "
                    "prefix pretrain: or finetune: for one (docs/pipelines.md). Exit 3: stopped "
                    "early (preempted or train.max_steps), re-run to continue.")
    pipeline.add_argument("models", nargs="+", metavar="PRETRAIN_CONFIG FINETUNE_CONFIG [key=value]")
    pipeline.add_argument("--run-dir", required=True, help="directory holding every stage")
    pipeline.set_defaults(func=cmd_pipeline, split=True)


def cmd_sweep_make(args: argparse.Namespace) -> int:
    from vitc.sweep.make import make_sweep

    if len(args.models) != 2:
        raise VitcError(f"vitc sweep make: expected SPEC and SWEEP_DIR, got {args.models}")
    runs = make_sweep(*args.models, args.overrides)
    print(f"{args.models[1]}: {len(runs)} run configs ({len({r.model for r in runs})} models × "
          f"{len({(r.optimizer, r.lr, r.weight_decay) for r in runs})} sampled settings); "
          f"train them with: vitc sweep run {args.models[1]}")
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from vitc.sweep.run import run_local, slurm_array

    if args.slurm or args.dry_run:
        script, job_id = slurm_array(args.sweep_dir, args.parallel, args.dry_run)
        print(script if args.dry_run else f"submitted job array {job_id}", end="\n" if job_id else "")
        return 0
    outcomes = run_local(args.sweep_dir)
    counts = {s: sum(o.status == s for o in outcomes.values()) for s in {o.status for o in outcomes.values()}}
    print(f"{args.sweep_dir}: trained {len(outcomes)} runs: "
          + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing left to train"))
    return 0


def cmd_sweep_collect(args: argparse.Namespace) -> int:
    from vitc.sweep.collect import collect, summarize

    path, results = collect(args.sweep_dir)
    print(summarize(results))
    print(f"wrote {path}")
    return 0


def cmd_sweep_plot(args: argparse.Namespace) -> int:
    from vitc.sweep.plot import plot_edf

    png, csv_path = plot_edf(args.sweep_dir, args.out, args.step, args.name)
    print(f"wrote {png} and {csv_path}")
    return 0


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="the paper's optimizability sweep: sample, train, collect, "
                                         "plot EDFs (docs/pipelines.md)")
    sweep_sub = sweep.add_subparsers(dest="sweep", required=True, metavar="ACTION")
    make = sweep_sub.add_parser(
        "make", help="sample run configs from a sweep spec into SWEEP_DIR",
        description="Sample `samples` settings per optimizer (lr and weight decay log-uniform in "
                    "the spec's ranges, schedule length, seed) from the spec's seed, give each to "
                    "every model of the spec, and write SWEEP_DIR/configs/<id>.yaml and "
                    "SWEEP_DIR/runs.csv. key=value overrides apply to every run.")
    make.add_argument("models", nargs="+", metavar="SPEC SWEEP_DIR [key=value]")
    make.set_defaults(func=cmd_sweep_make, split=True)
    run = sweep_sub.add_parser(
        "run", help="train the runs locally in sequence, or submit a Slurm job array",
        description="Locally: train each run not yet finished or diverged, one `vitc train` "
                    "process after another. --slurm: submit them as one job array instead.")
    run.add_argument("sweep_dir", metavar="SWEEP_DIR")
    run.add_argument("--slurm", action="store_true", help="submit a Slurm job array")
    run.add_argument("--parallel", type=int, default=8, help="array tasks running at once (default 8)")
    run.add_argument("--dry-run", action="store_true", help="print the job array script; submit nothing")
    run.set_defaults(func=cmd_sweep_run)
    collect = sweep_sub.add_parser(
        "collect", help="final top-1 errors of every run -> SWEEP_DIR/results.csv",
        description="Diverged and failed runs count as 100%% error (as in the paper); runs with "
                    "no outcome yet are listed as incomplete and left out of the EDF.")
    collect.add_argument("sweep_dir", metavar="SWEEP_DIR")
    collect.set_defaults(func=cmd_sweep_collect)
    plot = sweep_sub.add_parser(
        "plot", help="EDF curves per model and optimizer -> PNG + CSV",
        description="EDF(e) = fraction of runs with top-1 error below e, one curve per model and "
                    "optimizer, from SWEEP_DIR/results.csv.")
    plot.add_argument("sweep_dir", metavar="SWEEP_DIR")
    plot.add_argument("--out", help="directory for edf.png and edf.csv (default: SWEEP_DIR)")
    plot.add_argument("--name", default="edf", help="file name stem of the PNG and CSV (default: edf)")
    plot.add_argument("--step", type=float, default=0.5, help="error resolution of the CSV, in %% (default 0.5)")
    plot.set_defaults(func=cmd_sweep_plot)


def cmd_plan(args: argparse.Namespace) -> int:
    from vitc.plan.planner import check_fits, plan_run, sweep
    from vitc.plan.report import format_json, format_plan, format_sweep
    from vitc.plan.gpus import DEFAULT_GPUS_FILE
    from vitc.plan.setup import Cluster, load_run_config, run_setup

    if len(args.models) != 1:
        raise VitcError(f"vitc plan takes one config or model name, got {args.models}")
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu, args.mfu, args.dataset_size,
                      not args.no_overlap, args.gpus_file or DEFAULT_GPUS_FILE)
    setup = run_setup(load_run_config(args.models[0], args.overrides), cluster)
    nodes = _node_list(args.sweep_nodes) if args.sweep_nodes else None
    plan = plan_run(setup) if nodes else check_fits(plan_run(setup))
    swept = sweep(setup, nodes) if nodes else None
    if args.format == "json":
        print(format_json(plan, swept))
    else:
        print(format_sweep(swept, nodes, setup) if nodes else format_plan(plan))
    return 0


def _node_list(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise VitcError(f"--sweep-nodes expects comma-separated node counts like 1,8,64,512, got '{text}'")


def cmd_bench_data(args: argparse.Namespace) -> int:
    from vitc.bench.data import bench_data

    print(bench_data(args.shards, args.images, args.batch, args.workers, args.rounds, args.auto_augment,
                     args.random_erasing, not args.no_shard_build).describe())
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

    plan = sub.add_parser(
        "plan", help="memory, time and cost of a run at cluster scale, before booking it",
        description="Plan a run: per-GPU memory by ZeRO stage (model states, activations), the "
                    "largest micro-batch that fits, step time at a stated MFU with ZeRO's "
                    "communication, images/s, epoch and total time, GPU-hours; every assumption "
                    "is printed beside the result (docs/plan.md). CONFIG_OR_MODEL is a YAML config "
                    "or a registry model name; key=value overrides apply to it.")
    plan.add_argument("models", nargs="+", metavar="CONFIG_OR_MODEL [key=value]")
    plan.add_argument("--nodes", type=int, help="nodes (default: slurm.nodes)")
    plan.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: slurm.gpus_per_node)")
    plan.add_argument("--gpu", default="h100", help="a GPU of the table (default: h100)")
    plan.add_argument("--gpus-file", help="the GPU table (default: configs/gpus.yaml)")
    plan.add_argument("--mfu", type=float, default=0.4, help="model flops utilization assumed (default 0.4)")
    plan.add_argument("--dataset-size", type=int,
                      help="images per epoch (default: the manifest of data.train_shards)")
    plan.add_argument("--sweep-nodes", metavar="N,N,...",
                      help="scale-out table at these node counts, global batch held fixed")
    plan.add_argument("--no-overlap", action="store_true",
                      help="assume communication is not overlapped with compute")
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.set_defaults(func=cmd_plan, split=True)

    bench = sub.add_parser("bench", help="speed benchmarks, each against a baseline in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_model = bench_sub.add_parser("model", help="forward+backward images/s: ViT_C vs ViT_P vs timm")
    bench_model.add_argument("--model", default="vit_c_1gf")
    bench_model.add_argument("--batch", type=int, default=16)
    bench_model.add_argument("--iters", type=int, default=3, help="steps per timed round")
    bench_model.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    bench_model.set_defaults(func=cmd_bench_model)
    bench_data = bench_sub.add_parser(
        "data", help="train loader images/s/core vs torchvision ImageFolder and bare JPEG decode",
        description="Images/s per core of (a) the vitc train loader, (b) torchvision ImageFolder + "
                    "DataLoader with the same recipe, (c) bare full-size PIL decode, over the same "
                    "JPEGs taken from DIR's shards; plus `vitc shards build` images/s with 1 and 2 "
                    "workers. Per core = images per CPU-second of the main process and its workers.")
    bench_data.add_argument("--shards", required=True, metavar="DIR", help="a shard directory with manifest.json")
    bench_data.add_argument("--images", type=int, metavar="N", help="use the first N images (default: all)")
    bench_data.add_argument("--batch", type=int, default=32)
    bench_data.add_argument("--workers", type=int, default=2, help="loader workers for (a) and (b)")
    bench_data.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    bench_data.add_argument("--auto-augment", choices=("autoaugment", "randaugment", "none"),
                            default="autoaugment")
    bench_data.add_argument("--random-erasing", type=float, default=0.25,
                            help="RandomErasing probability in both pipelines (default 0.25, DeiT's)")
    bench_data.add_argument("--no-shard-build", action="store_true", help="skip the shard-build rows")
    bench_data.set_defaults(func=cmd_bench_data)
    _add_bench_engine_parser(bench_sub)

    slurm = sub.add_parser("slurm", help="submit a run to Slurm and follow it (docs/slurm.md)")
    slurm_sub = slurm.add_subparsers(dest="slurm", required=True, metavar="WHAT")
    slurm_submit = slurm_sub.add_parser(
        "submit", help="render slurm/<slurm.template>.sbatch for a config and sbatch it",
        description="Save the resolved config in train.run_dir, render the job script (one task "
                    "per GPU, USR1 before the time limit -> checkpoint -> requeue -> resume) and "
                    "submit it with sbatch. Allocation flags default to the config's slurm: section.")
    slurm_submit.add_argument("models", nargs="+", metavar="CONFIG [key=value]")
    slurm_submit.add_argument("--nodes", type=int, metavar="N", help="nodes (default: slurm.nodes)")
    slurm_submit.add_argument("--gpus-per-node", type=int, metavar="G",
                              help="GPUs = tasks per node; 0 = one CPU task per node (default: "
                                   "slurm.gpus_per_node)")
    slurm_submit.add_argument("--partition", metavar="P", help="default: slurm.partition")
    slurm_submit.add_argument("--time", metavar="T", help="time limit, e.g. 2-00:00:00 (default: slurm.time)")
    slurm_submit.add_argument("--account", metavar="A", help="default: slurm.account")
    slurm_submit.add_argument("--dry-run", action="store_true",
                              help="print the job script; write and submit nothing")
    slurm_submit.set_defaults(func=cmd_slurm_submit, split=True)
    slurm_status = slurm_sub.add_parser(
        "status", help="a run's newest job: state, requeues, last logged step, log file")
    slurm_status.add_argument("run_dir", metavar="RUN_DIR")
    slurm_status.set_defaults(func=cmd_slurm_status)
    _add_shards_parser(sub)
    _add_engine_parsers(sub)
    _add_pipeline_parser(sub)
    _add_sweep_parser(sub)
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

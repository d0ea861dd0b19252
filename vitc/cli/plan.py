"""`vitc plan`: memory, time and cost of a run before it is booked."""

import argparse

from vitc.errors import VitcError


def cmd_plan(args: argparse.Namespace) -> int:
    from vitc.plan.gpus import DEFAULT_GPUS_FILE
    from vitc.plan.planner import check_fits, plan_run, sweep, with_loader
    from vitc.plan.report import format_json, format_plan, format_sweep
    from vitc.plan.setup import Cluster, load_run_config, run_setup
    from vitc.plan.throughput import loader_need

    if len(args.targets) != 1:
        raise VitcError(f"vitc plan takes one config or model name, got {args.targets}")
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu, args.mfu, args.dataset_size,
                      not args.no_overlap, args.gpus_file or DEFAULT_GPUS_FILE)
    cfg = load_run_config(args.targets[0], args.overrides)
    setup = run_setup(cfg, cluster)
    nodes = _node_list(args.sweep_nodes) if args.sweep_nodes else None
    plan = plan_run(setup) if nodes else check_fits(plan_run(setup))
    swept = sweep(setup, nodes) if nodes else None
    loader = None
    if cfg.data.decode_device == "cpu":
        loader = loader_need(plan.run.images_per_s / setup.nodes, setup.gpu.name, setup.spec.image_size,
                             cfg.data.auto_augment, args.loader_rate, args.node_cores)
        if loader.node_cores is not None:  # the GPUs wait for what the node's cores cannot make
            plan = with_loader(plan, loader.node_cores * loader.per_core)
    if args.format == "json":
        print(format_json(plan, swept, loader))
    else:
        print(format_sweep(swept, nodes, setup) if nodes else format_plan(plan, loader))
    return 0


def _node_list(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise VitcError(f"--sweep-nodes expects comma-separated node counts like 1,8,64,512, got '{text}'")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan", help="memory, time and cost of a run at cluster scale, before booking it",
        description="Plan a run: per-GPU memory by ZeRO stage (model states, activations), the "
                    "largest micro-batch that fits, step time (compute, exposed communication, "
                    "data wait) with ZeRO's communication as DeepSpeed runs the run's config, predicted MFU, images/s, epoch and total time, GPU-hours; every assumption "
                    "is printed beside the result (docs/plan.md). CONFIG_OR_MODEL is a YAML config "
                    "or a registry model name; key=value overrides apply to it.")
    plan.add_argument("targets", nargs="+", metavar="CONFIG_OR_MODEL [key=value]")
    plan.add_argument("--nodes", type=int, help="nodes (default: slurm.nodes)")
    plan.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: slurm.gpus_per_node)")
    plan.add_argument("--gpu", default="h100", help="a GPU of the table (default: h100)")
    plan.add_argument("--gpus-file", help="the GPU table (default: vitc/resources/gpus.yaml)")
    plan.add_argument("--mfu", type=float, default=0.4, help="share of peak the forward/backward kernels reach while nothing waits "
                      "(default 0.4); the predicted MFU is this × the compute share of the step")
    plan.add_argument("--dataset-size", type=int,
                      help="images per epoch (default: the manifest of data.train_shards)")
    plan.add_argument("--sweep-nodes", metavar="N,N,...",
                      help="scale-out table at these node counts, global batch held fixed")
    plan.add_argument("--no-overlap", action="store_true",
                      help="assume communication is not overlapped with compute")
    plan.add_argument("--loader-rate", type=float, metavar="IMAGES_PER_S",
                      help="train loader images/s per CPU core: row (a) of your `vitc bench data` "
                           "(default: vitc/resources/loader_rates.yaml for the run's resolution and recipe)")
    plan.add_argument("--node-cores", type=int, help="CPU cores per node (default: vitc/resources/loader_rates.yaml)")
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.set_defaults(func=cmd_plan, split="targets")


"""`vitc config show`: the config as a run will see it, with the values derived from it."""

import argparse
import json

from vitc.cli.args import one_config


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from vitc.config import config_to_dict, dump_config, load_config
    from vitc.run import derived_values

    cfg = load_config(one_config(args, "config show"), args.overrides)
    device = args.device or ("cpu" if cfg.train.device == "cpu" else "gpu")
    derived = {"derived": derived_values(cfg, args.world, device)}
    if args.format == "json":
        print(json.dumps({**config_to_dict(cfg), **derived}, indent=1))
    else:  # the config as `vitc train` saves it, then the derived values
        print(dump_config(cfg) + yaml.safe_dump(derived, sort_keys=False).rstrip("\n"))
    return 0


def add_parsers(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="WHAT")
    show = config_sub.add_parser(
        "show", help="the resolved config and what it derives (accumulation, lr, precision, ...)",
        description="Print CONFIG after _base_ inheritance and key=value overrides, plus a `derived:` "
                    "section: gradient accumulation and global batch on --world ranks, the lr at "
                    "that global batch, precision, ZeRO stage and the class count (when the "
                    "training manifest can be read), as `vitc train` would resolve them.")
    show.add_argument("configs", nargs="+", metavar="CONFIG [key=value]")
    show.add_argument("--world", type=int, default=1, help="ranks (GPUs) of the run (default 1)")
    show.add_argument("--device", choices=("gpu", "cpu"),
                      help="what `auto` resolves for (default: cpu if train.device=cpu, else gpu)")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    show.set_defaults(func=cmd_config_show, split="configs")

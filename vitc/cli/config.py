"""`vitc config show`: the config as a run will see it, with the values derived from it."""

import argparse
import json

from vitc.cli.args import one_config
from vitc.errors import VitcError


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from vitc.config import config_to_dict, load_config
    from vitc.preflight import device_kind
    from vitc.run import derived_values

    if args.world < 1:
        raise VitcError(f"vitc config show --world: expected 1 or more ranks, got {args.world}")
    cfg = load_config(one_config(args, "config show"), args.overrides)
    device = args.device or device_kind(cfg)
    derived = {"derived": derived_values(cfg, args.world, device)}
    shown = {**config_to_dict(cfg), "model": resolved_model(cfg, derived["derived"]["num_classes"])}
    if args.format == "json":
        print(json.dumps({**shown, **derived}, indent=1))
    else:  # the config as `vitc train` resolves it, then the derived values
        print(yaml.safe_dump(shown, sort_keys=False, default_flow_style=None) + yaml.safe_dump(derived, sort_keys=False).rstrip("\n"))
    return 0


def resolved_model(cfg, num_classes) -> dict:
    """The `model:` section with every value the registry fills in (width, depth, heads, ...)."""
    from vitc.config import config_to_dict, model_spec

    model = config_to_dict(cfg)["model"]
    spec = model_spec(cfg.model, num_classes if isinstance(num_classes, int) else 1)
    for key, value in model.items():
        if value is None and hasattr(spec, key):
            value = getattr(spec, key)
            model[key] = list(value) if isinstance(value, tuple) else value
    if isinstance(num_classes, int):  # `auto`, counted in the training manifest
        model["num_classes"] = num_classes
    return model


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
                      help="what `auto` resolves for (default: this machine's: gpu if it has a visible GPU "
                           "and train.device is not cpu, else cpu)")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    show.set_defaults(func=cmd_config_show, split="configs")

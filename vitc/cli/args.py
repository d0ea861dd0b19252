"""Argument helpers shared by the subcommands."""

import argparse

from vitc.errors import VitcError


def split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (targets, key=value overrides)."""
    return [v for v in values if "=" not in v], [v for v in values if "=" in v]


def one_config(args: argparse.Namespace, command: str) -> str:
    """The one CONFIG path a command takes."""
    if len(args.models) != 1:
        raise VitcError(f"vitc {command}: expected one CONFIG file, got {args.models or 'none'}")
    return args.models[0]

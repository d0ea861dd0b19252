"""Argument helpers shared by the subcommands."""

import argparse
import logging

from vitc.errors import VitcError
from vitc.launch.env import DistEnv, discover
from vitc.log import setup_logging


def split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (targets, key=value overrides)."""
    return [v for v in values if "=" not in v], [v for v in values if "=" in v]


def one_config(args: argparse.Namespace, command: str) -> str:
    """The one CONFIG path a command takes."""
    if len(args.configs) != 1:
        raise VitcError(f"vitc {command}: expected one CONFIG file, got {args.configs or 'none'}")
    return args.configs[0]


def job_rank(args: argparse.Namespace) -> DistEnv:
    """This process's place in the job, read once; logging set up for its rank (rank 0 talks)."""
    dist = discover()
    setup_logging(dist.rank, logging.DEBUG if args.verbose else logging.INFO)
    return dist

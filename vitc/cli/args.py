"""Argument helpers shared by the subcommands."""

import argparse
import logging

from vitc.distributed.env import DistEnv, discover
from vitc.errors import VitcError
from vitc.log import setup_logging

MODEL_HELP = "a registry model name: vit_p_1gf, vit_c_1gf, ... vit_c_369gf (vitc/models/spec.py)"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a CONFIG [key=value] positional reads `CONFIG [key=value ...]` in
    usage lines, not `CONFIG [key=value] [CONFIG [key=value] ...]`."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.nargs == "+" and isinstance(action.metavar, str) and action.metavar.endswith("]"):
            return action.metavar[:-1] + " ...]"
        return super()._format_args(action, default_metavar)


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options among `names` the user gave: options declared with `default=argparse.SUPPRESS`
    are absent otherwise, so the called function's own default applies (one place per default)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


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


def add_timing_args(parser: argparse.ArgumentParser, rounds: int, iters: int | None = None) -> None:
    """--iters, --rounds and --processes of a bench timed by `vitc.bench.timing`."""
    if iters is not None:
        parser.add_argument("--iters", type=int, default=iters, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (median taken)")
    parser.add_argument("--processes", type=int, default=1, metavar="K",
                        help="time each contender in K fresh processes, start order rotated, and take its "
                             "median process; their spread is printed (default 1)")

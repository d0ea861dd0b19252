"""`vitc` subcommands. Thin: parse arguments, call one function, print its result.

A VitcError (bad input) is printed as one line without a traceback and exits 2; Ctrl-C is one
line and exit 130; any other exception is a bug and keeps its traceback.
"""

import argparse
import logging
import sys

from vitc.cli import audit, bench, config, data, engine, pipelines, plan, slurm, sweep
from vitc.cli.args import HelpFormatter, split_overrides
from vitc.distributed.signals import INTERRUPTED_EXIT, Interrupted
from vitc.errors import VitcError
from vitc.log import setup_logging

# each module adds its subcommands; the work lives in the modules they call
COMMAND_GROUPS = (audit, plan, config, data, engine, pipelines, sweep, slurm, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitc", description="Pretrain Vision Transformers with a convolutional stem (ViT-C) at scale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    _use_formatter(parser)
    return parser


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """HelpFormatter for `parser` and every subcommand's parser (argparse does not pass it down)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _use_formatter(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (`vitc audit m --parity model.depth=12`)
    args, extra = parser.parse_known_args(argv)
    # `split` names the positional that mixes targets (configs, models) with key=value overrides
    positional = getattr(args, "split", None)
    if positional:
        targets, args.overrides = split_overrides(getattr(args, positional))
        setattr(args, positional, targets)
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    if positional and not getattr(args, positional):
        print("vitc: error: name at least one model or config", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except VitcError as e:
        print(f"vitc: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a signal during training: the step is saved, the job not requeued
        print(f"vitc: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training started (or in another command): nothing to save
        print("vitc: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT

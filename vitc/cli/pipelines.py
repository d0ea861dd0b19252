"""`vitc pipeline`: 21k pretrain -> 1k finetune, each stage a `vitc train` in a child process."""

import argparse

from vitc.cli.args import job_rank
from vitc.errors import VitcError


def cmd_pipeline(args: argparse.Namespace) -> int:
    from vitc.pipelines.pretrain_finetune import run_pipeline

    if len(args.configs) != 2:
        raise VitcError(f"vitc pipeline: expected PRETRAIN_CONFIG and FINETUNE_CONFIG, got {args.configs}")
    dist = job_rank(args)
    result = run_pipeline(*args.configs, args.run_dir, args.overrides, dist)
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
    pipeline.add_argument("configs", nargs="+", metavar="PRETRAIN_CONFIG FINETUNE_CONFIG [key=value]")
    pipeline.add_argument("--run-dir", required=True, help="directory holding every stage")
    pipeline.set_defaults(func=cmd_pipeline, split="configs")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_pipeline_parser(sub)

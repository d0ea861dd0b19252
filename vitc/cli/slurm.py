"""`vitc slurm submit|status`."""

import argparse
import sys

from vitc.cli.args import one_config


def cmd_slurm_submit(args: argparse.Namespace) -> int:
    from vitc.slurm.submit import resolve_submission, submit

    cfg = resolve_submission(one_config(args, "slurm submit"), args.overrides, nodes=args.nodes,
                             gpus_per_node=args.gpus_per_node, partition=args.partition,
                             time=args.time, account=args.account, mem=args.mem,
                             cpu_bind=args.cpu_bind, gpu_bind=args.gpu_bind, exit_wait_s=args.exit_wait_s)
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
    from vitc.slurm.submit import job_status

    print(job_status(args.run_dir).describe())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    slurm = sub.add_parser("slurm", help="submit a run to Slurm and follow it (docs/slurm.md)")
    slurm_sub = slurm.add_subparsers(dest="slurm", required=True, metavar="WHAT")
    slurm_submit = slurm_sub.add_parser(
        "submit", help="render vitc/resources/slurm/<slurm.template>.sbatch for a config and sbatch it",
        description="Save the resolved config in train.run_dir, render the job script (one task "
                    "per GPU, USR1 before the time limit -> checkpoint -> requeue -> resume) and "
                    "submit it with sbatch. Allocation flags default to the config's slurm: section.")
    slurm_submit.add_argument("configs", nargs="+", metavar="CONFIG [key=value]")
    slurm_submit.add_argument("--nodes", type=int, metavar="N", help="nodes (default: slurm.nodes)")
    slurm_submit.add_argument("--gpus-per-node", type=int, metavar="G",
                              help="GPUs = tasks per node; 0 = one CPU task per node (default: "
                                   "slurm.gpus_per_node)")
    slurm_submit.add_argument("--partition", metavar="P", help="default: slurm.partition")
    slurm_submit.add_argument("--time", metavar="T", help="time limit, e.g. 2-00:00:00 (default: slurm.time)")
    slurm_submit.add_argument("--account", metavar="A", help="default: slurm.account")
    slurm_submit.add_argument("--mem", metavar="M", help="memory per node, e.g. 500G; 0 = all (default: slurm.mem)")
    slurm_submit.add_argument("--cpu-bind", metavar="B", help="srun --cpu-bind for the tasks, e.g. cores "
                                                               "(default: slurm.cpu_bind)")
    slurm_submit.add_argument("--gpu-bind", metavar="B",
                              help="srun --gpu-bind, e.g. single:1 (one GPU per task, seen as cuda:0) or "
                                   "closest (default: slurm.gpu_bind)")
    slurm_submit.add_argument("--exit-wait-s", type=int, metavar="S",
                              help="once one task has exited, seconds the others get before the job is "
                                   "ended (srun --wait; default: slurm.exit_wait_s)")
    slurm_submit.add_argument("--dry-run", action="store_true",
                              help="print the job script; write and submit nothing")
    slurm_submit.set_defaults(func=cmd_slurm_submit, split="configs")
    slurm_status = slurm_sub.add_parser(
        "status", help="a run's newest job: state, requeues, last logged step, log file",
        description="Read RUN_DIR/slurm/jobs.txt (written by `vitc slurm submit`) and ask Slurm about "
                    "the newest job: its state, how often it was requeued, the last step the run "
                    "logged and the job's log file.")
    slurm_status.add_argument("run_dir", metavar="RUN_DIR")
    slurm_status.set_defaults(func=cmd_slurm_status)

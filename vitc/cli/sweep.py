"""`vitc sweep make|run|collect|plot|report`: the paper's optimizability sweep (vitc/sweep/)."""

import argparse
import sys

from vitc.cli.args import given
from vitc.errors import VitcError


def cmd_sweep_make(args: argparse.Namespace) -> int:
    from vitc.sweep.make import make_sweep

    if len(args.paths) != 2:
        raise VitcError(f"vitc sweep make: expected SPEC and SWEEP_DIR, got {args.paths}")
    runs = make_sweep(*args.paths, args.overrides, force=args.force)
    print(f"{args.paths[1]}: {len(runs)} run configs ({len({r.model for r in runs})} models × "
          f"{len({(r.optimizer, r.lr, r.weight_decay) for r in runs})} sampled settings); "
          f"train them with: vitc sweep run {args.paths[1]}")
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from vitc.sweep.run import failed_summary, run_local, slurm_array

    if args.slurm or args.dry_run:
        script, job_id, count = slurm_array(args.sweep_dir, args.max_concurrent, args.dry_run)
        print(script if args.dry_run else f"submitted job array {job_id}: {count} runs, at most "
              f"{args.max_concurrent} at once", end="\n" if job_id else "")
        return 0
    outcomes = run_local(args.sweep_dir, **given(args, "retries", "jobs"))
    counts = {s: sum(o.status == s for o in outcomes.values()) for s in {o.status for o in outcomes.values()}}
    print(f"{args.sweep_dir}: trained {len(outcomes)} runs: "
          + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing left to train"))
    failed = failed_summary(outcomes)
    if failed:  # diverged runs are results (100 % error); a crashed run is not
        print(f"vitc: error: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep_collect(args: argparse.Namespace) -> int:
    from vitc.sweep.analysis import curves, load_runs, summary_line
    from vitc.sweep.collect import collect

    path, _ = collect(args.sweep_dir)
    print(f"wrote {path}")
    print("\n".join(summary_line(c) for c in curves(load_runs(args.sweep_dir))))
    return 0


def cmd_sweep_plot(args: argparse.Namespace) -> int:
    from vitc.sweep.plot import plot_edf

    png, csv_path = plot_edf(args.sweep_dir, args.out, **given(args, "step", "name"))
    print(f"wrote {png} and {csv_path}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from vitc.sweep.report import write_report

    print(f"wrote {write_report(args.sweep_dir)}")
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
    make.add_argument("paths", nargs="+", metavar="SPEC SWEEP_DIR [key=value]")
    make.add_argument("--force", action="store_true",
                      help="re-make a sweep whose run configs would change, dropping those runs' "
                           "outputs and results")
    make.set_defaults(func=cmd_sweep_make, split="paths")
    run = sweep_sub.add_parser(
        "run", help="train the runs locally in sequence, or submit a Slurm job array",
        description="Locally: train each run not yet finished or diverged, one `vitc train` "
                    "process after another (or --jobs at once); a crashed run is retried (--retries), a diverged one "
                    "never. --slurm: submit them as one job array instead; re-running submits "
                    "only the runs still without a finished or diverged outcome.")
    run.add_argument("sweep_dir", metavar="SWEEP_DIR")
    run.add_argument("--slurm", action="store_true", help="submit a Slurm job array")
    run.add_argument("--max-concurrent", type=int, default=8,
                     help="array tasks running at once: --array=0-N%%K (default 8)")
    run.add_argument("--retries", type=int, default=argparse.SUPPRESS,
                     help="local runs: times a crashed run is retried (default: 3, as the authors' tooling)")
    run.add_argument("--jobs", type=int, default=argparse.SUPPRESS,
                     help="local runs trained at once, the CPU cores shared out between them (default: one)")
    run.add_argument("--dry-run", action="store_true", help="print the job array script; submit nothing")
    run.set_defaults(func=cmd_sweep_run)
    collect = sweep_sub.add_parser(
        "collect", help="every run's status and its EMA model's best top-1 -> SWEEP_DIR/results.csv",
        description="Status (finished, diverged, failed, incomplete) from each run's outcome.json; "
                    "best_ema_top1 from its metrics.jsonl. In the EDFs diverged runs count as 100% "
                    "error (as in the paper); crashed runs and runs with no outcome yet are left out.")
    collect.add_argument("sweep_dir", metavar="SWEEP_DIR")
    collect.set_defaults(func=cmd_sweep_collect)
    plot = sweep_sub.add_parser(
        "plot", help="EDF curves per model and optimizer -> PNG + CSV",
        description="EDF(e) = fraction of runs with top-1 error below e, one curve per model and "
                    "optimizer, from SWEEP_DIR/results.csv, by the rules of `vitc sweep report`.")
    plot.add_argument("sweep_dir", metavar="SWEEP_DIR")
    plot.add_argument("--out", help="directory for edf.png and edf.csv (default: SWEEP_DIR)")
    plot.add_argument("--name", default=argparse.SUPPRESS, help="file name stem of the PNG and CSV (default: edf)")
    plot.add_argument("--step", type=float, default=argparse.SUPPRESS,
                      help="error resolution of the CSV, in %% (default: 0.5)")
    plot.set_defaults(func=cmd_sweep_plot)
    report = sweep_sub.add_parser(
        "report", help="one self-contained HTML page of the sweep -> SWEEP_DIR/report.html",
        description="From SWEEP_DIR/results.csv: a summary per model and optimizer, EDFs of the EMA "
                    "model's error and of Δerror against the model's best run, lr-wd scatter and "
                    "the good range (docs/pipelines.md).")
    report.add_argument("sweep_dir", metavar="SWEEP_DIR")
    report.set_defaults(func=cmd_sweep_report)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_sweep_parser(sub)

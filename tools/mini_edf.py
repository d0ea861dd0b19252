"""The optimizability sweep in miniature on CPU (docs/results/mini_edf.md): digit shards ->
`vitc sweep make|run|collect|report|plot` on configs/sweeps/mini_edf.yaml -> docs/results/mini_edf*.

    nice -n 10 .venv/bin/python tools/mini_edf.py [--out runs/mini_edf] [--jobs 2] [--no-train]

Re-running resumes: finished and diverged runs are kept, the others trained. --no-train only
collects and reports what has run so far (a sweep still training, or stopped part way).
"""

import argparse
import shutil
import sys
from pathlib import Path

from vitc.cli import main
from vitc.pipelines.demo import prepare_digits
from vitc.sweep.run import pending_runs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/mini_edf", help="directory for shards and the sweep")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (one core each on 2 cores)")
    parser.add_argument("--no-train", action="store_true", help="collect and report only")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    train, val = prepare_digits(out)  # the same digits `vitc demo` trains on (20 % held out)
    sweep = str(out / "sweep")
    steps = [["sweep", "make", str(REPO / "configs/sweeps/mini_edf.yaml"), sweep,
              f"data.train_shards={train}", f"data.val_shards={val}"],
             *([] if args.no_train else [["sweep", "run", sweep, "--jobs", str(args.jobs)]]),
             ["sweep", "collect", sweep], ["sweep", "report", sweep],
             ["sweep", "plot", sweep, "--out", str(RESULTS), "--name", "mini_edf"]]
    for argv in steps:
        if main(argv) != 0:
            sys.exit(1)
        left = pending_runs(Path(sweep)) if argv[:2] == ["sweep", "run"] else []
        if left:  # stopped by a signal: docs/results keeps the last complete sweep's figures
            sys.exit(f"{len(left)} runs still to train; run the same command to continue")
    shutil.copyfile(out / "sweep" / "report.html", RESULTS / "mini_edf_report.html")
    shutil.copyfile(out / "sweep" / "results.csv", RESULTS / "mini_edf_runs.csv")

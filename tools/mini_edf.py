"""The optimizability sweep in miniature on CPU (docs/results/mini_edf.md): digit shards ->
`vitc sweep make|run|collect|plot` on configs/sweeps/mini_edf.yaml -> docs/results/mini_edf.{png,csv}.

    .venv/bin/python tools/mini_edf.py [--out runs/mini_edf]

Re-running resumes: finished and diverged runs are kept.
"""

import argparse
import sys
from pathlib import Path

from vitc.cli import main
from vitc.engine.demo import prepare_digits

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/mini_edf", help="directory for shards and the sweep")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    train, val = prepare_digits(out)  # the same digits `vitc demo` trains on (20 % held out)
    sweep = str(out / "sweep")
    steps = [["sweep", "make", str(REPO / "configs/sweeps/mini_edf.yaml"), sweep,
              f"data.train_shards={train}", f"data.val_shards={val}"],
             ["sweep", "run", sweep], ["sweep", "collect", sweep],
             ["sweep", "plot", sweep, "--out", str(REPO / "docs/results"), "--name", "mini_edf"]]
    for argv in steps:
        if main(argv) != 0:
            sys.exit(1)

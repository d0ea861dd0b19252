"""Rewrite tests/data/model_costs.json from the shipped configs (after an intended cost change)."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_audit import PINNED, shipped_model_costs  # noqa: E402

from vitc.fileio import atomic_write_text  # noqa: E402

if __name__ == "__main__":
    # --help (or any argument) prints the usage and stops before anything is written
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    costs = shipped_model_costs()
    atomic_write_text(PINNED, json.dumps(costs, indent=1) + "\n")
    print(f"pinned {len(costs)} configs in {PINNED}")

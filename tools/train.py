"""Train a model: `python tools/train.py CONFIG [key=value...]`, the same as `vitc train`.

Launch one process per GPU with torchrun (`torchrun --nproc_per_node 8 tools/train.py CONFIG`)
or Slurm srun; see docs/engine.md.
"""

import sys

from vitc.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

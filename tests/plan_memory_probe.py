"""Run `vitc train` with a resident-memory probe around the model (the `vitc plan` memory check).

Usage (under torchrun or alone): python tests/plan_memory_probe.py OUT_PREFIX STEPS vitc-train-args...
Each rank writes OUT_PREFIX.<rank>.json: the peak RSS added, from just before the trainer builds
the model to the end of micro-step STEPS (before any checkpoint is written).

The trainer does not log these yet; the two hooks below stand in for two lines it could carry
(vitc.plan.measure.RssProbe.start() before `_build_model`, `probe.added()` in its step log).
"""

import json
import sys
from pathlib import Path

from vitc.cli import main
from vitc.engine.trainer import Trainer
from vitc.plan.measure import RssProbe

out_prefix, steps, train_args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
probe: dict = {}
build_model, micro_step = Trainer._build_model, Trainer._micro_step


def probed_build_model(self):
    probe["rss"] = RssProbe.start()
    return build_model(self)


def probed_micro_step(self, images, targets):
    loss = micro_step(self, images, targets)
    probe["steps"] = probe.get("steps", 0) + 1
    if probe["steps"] == steps:
        Path(f"{out_prefix}.{self.dist.rank}.json").write_text(json.dumps(
            {"rank": self.dist.rank, "world_size": self.dist.world_size, "steps": steps,
             "baseline": probe["rss"].baseline, "added": probe["rss"].added()}))
    return loss


Trainer._build_model, Trainer._micro_step = probed_build_model, probed_micro_step
sys.exit(main(["train", *train_args]))

"""Run `vitc train` (ZeRO-3 with an EMA) and, after it, record what the EMA holds on each rank.

Usage (under torchrun): python tests/ema_probe.py OUT_PREFIX vitc-train-args...
Each rank writes OUT_PREFIX.<rank>.json: the bytes of its EMA parameter shards and buffers, the
number of parameters and tensors, and whether evaluating the EMA (swapped into the engine) left
every partition and every gathered (persistent) parameter of the engine bit for bit as it was.
"""

import json
import sys
from pathlib import Path

import torch

from vitc.cli import main
from vitc.engine.trainer import Trainer

out_prefix, train_args = sys.argv[1], sys.argv[2:]
fit = Trainer.fit


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for p in module.parameters() for t in (p.ds_tensor, p.data)]


def probed_fit(self):
    stopped = fit(self)
    module, ema = self.engine.module, self.ema
    before = weights(module)
    with ema.applied(self.engine):
        swapped = all(torch.equal(p.ds_tensor.float(), ema.shards[k]) for k, p in module.named_parameters())
    restored = all(torch.equal(a, b) for a, b in zip(before, weights(module)))
    Path(f"{out_prefix}.{self.dist.rank}.json").write_text(json.dumps({
        "shard_bytes": sum(t.numel() * t.element_size() for t in ema.shards.values()),
        "buffer_bytes": sum(t.numel() * t.element_size() for t in ema.buffers.values()),
        "tensors": len(ema.shards), "params": sum(p.ds_numel for p in module.parameters()),
        "swapped": swapped, "restored": restored}))
    return stopped


Trainer.fit = probed_fit
sys.exit(main(["train", *train_args]))

"""Run `vitc train` (ZeRO-3 with an EMA) and, after it, record what the EMA holds on each rank.

Usage (under torchrun): python tests/ema_probe.py OUT_PREFIX vitc-train-args...
Each rank writes OUT_PREFIX.<rank>.json: the bytes of its EMA parameter shards and buffers, the
number of parameters and tensors, and whether evaluating the EMA (swapped into the engine) left
every partition and every gathered (persistent) parameter of the engine bit for bit as it was;
whether the shards saved by all ranks join into the EMA the engine gathers, and whether a rank
slices its own shards back out of that whole EMA (a resume on another world size).
"""

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as tdist
from safetensors.torch import save_file

from vitc.checkpoint.ema_files import EMA_FILE, full_ema_state
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
    joined, sliced = saved_and_loaded(self, Path(f"{out_prefix}.shards"), Path(f"{out_prefix}.whole"))
    Path(f"{out_prefix}.{self.dist.rank}.json").write_text(json.dumps({
        "shard_bytes": sum(t.numel() * t.element_size() for t in ema.shards.values()),
        "buffer_bytes": sum(t.numel() * t.element_size() for t in ema.buffers.values()),
        "tensors": len(ema.shards), "params": sum(p.ds_numel for p in module.parameters()),
        "swapped": swapped, "restored": restored, "joined": joined, "sliced": sliced}))
    return stopped


def saved_and_loaded(trainer, shards_dir: Path, whole_dir: Path) -> tuple[bool, bool]:
    ema, rank, world = trainer.ema, trainer.dist.rank, trainer.dist.world_size
    shards_dir.mkdir(exist_ok=True)
    whole_dir.mkdir(exist_ok=True)
    ema.save(shards_dir, rank, world)
    tdist.barrier()
    whole = full_ema_state(shards_dir)
    with ema.applied(trainer.engine) as engine:
        params = list(engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            joined = all(torch.equal(whole[k], p.detach().float()) for k, p in params)
    if rank == 0:
        save_file(whole, str(whole_dir / EMA_FILE))
    tdist.barrier()
    kept = {k: v.clone() for k, v in ema.shards.items()}
    for shard in ema.shards.values():
        shard.fill_(float("nan"))
    ema.load(whole_dir, rank, world)
    return joined, all(torch.equal(ema.shards[k], v) for k, v in kept.items())


Trainer.fit = probed_fit
sys.exit(main(["train", *train_args]))

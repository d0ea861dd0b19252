"""The EMA's files in a checkpoint tag: whole (ZeRO 0-2) or one shard per rank (ZeRO-3), and reading them back.

Written by `vitc.engine.ema`; read by resume, export and init_from, which need no trainer.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vitc.errors import VitcError

EMA_FILE = "ema.safetensors"  # ZeRO 0-2: beside each checkpoint's DeepSpeed files, written by rank 0
SHARD_FILE = "ema_shard_{rank:05d}_of_{world:05d}.safetensors"  # ZeRO-3: one per rank


def full_ema_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The whole EMA state dict of one checkpoint: `ema.safetensors`, or the ZeRO-3 shards joined
    (on the CPU, one tensor at a time)."""
    if (tag_dir / EMA_FILE).is_file():
        return load_file(str(tag_dir / EMA_FILE))
    files = _shard_files(tag_dir)
    if not files:
        raise VitcError(f"{tag_dir} has no EMA weights: the run trained with optim.ema_alpha=0")
    world = int(files[0].stem.rsplit("_", 1)[1])
    if len(files) != world:
        raise VitcError(f"{tag_dir} holds {len(files)} EMA shard files of {world}: the checkpoint is incomplete")
    handles = [safe_open(str(f), "pt") for f in files]
    shapes = json.loads(handles[0].metadata()["shapes"])
    state = {k.removeprefix("buffer."): handles[0].get_tensor(k) for k in handles[0].keys()
             if k.startswith("buffer.")}
    for key, shape in shapes.items():
        flat = torch.cat([h.get_tensor(f"param.{key}") for h in handles])
        state[key] = flat[:torch.Size(shape).numel()].reshape(shape)
    return state


def ema_saved(tag_dir: Path) -> bool:
    """Whether a checkpoint holds an EMA (a run may turn it on when it resumes)."""
    return (tag_dir / EMA_FILE).is_file() or bool(_shard_files(tag_dir))


def _shard_files(tag_dir: Path) -> list[Path]:
    return sorted(tag_dir.glob(SHARD_FILE.replace("{rank:05d}", "*").replace("{world:05d}", "*")))

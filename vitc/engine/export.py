"""`vitc export`: a run's newest complete checkpoint -> one safetensors file a plain model loads.

ZeRO partitions are consolidated by DeepSpeed's own fp32 consolidation (`zero_to_fp32`), which
reads the fp32 master weights from the optimizer partitions of every rank. A ZeRO-0 checkpoint
holds the whole module, which is read with `torch.load(weights_only=True)`. The output is
safetensors, so loading weights (`load_weights`) never unpickles anything.
"""

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitc.engine import checkpoint
from vitc.engine.ema import full_ema_state
from vitc.errors import VitcError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def consolidated_state_dict(run_dir: str | os.PathLike, ema: bool = False) -> tuple[dict[str, torch.Tensor], checkpoint.CheckpointInfo]:
    """Full fp32 weights (or the EMA weights) of the newest complete checkpoint in `run_dir`."""
    info = checkpoint.newest_checkpoint(run_dir)
    if info is None:
        raise VitcError(f"no complete checkpoint in {checkpoint.checkpoint_root(run_dir)} "
                        "(train with `vitc train` first)")
    tag_dir = checkpoint.checkpoint_root(run_dir) / info.tag
    if ema:  # one file (ZeRO 0-2) or one shard per rank (ZeRO-3), joined
        return full_ema_state(tag_dir), info
    if any(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=info.tag)
    else:
        state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info


def export_weights(run_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32",
                   ema: bool = False, fmt: str = "vitc") -> Path:
    """Write the consolidated weights to `out` (.safetensors) atomically; returns the path.
    fmt="timm": `out` is a directory timm loads (vitc/engine/timm_format.py)."""
    if dtype not in DTYPES:
        raise VitcError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    state, info = consolidated_state_dict(run_dir, ema)
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {"vitc_checkpoint": json.dumps(info.__dict__), "dtype": dtype, "ema": str(ema)}
    if fmt == "timm":
        from vitc.engine.timm_format import write_run_as_timm

        return write_run_as_timm(run_dir, state, out, metadata)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    log.info("exported %s (step %d, %d tensors, %s) to %s", info.tag, info.step, len(state), dtype, out)
    return out


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (no pickle), as fp32."""
    path = Path(path)
    if not path.is_file():
        raise VitcError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VitcError(f"{path} is not a readable safetensors file ({e}); export weights with "
                        "`vitc export RUN_DIR --out model.safetensors`") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

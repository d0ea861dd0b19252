"""`vitc export`: a run's newest intact checkpoint -> one safetensors file a plain model loads.

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vitc.engine import checkpoint, integrity
from vitc.engine.ema import EMA_FILE
from vitc.errors import VitcError

log = logging.getLogger(__name__)

CLASSES_KEY = "classes"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def consolidated_state_dict(run_dir: str | os.PathLike, ema: bool = False) -> tuple[dict[str, torch.Tensor], checkpoint.CheckpointInfo]:
    """Full fp32 weights (or the EMA weights) of the newest intact checkpoint in `run_dir`."""
    info = checkpoint.newest_intact_checkpoint(run_dir)
    if info is None:
        raise VitcError(f"no complete checkpoint in {checkpoint.checkpoint_root(run_dir)} "
                        "(train with `vitc train` first)")
    tag_dir = checkpoint.checkpoint_root(run_dir) / info.tag
    if ema:
        if not (tag_dir / EMA_FILE).is_file():
            raise VitcError(f"{tag_dir} has no EMA weights: the run trained with optim.ema_alpha=0")
        return load_file(str(tag_dir / EMA_FILE)), info
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
    classes = checkpoint.recorded(run_dir, info, "classes")
    if classes is not None:  # name -> label of the training manifest: `vitc eval` checks its data against it
        metadata[CLASSES_KEY] = json.dumps(classes)
    if fmt == "timm":
        from vitc.engine.timm_format import write_run_as_timm

        return write_run_as_timm(run_dir, state, out, metadata)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as e:
        integrity.remove(tmp)
        if not integrity.out_of_space(e):
            raise VitcError(f"writing {out} failed: {e}") from None
        raise VitcError(integrity.space_line("the exported weights", out,
                                             sum(v.numel() * v.element_size() for v in state.values()))) from None
    os.replace(tmp, out)
    log.info("exported %s (step %d, %d tensors, %s) to %s", info.tag, info.step, len(state), dtype, out)
    return out


def weight_classes(path: str | os.PathLike) -> dict[str, int] | None:
    """The class names (name -> label) an exported file was trained on; None if not recorded."""
    try:
        with safe_open(str(path), "pt") as f:
            value = (f.metadata() or {}).get(CLASSES_KEY)
    except (SafetensorError, OSError):
        return None  # load_weights reports an unreadable file
    return json.loads(value) if value else None


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

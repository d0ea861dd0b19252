"""`vitc export`: a run's newest intact checkpoint -> one safetensors file a plain model loads.

The weights exported are the fp32 master weights. Every ZeRO checkpoint (stages 1-3, any
precision) is consolidated by DeepSpeed's own `zero_to_fp32` from the optimizer's fp32 partitions,
frozen parameters included (their module copy is fp32: vitc trains fp32 parameters under autocast,
vitc/deepspeed_config.py). A ZeRO-0 checkpoint's `module` is the masters, read with
`torch.load(weights_only=True)`. Checkpoints written before that numeric model, by DeepSpeed's
ZeRO-1 `BF16_Optimizer` (`bf16_zero_pp_rank_*` beside one `mp_rank_00_model_states.pt`), keep
their masters in a form `zero_to_fp32` does not read; they are merged here by their
`param_slice_mappings`. The output is safetensors, so loading weights (`load_weights`) never
unpickles anything.
"""

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vitc.checkpoint import integrity
from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.ema_files import full_ema_state
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
    if ema:  # one file (ZeRO 0-2) or one shard per rank (ZeRO-3), joined
        return full_ema_state(tag_dir), info
    whole = tag_dir / "mp_rank_00_model_states.pt"  # ZeRO 0-2; ZeRO-3 has one partition per rank
    state = {}
    if whole.is_file() and any(tag_dir.glob("bf16_zero_pp_rank_*optim_states.pt")):
        state = bf16_optimizer_masters(tag_dir)
    elif any(tag_dir.glob("*optim_states.pt")):
        state = zero_masters(tag_dir)
    if whole.is_file():
        module = torch.load(whole, map_location="cpu", weights_only=True)["module"]
        # frozen parameters (train.freeze) have no optimizer state, and DeepSpeed's ZeRO-1
        # consolidation leaves them out: they never changed, so the module's copy is theirs
        # (zero_to_fp32 restores ZeRO-2/3's frozen parameters itself, from their fragments)
        state = module | state if any(tag_dir.glob("*optim_states.pt")) else module
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info


def zero_masters(tag_dir: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's consolidation of a ZeRO 1-3 checkpoint tag (its progress output goes to the debug log)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):  # prints and a tqdm bar
        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    log.debug("zero_to_fp32: %s", printed.getvalue().strip())
    return state


def bf16_optimizer_masters(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 masters of DeepSpeed's BF16_Optimizer checkpoint, with the module's buffers.

    Each rank's file holds, per parameter group, its flat fp32 partition and where each parameter's
    fragment lies in it (`param_slice_mappings`, deepspeed/runtime/bf16_optimizer.py `state_dict`);
    a parameter's fragments in rank order are the whole flat parameter."""
    model = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    shapes = {name: shape for group in model["param_shapes"] for name, shape in group.items()}
    fragments: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
    ranks = sorted(tag_dir.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda p: int(p.name.split("_")[4]))
    for path in ranks:
        optim = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for flat, mapping in zip(optim["single_partition_of_fp32_groups"], optim["param_slice_mappings"]):
            for name, where in mapping.items():
                fragments[name].append(flat.narrow(0, where.start, where.numel))
    state = {name: torch.cat(fragments[name]).view(shape).clone() for name, shape in shapes.items()}
    buffers = set(model["buffer_names"])
    return state | {k: v for k, v in model["module"].items() if k in buffers}


def export_weights(run_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32",
                   ema: bool = False, fmt: str = "vitc") -> Path:
    """Write the consolidated weights to `out` (.safetensors) atomically; returns the path.
    fmt="timm": `out` is a directory timm loads (vitc/weights/timm_format.py)."""
    if dtype not in DTYPES:
        raise VitcError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    state, info = consolidated_state_dict(run_dir, ema)
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {"vitc_checkpoint": json.dumps(info.__dict__), "dtype": dtype, "ema": str(ema)}
    classes = checkpoint.recorded(run_dir, info, "classes")
    if classes is not None:  # name -> label of the training manifest: `vitc eval` checks its data against it
        metadata[CLASSES_KEY] = json.dumps(classes)
    if fmt == "timm":
        from vitc.weights.timm_format import write_run_as_timm

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

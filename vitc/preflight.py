"""What a run needs from the disk, checked before anything heavy starts (no torch, no DeepSpeed).

`vitc train` calls `check_run_inputs` after the config has passed its schema and before it
imports the engine, takes the run directory's lock or forks a loader worker: a shard directory that
does not exist, pretrained weights that are not there or not weights, or a run directory trained
with another model are then one line within a second, and nothing is written (no outcome.json, no
run directory). The engine checks the same things again where it uses them (a file can change).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

from vitc.config import load_config, model_spec
from vitc.errors import VitcError
from vitc.run import Run, resolve_run
from vitc.schema import Config

NOT_ARCHITECTURE = ("name", "drop_path", "act_checkpoint")  # a resume may change these
SAVED_CONFIG = "config.yaml"  # what the trainer saves in RUN_DIR at its start (vitc.config.save_config)


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, read from the driver's /proc entries (no CUDA, no torch).
    CUDA_VISIBLE_DEVICES set to nothing (or -1) hides them all, as CUDA reads it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    root = Path("/proc/driver/nvidia/gpus")
    found = len(list(root.iterdir())) if root.is_dir() else 0
    return min(found, len(visible.split(","))) if visible is not None else found


def device_kind(cfg: Config) -> str:
    """'gpu' or 'cpu': what `train.device` resolves to on this machine."""
    if cfg.train.device == "cuda" and not visible_gpus():
        raise VitcError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return "cpu" if cfg.train.device == "cpu" or not visible_gpus() else "gpu"


def check_run_inputs(cfg: Config, world_size: int) -> Run:
    """The run `cfg` describes on `world_size` ranks of this machine, after checking its shards,
    manifests, `finetune.init_from` and the model of the run it resumes. Raises one VitcError."""
    for split in ("train", "val"):
        _check_local_paths(getattr(cfg.data, f"{split}_shards"), f"data.{split}_shards")
        _check_local_paths(getattr(cfg.data, f"{split}_manifest"), f"data.{split}_manifest")
    if cfg.data.train_shards is None:
        raise VitcError("data.train_shards is not set: expected a shard directory from `vitc shards build`")
    run = resolve_run(cfg, world_size, device_kind(cfg))
    if cfg.finetune.init_from is not None:
        check_init_from(cfg.finetune.init_from)
    if cfg.checkpoint.resume:
        check_resumed_model(cfg, run)
    return run


def _check_local_paths(value: str | list[str] | None, key: str) -> None:
    """A plain local path (not a URL, `pipe:` command or brace pattern) must exist."""
    for item in [value] if isinstance(value, str) else value or []:
        if "://" in item or item.startswith("pipe:") or "{" in item or "::" in item:
            continue
        if not Path(item).exists():
            raise VitcError(f"{key}: '{item}' does not exist")


def check_init_from(source: str) -> None:
    """`finetune.init_from` is a run directory with checkpoints, a timm directory, or a readable
    .safetensors file (its header is read, not its tensors)."""
    path = Path(source)
    if not path.exists():
        raise VitcError(f"finetune.init_from: '{source}' does not exist; expected a .safetensors file "
                        "from `vitc export` or a run directory")
    if path.is_dir():
        if not (path / "checkpoints").is_dir() and not (path / "model.safetensors").is_file():
            raise VitcError(f"finetune.init_from: '{source}' is a directory without checkpoints/ "
                            "(a run directory) or model.safetensors (a timm export)")
        return
    if path.suffix != ".safetensors":
        raise VitcError(f"finetune.init_from: expected a .safetensors file from `vitc export` or a run "
                        f"directory, got '{source}'")
    _check_safetensors_header(path, "finetune.init_from")


def _check_safetensors_header(path: Path, key: str) -> None:
    """The safetensors format: an 8-byte little-endian length, then that many bytes of JSON."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            ok = 0 < size <= path.stat().st_size - 8
            header = json.loads(f.read(size)) if ok else None
    except (OSError, ValueError) as e:
        raise VitcError(f"{key}: '{path}' is not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise VitcError(f"{key}: '{path}' is not a safetensors file (no header of tensors)")


def check_resumed_model(cfg: Config, run: Run) -> None:
    """A run directory that holds checkpoints was trained with the model its config.yaml names;
    this config must build the same network (the name may differ)."""
    run_dir = Path(cfg.train.run_dir)
    saved_config = run_dir / SAVED_CONFIG
    checkpoints = run_dir / "checkpoints"
    if not saved_config.is_file() or not checkpoints.is_dir() or not any(
            p.name.startswith("step_") for p in checkpoints.iterdir()):
        return
    saved_model = load_config(saved_config).model
    classes = run.num_classes
    saved = model_spec(saved_model, classes if saved_model.num_classes == "auto" else None)
    mine = model_spec(cfg.model, classes)
    differ = [f.name for f in dataclasses.fields(mine)
              if f.name not in NOT_ARCHITECTURE and getattr(saved, f.name) != getattr(mine, f.name)]
    if differ:
        what = ", ".join(f"{k} {_show(getattr(saved, k))} vs {_show(getattr(mine, k))}" for k in differ[:4])
        raise VitcError(f"{run_dir} holds checkpoints of {saved.name} with a {saved.stem} stem, but this "
                        f"config builds {mine.name} with a {mine.stem} stem ({what}): set train.run_dir "
                        "to a new directory, or use the run's model")


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)

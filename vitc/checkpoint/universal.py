"""A checkpoint loaded on another number of ranks or at another ZeRO stage: DeepSpeed's universal
checkpoint. Rank 0 converts the tag once with `python -m deepspeed.checkpoint.ds_to_universal` into
TAG_universal, made loadable by an engine of every ZeRO stage 1-3 (`loadable_at_every_stage`), and
the run loads it with `checkpoint.load_universal`. ZeRO-0 checkpoints hold whole states and load
on any world size; between ZeRO-0 and ZeRO 1-3 DeepSpeed has no conversion.

SGD: DeepSpeed's converter reads Adam's moments only (ds_to_universal.py `extract_zero_shards*`
take `exp_avg` and `exp_avg_sq` by name, a KeyError for an SGD checkpoint), while its ZeRO 1-2
loader takes whatever state files a parameter's directory holds (universal_checkpoint.py
`load_hp_checkpoint_state`, then `map_to_flat_opt_states` by those keys). So an SGD checkpoint is
converted through an input copy whose momentum buffer stands in for the moments
(`_momentum_as_moments`), and the converted moment files are renamed back to `momentum_buffer.pt`
(`_moments_as_momentum`): vitc's code only because the converter names Adam's keys.
"""

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitc.checkpoint.store import UNIVERSAL_SUFFIX, CheckpointInfo, checkpoint_root
from vitc.errors import VitcError

log = logging.getLogger(__name__)

CONVERT_POLL_S = 2.0  # how often ranks other than 0 look for a finished conversion


def loadable_tag(run_dir: Path, info: CheckpointInfo, world_size: int, zero_stage: int, rank: int,
                 optimizer: str = "adamw") -> tuple[str, bool]:
    """(tag to load, whether it is a universal checkpoint). A ZeRO checkpoint saved on another
    number of ranks (or at another stage) is converted once, by rank 0, into TAG_universal while
    the other ranks wait for it on the filesystem: no collective, so no collective timeout bounds
    a conversion (`vitc train` calls this, through vitc/checkpoint/resume_point.py, with no
    collective pending). What DeepSpeed cannot
    load is refused in one line naming the alternative. Every rank calls this."""
    same_layout = info.world_size == world_size and info.zero_stage == zero_stage
    if same_layout or (info.zero_stage == 0 and zero_stage == 0):
        return info.tag, False  # ZeRO-0 keeps whole optimizer state: any world size loads it
    if info.zero_stage == 0 or zero_stage == 0:
        raise VitcError(f"checkpoint {info.tag} was saved at ZeRO-{info.zero_stage} and this run uses "
                        f"train.zero_stage={zero_stage}: DeepSpeed converts checkpoints between ZeRO stages "
                        f"1-3 only; resume with train.zero_stage={info.zero_stage}, or start a new run from "
                        f"its weights with finetune.init_from={run_dir}")
    if zero_stage == 3 and optimizer != "adamw":
        # stage3.py `load_hp_checkpoint_state_from_checkpoint_dir_stage3` reads fp32, exp_avg and
        # exp_avg_sq for every parameter: an SGD momentum buffer has no place there
        raise VitcError(f"checkpoint {info.tag} (ZeRO-{info.zero_stage}, {info.world_size} rank(s)) needs a "
                        f"universal checkpoint to load at ZeRO-3 on {world_size} rank(s), and DeepSpeed's ZeRO-3 "
                        f"loads only AdamW's state from one (optim.name={optimizer}): resume on "
                        f"{info.world_size} rank(s) at ZeRO-{info.zero_stage}, or at ZeRO-1 or 2")
    universal = checkpoint_root(run_dir) / (info.tag + UNIVERSAL_SUFFIX)
    if rank == 0 and not universal.is_dir():
        log.debug("checkpoint %s was saved on %d rank(s) at ZeRO-%d, this run has %d at ZeRO-%d: "
                  "converting it to a universal checkpoint", info.tag, info.world_size, info.zero_stage,
                  world_size, zero_stage)
        convert_to_universal(checkpoint_root(run_dir), info.tag, momentum=optimizer == "sgd")
    while not universal.is_dir():  # rank 0 converts; a failure there ends the job (torchrun, srun --kill-on-bad-exit)
        time.sleep(CONVERT_POLL_S)
    return universal.name, True


def convert_to_universal(root: Path, tag: str, workers: int | None = None, momentum: bool = False) -> Path:
    """Run `python -m deepspeed.checkpoint.ds_to_universal` on root/tag into root/TAG_universal with
    `workers` parallel extract and merge processes (default: this process's CPUs), its progress in
    the debug log. It works in root/.convert-TAG, renamed at the end: a finished conversion is a
    TAG_universal directory and is kept; a half one is the work directory, which is redone."""
    workers = workers or len(os.sched_getaffinity(0))
    work = root / f".convert-{tag}"
    if work.exists():
        log.warning("an unfinished conversion of %s was left in %s: converting again", tag, work)
        shutil.rmtree(work)
    out = work / (tag + UNIVERSAL_SUFFIX)
    source = _momentum_as_moments(root / tag, work / tag) if momentum else root / tag
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
           "--output_folder", str(out), "--num_extract_workers", str(workers),
           # merging holds whole tensors per worker: DeepSpeed advises fewer merge than extract workers
           "--num_merge_workers", str(max(1, workers // 2))]
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.debug("ds_to_universal: %s", line[-300:])
                tail = [*tail[-4:], line]
    if proc.returncode != 0:
        raise VitcError(f"converting checkpoint {root / tag} to a universal checkpoint failed "
                        f"(kept for a retry in {work}):\n" + "\n".join(tail))
    if source != root / tag:
        _moments_as_momentum(out / "zero")
    loadable_at_every_stage(out)
    os.replace(out, root / out.name)
    shutil.rmtree(work, ignore_errors=True)
    return root / out.name


MOMENTUM, MOMENTS = "momentum_buffer", ("exp_avg", "exp_avg_sq")


def _momentum_as_moments(tag_dir: Path, copy: Path) -> Path:
    """`copy`: the SGD tag `tag_dir` whose optimizer-state files show each momentum buffer under
    both moments' names (one tensor, saved once), its other files linked."""
    copy.mkdir(parents=True)
    for path in (p for p in tag_dir.iterdir() if p.is_file()):
        if path.name.endswith("optim_states.pt"):
            state = torch.load(path, map_location="cpu", weights_only=False)
            _alias_momentum(state)
            torch.save(state, copy / path.name)
        else:
            _link_or_copy(path, copy / path.name)
    return copy


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link, or a copy where the filesystem refuses links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _alias_momentum(value) -> bool:
    """Put every optimizer state dict's momentum buffer under the moments' names (in place);
    whether there was one to alias."""
    found = False
    if isinstance(value, dict):
        if MOMENTUM in value and not any(m in value for m in MOMENTS):
            value.update(dict.fromkeys(MOMENTS, value[MOMENTUM]))
            return True
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return False
    for item in items:
        found = _alias_momentum(item) or found
    return found


def _moments_as_momentum(zero_dir: Path) -> None:
    """After converting an SGD checkpoint: each parameter's exp_avg.pt is its momentum buffer again;
    exp_avg_sq.pt (the same values) goes."""
    for param_dir in (p for p in zero_dir.iterdir() if p.is_dir()):
        if (param_dir / "exp_avg.pt").is_file():
            os.replace(param_dir / "exp_avg.pt", param_dir / f"{MOMENTUM}.pt")
            (param_dir / "exp_avg_sq.pt").unlink(missing_ok=True)


# the model-states file DeepSpeed opens in a universal checkpoint, by the loading engine's stage
# (engine.py `_get_all_ckpt_names`: rank 0's name when weights are partitioned)
MODEL_STATES = {"zero3": "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero1-2": "mp_rank_00_model_states.pt"}


def loadable_at_every_stage(universal: Path) -> None:
    """Make a universal checkpoint loadable by an engine of any ZeRO stage 1-3. ds_to_universal
    keeps the source's layout in three places a loading engine of the other kind trips on:
    - the model-states file: ZeRO-3's or ZeRO 1-2's name (`MODEL_STATES`), and the other kind finds
      none (an AssertionError in state_dict_factory.py). Under `load_universal` DeepSpeed reads only
      the client state and scheduler from it (the weights come from zero/), which every stage
      writes alike: a hard link (a copy where links are refused) under the other name serves both;
    - zero/optimizer_state.pt, the optimizer's global state: a ZeRO-3 source writes no `ds_version`,
      which ZeRO 1-2's loader asserts on (stage_1_and_2.py `_load_global_state`); the version of
      the DeepSpeed that converted it is the one that wrote it; a ZeRO 1-2 source writes no
      `optimizer_state_dict`, where ZeRO-3's loader takes the optimizer's step count from;
    - each parameter's files (zero/NAME/fp32.pt, exp_avg.pt, ...): from ZeRO-3 a bare flat tensor,
      from ZeRO 1-2 a dict whose "param" has the parameter's shape. ZeRO 1-2's loader needs the
      dict (universal_checkpoint.py `load_hp_checkpoint_state`); ZeRO-3's takes either
      (stage3.py `load_hp_checkpoint_state`): bare tensors are rewritten as that dict."""
    have = [universal / n for n in MODEL_STATES.values() if (universal / n).is_file()]
    for name in MODEL_STATES.values():
        if have and not (universal / name).exists():
            _link_or_copy(have[0], universal / name)
    state_file = universal / "zero" / "optimizer_state.pt"
    if not state_file.is_file():
        return
    import deepspeed

    state = torch.load(state_file, map_location="cpu", weights_only=False)
    saved = state.get("optimizer_state_dict", {}).get("state", {})
    step = next((v["step"] for v in saved.values() if "step" in v), None)
    if step is None:  # a ZeRO 1-2 source keeps it per parameter
        step = next((torch.load(f, weights_only=False) for f in (universal / "zero").glob("*/step.pt")), None)
    if have:
        _whole_shapes(universal / "zero", torch.load(have[0], map_location="cpu", weights_only=False), step)
    changed = False
    if not state.get("ds_version"):
        state["ds_version"] = deepspeed.__version__
        changed = True
    if "optimizer_state_dict" not in state and step is not None:
        # ZeRO-3's loader reads the step count there (stage3.py `load_hp_checkpoint_state_from_checkpoint_dir_stage3`)
        state["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": state.get("param_groups", [])}
        changed = True
    if changed:
        tmp = state_file.with_name(f".{state_file.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, state_file)


def _whole_shapes(zero_dir: Path, model_states: dict, step) -> None:
    """Rewrite the bare flat tensors a ZeRO-3 source leaves in zero/NAME/*.pt as {"param": tensor
    of the parameter's shape} (`loadable_at_every_stage`), and give each parameter the `step.pt`
    ZeRO 1-2's loader takes its optimizer step count from (ZeRO-3 keeps one in the global state)."""
    shapes = {name: shape for group in model_states.get("param_shapes", []) for name, shape in group.items()}
    for name, shape in shapes.items():
        for path in (zero_dir / name).glob("*.pt"):
            if path.name == "step.pt":
                continue
            value = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(value, torch.Tensor):
                tmp = path.with_name(f".{path.name}.tmp")
                torch.save({"param": value.reshape(shape)}, tmp)
                os.replace(tmp, path)
        if step is not None and (zero_dir / name).is_dir() and not (zero_dir / name / "step.pt").exists():
            torch.save(step, zero_dir / name / "step.pt")

"""DeepSpeed checkpoints in RUN_DIR/checkpoints/step_XXXXXXXX, trusted only when complete and intact.

A save is a collective: every rank writes its ZeRO partitions through `engine.save_checkpoint`
(and its own files, e.g. a ZeRO-3 EMA shard) into .partial-TAG; after a barrier rank 0 alone writes the shared files (EMA weights), checks
that every rank's files are in, writes the completeness marker (with each file's size and CRC-32,
vitc/checkpoint/integrity.py) and renames the directory to TAG. Resume and export take the newest tag
whose files match its marker, so neither a save cut short by a kill -9 nor a file damaged later
is ever loaded; at resume rank 0 alone checks the files and every rank takes its choice
(vitc/checkpoint/resume_point.py). A tag saved on another number of ranks is first converted by DeepSpeed's
universal-checkpoint tool (deepspeed.checkpoint.ds_to_universal), which needs
`universal_checkpoint_info` in the client state. Buffers travel in the client state beside it.
"""

import copy
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as tdist

from vitc.checkpoint import integrity
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.models.spec import ViTSpec

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "vitc_complete.json"
PARTIAL = ".partial-"  # a tag being written: renamed to its name once complete
UNIVERSAL_SUFFIX = "_universal"
# Required by deepspeed.checkpoint.ds_to_universal; 0.2 is the version DeepSpeed's own trainers write.
UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}


@dataclass(frozen=True)
class CheckpointInfo:
    """The completeness marker of one saved tag."""

    tag: str
    step: int
    epoch: int
    world_size: int
    zero_stage: int


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _read_marker(marker: Path) -> dict:
    try:
        return json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitcError(f"checkpoint marker {marker} is unreadable ({e})")


def _marker_info(marker: Path) -> CheckpointInfo | str:
    """The marker's record, or why it cannot be trusted (missing, unreadable, fields missing)."""
    if not marker.is_file():
        return f"it has no completion marker {MARKER}"
    try:
        record = _read_marker(marker)
        return CheckpointInfo(**{k: v for k, v in record.items() if k in _INFO_FIELDS})
    except (VitcError, TypeError, AttributeError, OSError) as e:
        return f"its completion marker {MARKER} is unreadable ({str(e).splitlines()[0][:120]})"


_INFO_FIELDS = {f.name for f in fields(CheckpointInfo)}


def _tag_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of every tag a save began: complete, damaged, or cut short (.partial-)."""
    found = []
    for path in checkpoint_root(run_dir).glob("*step_*"):
        number = path.name.removeprefix(PARTIAL).removeprefix("step_")
        if path.is_dir() and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Every checkpoint with a readable marker, oldest first; others are left out (see
    `newest_intact_checkpoint` for what is said about them)."""
    found = [_marker_info(path / MARKER) for _, path in _tag_dirs(run_dir) if not path.name.startswith(PARTIAL)]
    return sorted((i for i in found if isinstance(i, CheckpointInfo)), key=lambda c: c.step)


def newest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


# (marker path, its mtime) -> what is damaged (None: intact); a tag is read through once per process
_checked: dict[tuple[str, int], str | None] = {}


def damage(run_dir: str | os.PathLike, info: CheckpointInfo) -> str | None:
    """What is wrong with a complete checkpoint's files against its marker; None when intact.
    Markers written before files were recorded have nothing to check against: trusted."""
    marker = checkpoint_root(run_dir) / info.tag / MARKER
    key = (str(marker), marker.stat().st_mtime_ns)
    if key not in _checked:
        files = _read_marker(marker).get("files", {})
        _checked[key] = integrity.damage(marker.parent, files)
    return _checked[key]


def newest_intact_checkpoint(run_dir: str | os.PathLike, quiet: bool = False) -> CheckpointInfo | None:
    """The newest checkpoint whose marker is readable and whose files match it. Newer tags that
    are not (a save cut short, a missing or corrupt marker, a truncated or missing file) are
    skipped with one warning line naming each and why (`quiet`: no line, for ranks other than 0).
    Reads every file of each tag it considers: a resume calls it on rank 0 only.
    Nothing is deleted: whoever looks can still see what happened."""
    skipped = []
    for _, path in reversed(_tag_dirs(run_dir)):
        if path.name.startswith(PARTIAL):
            skipped.append(f"{path.name} (a save cut short)")
            continue
        info = _marker_info(path / MARKER)
        problem = info if isinstance(info, str) else damage(run_dir, info)
        if problem is None:
            if skipped and not quiet:
                log.warning("skipped checkpoint %s: using %s", "; ".join(skipped), info.tag)
            return info
        skipped.append(f"{path.name} damaged ({problem})")
    damaged = [s for s in skipped if not s.startswith(PARTIAL)]
    if damaged:
        raise VitcError(f"no intact checkpoint in {checkpoint_root(run_dir)}: " + "; ".join(damaged)
                        + "; move the damaged directories away to start the run over")
    return None


def recorded(run_dir: str | os.PathLike, info: CheckpointInfo, key: str):
    """What the marker of `info` records under `key` ("architecture", "classes"); None when it
    predates the key."""
    return _read_marker(checkpoint_root(run_dir) / info.tag / MARKER).get(key)


def content_digest(run_dir: str | os.PathLike, info: CheckpointInfo) -> str:
    """12 hex digits naming a complete checkpoint's content: a hash of its marker, which records
    every file's size and CRC-32. Reads only the marker (a few KB)."""
    marker = checkpoint_root(run_dir) / info.tag / MARKER
    return hashlib.blake2b(marker.read_bytes(), digest_size=6).hexdigest()


# what a resumed model may change: regularization, not the parameters' shapes or the function
NOT_ARCHITECTURE = ("drop_path", "act_checkpoint")


def architecture(spec: ViTSpec) -> dict:
    """The model description a checkpoint records (as JSON gives it back: tuples are lists)."""
    return json.loads(json.dumps({k: v for k, v in asdict(spec).items() if k not in NOT_ARCHITECTURE}))


def same_architecture(run_dir: Path, info: CheckpointInfo, spec: ViTSpec) -> None:
    """Refuse, before DeepSpeed loads anything, to resume a run directory trained with another
    model (DeepSpeed would fail deep inside with a size mismatch). Checkpoints from before the
    marker recorded the architecture are not checked."""
    saved, mine = recorded(run_dir, info, "architecture"), architecture(spec)
    if saved is None or {k: v for k, v in saved.items() if k != "name"} == {k: v for k, v in mine.items() if k != "name"}:
        return
    raise VitcError(f"{run_dir} holds checkpoints of {_describe(saved)}, but this config builds "
                    f"{_describe(mine)}: set train.run_dir to a new directory, or use the run's model")


def _describe(arch: dict) -> str:
    stem = f"{arch['stem']} stem" + (f" {list(arch['stem_channels'])}" if arch["stem"] == "conv" else "")
    return (f"{arch.get('name') or 'a ViT'} ({stem}, patch {arch['patch_size']}, width {arch['width']}, "
            f"depth {arch['depth']}, heads {arch['heads']}, mlp {arch['mlp_ratio']}, {arch['num_classes']} "
            f"classes, {arch['image_size']} px, {arch['classifier']} classifier)")


def save(engine, run_dir: Path, info: CheckpointInfo, client_state: dict, rank: int,
         keep_last: int, shared_files: dict[str, Callable[[Path], None]] | None = None,
         rank_files: Callable[[Path], None] | None = None) -> None:
    """Save one checkpoint. Every rank calls this. DeepSpeed writes every rank's files into
    .partial-TAG, with `rank_files(dir)` (a rank's own files, e.g. its EMA shard); rank 0 then
    writes `shared_files` (name -> writer(path)) and the marker, and renames the directory to TAG:
    a tag directory exists only once it is complete. A failure (a full disk) on any rank removes
    .partial-TAG on every rank's word and raises one line."""
    root = checkpoint_root(run_dir)
    work = root / (PARTIAL + info.tag)
    if rank == 0:
        for stale in (root / info.tag, work):  # a save cut short, whose files must not mix with this one's
            integrity.remove(stale)
    tdist.barrier()
    state = {**client_state, "universal_checkpoint_info": UNIVERSAL_INFO}
    failed = _agree(_attempt(lambda: _write_rank_files(engine, root, work, state, rank_files)))
    if failed is None:  # every rank's partitions are on disk before the marker says so
        failed = _agree(_attempt(lambda: _seal(work, root / info.tag, info, client_state, shared_files))
                        if rank == 0 else None)
    if failed is not None:
        if rank == 0:
            integrity.remove(work)
        what = f"checkpoint {info.tag}"
        raise VitcError(integrity.space_line(what, work, _expected_size(run_dir, engine)) if failed == "ENOSPC"
                        else f"saving {what} into {work} failed: {failed}; the previous checkpoints are kept")
    if rank == 0:
        prune(run_dir, keep_last)
        log.info("saved checkpoint %s (epoch %d, step %d)", root / info.tag, info.epoch, info.step)
    tdist.barrier()


def _attempt(write: Callable[[], None]) -> str | None:
    """None if `write` succeeded, else "ENOSPC" for a full disk or the error's first line."""
    try:
        write()
    except (OSError, RuntimeError) as e:
        return "ENOSPC" if integrity.out_of_space(e) else (str(e).splitlines() or [type(e).__name__])[0]
    return None


def _agree(mine: str | None) -> str | None:
    """The first rank's failure, known to every rank. Every rank."""
    ranks: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(ranks, mine)
    return next((r for r in ranks if r is not None), None)


def _seal(work: Path, final: Path, info: CheckpointInfo, client_state: dict,
          shared_files: dict[str, Callable[[Path], None]] | None) -> None:
    """Rank 0: shared files, check every rank's files are in, marker (sizes + CRC-32), rename."""
    for name, write in (shared_files or {}).items():
        write(work / name)
    names = integrity.tag_files(work)
    missing = [r for r in range(info.world_size) if info.zero_stage > 0
               and not any(f"zero_pp_rank_{r}_" in n and n.endswith("optim_states.pt") for n in names)]
    if missing or not any(n.endswith("model_states.pt") for n in names):
        raise OSError(f"rank(s) {missing or 'all'} left no files in {work}")
    files = integrity.describe_files(work, names)
    record = {**asdict(info), "architecture": client_state.get("architecture"),
              "classes": client_state.get("classes"), "files": files}
    atomic_write_text(work / MARKER, json.dumps(record) + "\n")
    os.replace(work, final)
    _checked[(str(final / MARKER), (final / MARKER).stat().st_mtime_ns)] = None  # just checksummed


def _expected_size(run_dir: Path, engine) -> int:
    """Bytes the next save needs: the previous checkpoint's, else fp32 weights, master copy and
    two Adam moments (16 bytes a parameter)."""
    previous = newest_checkpoint(run_dir)
    if previous is not None:
        size = integrity.tree_size(checkpoint_root(run_dir) / previous.tag)
        if size:
            return size
    return 16 * sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` intact checkpoints (only checkpoints whose files
    match their marker count), and any other tag, damaged or cut short, older than the newest
    intact one. Rank 0 only."""
    kept: list[CheckpointInfo] = []
    for info in reversed(complete_checkpoints(run_dir)):
        if len(kept) < max(keep_last, 1) and damage(run_dir, info) is None:
            kept.append(info)
    if not kept:
        return
    keep = {c.tag for c in kept}
    newest = kept[0].step
    for path in checkpoint_root(run_dir).glob("*step_*"):
        base = path.name.removeprefix(PARTIAL).removesuffix(UNIVERSAL_SUFFIX)
        step = int(base.removeprefix("step_")) if base.removeprefix("step_").isdigit() else None
        if base not in keep and step is not None and step <= newest:
            shutil.rmtree(path, ignore_errors=True)


def buffer_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer of `module` (BatchNorm statistics), on the CPU, for the client state: a universal
    checkpoint carries parameters and optimizer state only, and DeepSpeed skips the module's
    state dict when it loads one. ZeRO-3 partitions parameters, not buffers: they are whole here."""
    return {name: buffer.detach().cpu().clone() for name, buffer in module.named_buffers()}


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy `buffer_state`'s tensors back into `module`; every buffer must be there."""
    own = dict(module.named_buffers())
    if own.keys() != saved.keys():
        raise VitcError(f"checkpoint buffers {sorted(saved)[:4]}... do not match the model's {sorted(own)[:4]}...")
    with torch.no_grad():
        for name, value in saved.items():
            own[name].copy_(value)


@dataclass(frozen=True)
class FreshSchedule:
    """The lr schedule and optimizer hyperparameters as built for this run, before a checkpoint
    overwrote them with the saving run's (`schedule_before_load`)."""

    lambdas: list
    base_lrs: list[float]
    groups: list[dict]  # each param group's hyperparameters, without its parameters


def schedule_before_load(scheduler) -> FreshSchedule:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in scheduler.optimizer.param_groups]
    # copies: loading a LambdaLR state updates its lambda objects in place
    return FreshSchedule([copy.copy(f) for f in scheduler.lr_lambdas], list(scheduler.base_lrs), groups)


def continue_schedule(scheduler, fresh: FreshSchedule, position: int) -> float:
    """Put this run's own schedule (its length, its lr at its global batch) back on `scheduler`,
    at optimizer step `position` of it; returns the lr of the next step. A checkpoint from another
    world size carries the saving run's schedule, and DeepSpeed's ZeRO-3 universal load gives every
    param group the first group's hyperparameters (no-decay groups would decay): both are undone."""
    scheduler.lr_lambdas, scheduler.base_lrs = list(fresh.lambdas), list(fresh.base_lrs)
    for group, hyper in zip(scheduler.optimizer.param_groups, fresh.groups):
        group.update(hyper)
    scheduler.last_epoch = position - 1
    with warnings.catch_warnings():  # torch warns of a step before the optimizer's: this is a restore
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()  # every group's lr at `position`, and the scheduler's own record of it
    return scheduler.get_last_lr()[0]


def _write_rank_files(engine, root: Path, work: Path, state: dict,
                      rank_files: Callable[[Path], None] | None) -> None:
    """This rank's part of a save: its DeepSpeed partitions, then its own files, into `work`."""
    engine.save_checkpoint(str(root), tag=work.name, client_state=state, save_latest=False)
    if rank_files is not None:
        rank_files(work)

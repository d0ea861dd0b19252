"""Faults a user meets (a damaged or unwritable checkpoint, a full disk, Ctrl-C, two trainings in
one directory, another model in a run directory): each ends with one line naming what is wrong,
no traceback, and nothing that was good on disk is lost."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine_runs import (
    TINY_CONV,
    TINY_PATCHIFY,
    metrics,
    training_in_progress,
    vitc,
    write_config,
)
from safetensors import safe_open

from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.lock import LOCK_FILE, run_lock
from vitc.cli import main
from vitc.data.shards.build import BuildOptions, build_shards


def error_line(result: subprocess.CompletedProcess) -> str:
    """The command's last stderr line, after checking it is the only error and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith("vitc:") for line in lines) == 1, result.stderr[-3000:]
    return lines[-1]


def tags(run_dir: Path) -> list[str]:
    """The checkpoint directories, temporary ones included (DeepSpeed's recovery scripts left out)."""
    return sorted(p.name for p in checkpoint.checkpoint_root(run_dir).iterdir() if p.is_dir())


def disk_usage(path: Path) -> int:
    """Bytes `path`'s files take on a tmpfs (whole pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def exported_step(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["vitc_checkpoint"])["step"]


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_intact_one_is_used(shards, digits_folder, tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", shards, run, checkpoint={"every_steps": 4, "keep_last": 2})
    vitc("train", str(config), "train.max_steps=8")
    model_file = checkpoint.checkpoint_root(run) / "step_00000008" / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated, still marked complete

    exported = vitc("export", str(run), "--out", str(tmp_path / "m.safetensors"))
    warning = [line for line in exported.stderr.splitlines() if "W vitc.checkpoint.store" in line]
    assert len(warning) == 1 and str(model_file) in warning[0] and "step_00000004" in warning[0]
    assert "Traceback" not in exported.stderr and exported_step(tmp_path / "m.safetensors") == 4
    # the export carries its class names; evaluation data that labels them otherwise is refused
    relabelled = folder_of(digits_folder, tmp_path / "val_images", {"3": "3", "4": "4"})  # labels 0, 1
    build_shards(relabelled, tmp_path / "val", "val", BuildOptions(samples_per_shard=50), progress=False)
    evaluated = vitc("eval", str(config), f"data.val_shards={tmp_path / 'val'}",
                     f"weights={tmp_path / 'm.safetensors'}", check=False)
    assert evaluated.returncode == 2 and "class '3' has label 0, but 3 in training" in error_line(evaluated)

    checkpoint.prune(run, keep_last=1)  # keep_last counts intact checkpoints: step 4 is the one kept
    assert tags(run) == ["step_00000004", "step_00000008"]

    resumed = vitc("train", str(config), "train.max_steps=10")
    assert sum(" damaged (" in line for line in resumed.stderr.splitlines()) == 1
    assert [r["step"] for r in metrics(run)] == [*range(1, 9), *range(5, 11)]  # steps 5-8 trained again
    assert tags(run) == ["step_00000008", "step_00000010"]  # step 8 saved again, intact


def folder_of(digits: Path, out: Path, classes: dict[str, str | None]) -> Path:
    """An ImageFolder with the digit images of `classes` (digit -> folder name; None: an empty folder)."""
    for digit, name in classes.items():
        if name is None:
            (out / digit).mkdir(parents=True)
        else:
            shutil.copytree(digits / digit, out / name)
    return out


@pytest.mark.slow
def test_every_file_of_a_checkpoint_is_recorded_with_its_size_and_checksum(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    vitc("train", str(config), "train.max_steps=2")
    tag_dir = checkpoint.checkpoint_root(tmp_path / "run") / "step_00000002"
    files = json.loads((tag_dir / checkpoint.MARKER).read_text())["files"]
    on_disk = {str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file()} - {checkpoint.MARKER}
    assert set(files) == on_disk and all(f["size"] == (tag_dir / n).stat().st_size for n, f in files.items())
    assert all(isinstance(f["crc32"], int) for f in files.values())


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a tmpfs of `size` bytes (root mounts it), unmounted afterwards."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(shards, tmp_path, small_disk):
    sections = dict(checkpoint={"every_steps": 2}, log={"every_steps": 100})
    probe = write_config(tmp_path / "p.yaml", shards, tmp_path / "probe", **sections)
    vitc("train", str(probe), "train.max_steps=2")
    one = disk_usage(checkpoint.checkpoint_root(tmp_path / "probe") / "step_00000002")
    # room for the run's files and one checkpoint, not two: the save at step 4 runs out of space
    run = small_disk(disk_usage(tmp_path / "probe") + one // 2) / "run"
    config = write_config(tmp_path / "c.yaml", shards, run, **sections)
    result = vitc("train", str(config), "train.max_steps=4", check=False)
    line = error_line(result)
    assert result.returncode == 2 and "no space left" in line and "step_00000004" in line and "MiB needed" in line
    assert tags(run) == ["step_00000002"]  # no half-written step directory, no temporary one
    assert checkpoint.newest_intact_checkpoint(run).step == 2


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line_and_leaves_no_file(shards, tmp_path, small_disk):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    vitc("train", str(config), "train.max_steps=2")
    disk = small_disk(64 * 1024)
    result = vitc("export", str(tmp_path / "run"), "--out", str(disk / "m.safetensors"), check=False)
    line = error_line(result)
    assert result.returncode == 2 and "no space left" in line and str(disk / "m.safetensors") in line
    assert list(disk.iterdir()) == []
    result = vitc("export", str(tmp_path / "run"), "--format", "timm", "--out", str(disk / "timm"), check=False)
    line = error_line(result)
    assert result.returncode == 2 and "no space left" in line and str(disk / "timm") in line, line
    assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_resuming_a_run_directory_with_another_model_names_both(shards, tmp_path):
    conv = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    vitc("train", str(conv), "train.max_steps=2")
    patchify = write_config(tmp_path / "p.yaml", shards, tmp_path / "run", model=TINY_PATCHIFY)
    result = vitc("train", str(patchify), "train.max_steps=4", check=False)
    line = error_line(result)
    assert result.returncode == 2
    assert TINY_CONV["name"] in line and TINY_PATCHIFY["name"] in line and "conv stem" in line
    assert tags(tmp_path / "run") == ["step_00000002"]


@pytest.mark.slow
def test_a_second_training_in_a_run_directory_is_refused_and_ctrl_c_saves_and_exits_130(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", schedule={"epochs": 20})
    first = training_in_progress(config, tmp_path / "run")
    second = vitc("train", str(config), check=False)
    line = error_line(second)
    assert second.returncode == 2 and f"pid {first.pid}" in line and str(tmp_path / "run") in line

    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = first.communicate()
    assert first.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert sum("interrupted (SIGINT)" in line for line in err.splitlines()) == 1
    last_logged = metrics(tmp_path / "run")[-1]["step"]
    assert checkpoint.newest_intact_checkpoint(tmp_path / "run").step == last_logged < 500
    assert len(metrics(tmp_path / "run")) == last_logged  # the refused run wrote no step
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # released by the kernel, not by deleting it
    vitc("train", str(config), "train.max_steps=" + str(last_logged + 1))  # the lock is free again


def test_a_killed_trainings_forked_children_do_not_keep_its_run_directory(tmp_path):
    # a trainer killed with -9 leaves its loader workers alive until they notice (seconds): an
    # immediate resume must not be refused because of them
    holder = subprocess.run([sys.executable, "-c", (
        "import os, signal, time\nfrom pathlib import Path\nfrom vitc.checkpoint.lock import run_lock\n"
        f"with run_lock(Path({str(tmp_path / 'run')!r})):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n        os.close(1)\n        os.close(2)\n        time.sleep(120)\n        os._exit(0)\n"
        "    print(child, flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)\n")],
        capture_output=True, text=True)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    child = int(holder.stdout)
    try:
        os.kill(child, 0)  # the forked child is still alive
        with run_lock(tmp_path / "run"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_training_manifest_is_the_contract_on_classes(shards, digits_folder, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    assert main(["train", str(config), "model.num_classes=1000"]) == 2  # the in1k configs' count on 10 digits
    other = folder_of(digits_folder, tmp_path / "other", {"0": "0", "1": "1", "2": "seven"})
    build_shards(other, tmp_path / "val", "val", BuildOptions(samples_per_shard=50), progress=False)
    assert main(["train", str(config), f"data.val_shards={tmp_path / 'val'}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitc:")]
    assert "model.num_classes=1000" in errors[0] and "hold 10 classes" in errors[0]
    assert "class 'seven' (label 2) is not a training class" in errors[1] and len(errors) == 2
    assert not checkpoint.checkpoint_root(tmp_path / "run").exists()  # refused before training


def test_shards_build_names_an_empty_class_folder(digits_folder, tmp_path, caplog):
    source = folder_of(digits_folder, tmp_path / "images", {"0": "0", "1": "1", "2": None})
    summary = build_shards(source, tmp_path / "shards", "train", BuildOptions(samples_per_shard=50), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(source / "2") in warnings[0] and "no samples" in warnings[0]
    assert summary.manifest.classes == {"0": 0, "1": 1, "2": 2}


@pytest.mark.slow
def test_shards_build_onto_a_full_disk_is_one_line_keeps_no_temp_file_and_resumes(digits_folder, tmp_path, small_disk):
    disk = small_disk(64 * 1024)
    command = ("shards", "build", str(digits_folder), str(disk / "shards"), "--samples-per-shard", "50")
    result = vitc(*command, check=False)
    line = error_line(result)
    assert result.returncode == 2 and "no space left" in line and str(disk / "shards") in line
    needed = float(re.search(r"about ([0-9.]+) MiB more needed for \d+ of 4 shards", line).group(1))
    assert needed > 0.01  # a real estimate: the digits' shards are about 0.1 MiB each
    assert not [p for p in (disk / "shards").iterdir() if p.name.endswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space freed
    vitc(*command)
    assert len(list((disk / "shards").glob("train-*.tar"))) == 4

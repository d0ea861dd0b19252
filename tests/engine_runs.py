"""Shared by the tests that train: digit shards, a tiny-model config, starting `vitc` and its ranks
(one process, torchrun), killing a run once a checkpoint is saved, and reading a run's results.
tests/conftest.py turns `digit_shards` into the `shards` fixture."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from vitc.checkpoint import store as checkpoint
from vitc.cli import main
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.engine.runtime import free_port
from vitc.weights.export import load_weights

ROOT = Path(__file__).resolve().parent.parent

# A ViT_C small enough for CPU tests: conv stem (BatchNorm inside), 2 blocks, 32 px digits.
TINY_CONV = {"name": "vit_c_1gf", "width": 32, "depth": 2, "heads": 2, "stem_channels": [8, 16],
             "stem_strides": [2, 2], "image_size": 32, "num_classes": "auto"}
# Its patchify twin: no BatchNorm, so a batch's gradient does not depend on how it is split.
TINY_PATCHIFY = {"name": "vit_p_1gf", "width": 32, "depth": 2, "heads": 2, "patch_size": 4,
                 "image_size": 32, "num_classes": "auto"}


def digit_shards(folder: Path, out: Path) -> Path:
    """4 train shards of 50 digits (10 classes) under `out`; the same images as `val` shards."""
    for prefix in ("train", "val"):
        build_shards(folder, out / prefix, prefix, BuildOptions(samples_per_shard=50), progress=False)
    return out


def write_config(path: Path, shards: Path, run_dir: Path, model: dict = TINY_CONV, **sections) -> Path:
    """A YAML config for a tiny run; `sections` (e.g. train={...}) update the defaults below."""
    cfg = {
        "model": model,
        "data": {"train_shards": str(shards / "train"), "val_shards": str(shards / "val"), "workers": 0,
                 "shuffle_buffer": 50, "auto_augment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                 "label_smoothing": 0.0, "hflip": 0.0, "crop_scale": [0.7, 1.0]},
        # 25 steps per epoch: this ViT needs ~50 AdamW steps to leave the uniform prediction
        "train": {"run_dir": str(run_dir), "micro_batch": 8, "zero_stage": 1},
        "optim": {"base_lr": 1e-3, "reference_batch": 8, "weight_decay": 0.05},
        "schedule": {"epochs": 3, "warmup_epochs": 0.5},
        "log": {"every_steps": 1, "tensorboard": False},
        "checkpoint": {"every_steps": 1000},
        # precise BN off: these runs test the engine's mechanics with thresholds set without it;
        # tests/test_precise_bn.py and tests/test_ema.py turn it on
        "eval": {"precise_bn_samples": 0},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]


def loss_fell(run_dir: Path, window: int = 10, by: float = 0.03) -> bool:
    loss = losses(run_dir)
    return sum(loss[-window:]) / window < sum(loss[:window]) / window - by


def vitc(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`vitc ARGS` in a fresh process."""
    result = subprocess.run([sys.executable, "-m", "vitc.cli", *args], check=False, capture_output=True,
                            text=True, cwd=ROOT, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"vitc {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def training_in_progress(config: Path, run_dir: Path, steps: int = 3) -> subprocess.Popen:
    """`vitc train CONFIG` started in a process and returned once it has logged `steps` steps."""
    proc = subprocess.Popen([sys.executable, "-m", "vitc.cli", "train", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_file = Path(run_dir) / "metrics.jsonl"
    while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    return proc


def torchrun_command(nproc: int) -> list[str]:
    """`torchrun --nproc_per_node N` on a free port, to be followed by a script or `-m MODULE`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]


def launcher(nproc: int) -> list[str]:
    """This interpreter for one rank, torchrun for more."""
    return [sys.executable] if nproc == 1 else torchrun_command(nproc)


def run_ranks(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """COMMAND (a `launcher`/`torchrun_command` line) from the checkout, its output captured. One
    thread per rank (OMP_NUM_THREADS=1): ranks with torch's default of one thread per core would
    oversubscribe the cores."""
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT,
                          env={**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"})


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m vitc.cli ARGS` (gloo on CPU)."""
    result = run_ranks([*torchrun_command(nproc), "-m", "vitc.cli", *args])
    if result.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def kill_after_checkpoint(config: Path, run_dir: Path, step: int) -> None:
    """`vitc train CONFIG` in one process, SIGKILLed as soon as checkpoint `step` is marked
    complete (the kill lands wherever the run is: the next step, or its next save)."""
    marker = checkpoint.checkpoint_root(run_dir) / checkpoint.tag_for(step) / checkpoint.MARKER
    killed_once_saved(1, marker, "train", str(config), f"train.run_dir={run_dir}")


def exported(run_dir: Path, tmp: Path, *extra: str) -> dict[str, torch.Tensor]:
    """The run's newest complete checkpoint through `vitc export` (in this process), as a state dict."""
    out = tmp / f"{Path(run_dir).name}.safetensors"
    assert main(["export", str(run_dir), "--out", str(out), *extra]) == 0
    return load_weights(out)


def default_malloc(env: dict) -> dict:
    """`env` without the user's glibc malloc tuning, which would switch vitc's heap retention
    (vitc/heap.py) off: the memory checks measure vitc's default configuration, as users run it."""
    return {k: v for k, v in env.items() if not k.startswith("MALLOC_")}


def peak_rss_added(ranks: int, out_prefix: Path, steps: int, *train_args: str) -> list[int]:
    """Each rank's peak resident memory added from just before the model is built to the end of
    micro-step `steps` of `vitc train TRAIN_ARGS` (tests/plan_memory_probe.py), one thread per rank."""
    result = run_ranks([*launcher(ranks), str(ROOT / "tests" / "plan_memory_probe.py"), str(out_prefix), str(steps),
                        *train_args], env=default_malloc(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(Path(f"{out_prefix}.{r}.json").read_text())["added"] for r in range(ranks)]


def vitc_on(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`vitc ARGS` on `nproc` ranks, one thread each; not checked (a refusal is an outcome too)."""
    return subprocess.run([*launcher(nproc), "-m", "vitc.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


def killed_once_saved(nproc: int, marker: Path, *args: str) -> None:
    """`vitc ARGS` on `nproc` ranks, every process of it killed with SIGKILL once `marker` exists
    (torchrun starts its workers in sessions of their own: each is killed by its pid)."""
    import psutil

    proc = subprocess.Popen([*launcher(nproc), "-m", "vitc.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not marker.exists():
            assert proc.poll() is None, f"ended before {marker}: {proc.stderr.read()[-2000:]}"
            time.sleep(0.02)
    finally:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        psutil.wait_procs(family, timeout=30)

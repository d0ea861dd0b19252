"""`vitc demo`: the paper's comparison in miniature, on real images, on a CPU, in a few minutes.

Writes scikit-learn's handwritten digits (upscaled to 32 px) as train/val ImageFolders, shards
them, then trains vitc/resources/demo/vit_c_tiny.yaml (conv stem) and its patchify twin
vitc/resources/demo/vit_p_tiny.yaml (equal flops, one block more) through the same `train()` that
`vitc train` runs, and tabulates flops, params, top-1 and wall time.
"""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from vitc.config import load_config, model_spec
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.data.shards.embedded import digits_imagefolder
from vitc.data.shards.manifest import Manifest
from vitc.engine.train import train
from vitc.errors import VitcError
from vitc.models.cost import model_cost
from vitc.resources import resource

log = logging.getLogger(__name__)

CONFIGS = resource("demo")
MODELS = ("vit_c_tiny", "vit_p_tiny")
VAL_EVERY = 5  # every 5th image of a class is held out: 20 % validation


@dataclass(frozen=True)
class DemoRow:
    name: str
    model: str
    gflops: float
    params_m: float
    top1: float
    wall_s: float


def prepare_digits(out: Path) -> tuple[Path, Path]:
    """Train and val shard directories of the digits under `out` (built once, reused after)."""
    train_dir, val_dir = out / "shards" / "train", out / "shards" / "val"
    if (train_dir / "manifest.json").is_file() and (val_dir / "manifest.json").is_file():
        return train_dir, val_dir
    folder = out / "digits"
    shutil.rmtree(folder, ignore_errors=True)
    digits_imagefolder(folder / "train", size=32)
    for image in sorted((folder / "train").glob("*/*.jpg")):
        if int(image.stem) % VAL_EVERY == 0:
            (folder / "val" / image.parent.name).mkdir(parents=True, exist_ok=True)
            image.rename(folder / "val" / image.parent.name / image.name)
    options = BuildOptions(samples_per_shard=400)
    for split, shard_dir in (("train", train_dir), ("val", val_dir)):
        build_shards(folder / split, shard_dir, split, options, progress=False)
    return train_dir, val_dir


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None) -> list[DemoRow]:
    """Train and evaluate both demo models; returns one table row per model."""
    if not (CONFIGS / f"{MODELS[0]}.yaml").is_file():
        raise VitcError(f"demo configs not found in {CONFIGS}: the vitc install is incomplete (reinstall it)")
    out = Path(out)
    train_dir, val_dir = prepare_digits(out)
    num_classes = Manifest.load(train_dir).num_classes
    rows = []
    for name in MODELS:
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a demo starts fresh, never resumes
        overrides = [f"data.train_shards={train_dir}", f"data.val_shards={val_dir}", f"train.run_dir={run_dir}"]
        overrides += [f"schedule.epochs={epochs}"] if epochs is not None else []
        cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
        log.info("demo: training %s", name)
        outcome = train(cfg)
        spec = model_spec(cfg.model, num_classes)
        cost = model_cost(spec)
        rows.append(DemoRow(name, spec.name, cost.flops / 1e9, cost.params / 1e6,
                            outcome.evaluation.top1 if outcome.evaluation else float("nan"), outcome.wall_s))
    return rows


def format_demo(rows: list[DemoRow]) -> str:
    lines = [f"{'model':<12} {'stem':<9} {'GFLOPs':>7} {'params (M)':>10} {'top-1 %':>8} {'time (s)':>9}"]
    for r in rows:
        stem = "conv" if r.name.startswith("vit_c") else "patchify"
        lines.append(f"{r.name:<12} {stem:<9} {r.gflops:>7.4f} {r.params_m:>10.3f} {r.top1:>8.2f} {r.wall_s:>9.0f}")
    lines.append("digits (scikit-learn), 10 classes, 32 px; top-1 on the held-out 20 %; chance is 10 %")
    return "\n".join(lines)

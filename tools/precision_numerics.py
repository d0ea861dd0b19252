"""Measure vitc's one precision model: the same run (seed, data, 2 ranks, global batch 8, AdamW, the
tiny conv-stem model) trained N steps at ZeRO 0, 1, 2 and 3 in bf16 and in fp32, then compared:
the largest loss difference over the N steps and the largest weight difference of the exported
fp32 weights, between stages (against ZeRO-1 of the same precision) and between bf16 and fp32 (at
the same stage). Prints a markdown table for docs/engine.md ("Numerics").

    .venv/bin/python tools/precision_numerics.py [--steps 20] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = (0, 1, 2, 3)
PRECISIONS = ("bf16", "fp32")


def shards(out: Path) -> Path:
    from vitc.data.shards.build import BuildOptions, build_shards
    from vitc.data.shards.embedded import digits_imagefolder

    folder = digits_imagefolder(out / "digits", size=32, per_class=20)
    for prefix in ("train", "val"):
        build_shards(folder, out / "shards" / prefix, prefix, BuildOptions(samples_per_shard=50), progress=False)
    return out / "shards"


def config(out: Path, data: Path) -> Path:
    cfg = {"model": {"name": "vit_c_1gf", "width": 32, "depth": 2, "heads": 2, "stem_channels": [8, 16],
                     "stem_strides": [2, 2], "image_size": 32, "num_classes": "auto"},
           "data": {"train_shards": str(data / "train"), "val_shards": str(data / "val"), "workers": 0,
                    "shuffle_buffer": 50, "auto_augment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                    "label_smoothing": 0.0, "hflip": 0.0, "crop_scale": [0.7, 1.0]},
           "train": {"micro_batch": 4, "global_batch": 8, "seed": 0},
           "optim": {"base_lr": 1e-3, "reference_batch": 8, "weight_decay": 0.05},
           "schedule": {"epochs": 1, "warmup_epochs": 0.2},
           "log": {"every_steps": 1, "tensorboard": False}, "checkpoint": {"every_steps": 1000},
           "eval": {"precise_bn_samples": 0, "every_epochs": 0}}
    path = out / "numerics.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: Path, run_dir: Path, stage: int, precision: str, steps: int) -> None:
    from vitc.engine.runtime import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "vitc.cli", "train", str(cfg), f"train.run_dir={run_dir}",
           f"train.zero_stage={stage}", f"train.precision={precision}", f"train.max_steps={steps}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")


def results(run_dir: Path) -> tuple[list[float], dict]:
    from vitc.weights.export import consolidated_state_dict

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["kind"] == "train"], consolidated_state_dict(run_dir)[0]


def differences(a, b) -> tuple[float, float]:
    (loss_a, weights_a), (loss_b, weights_b) = a, b
    loss = max(abs(x - y) for x, y in zip(loss_a, loss_b, strict=True))
    weight = max((weights_a[k].float() - weights_b[k].float()).abs().max().item()
                 for k in weights_a if weights_a[k].is_floating_point())
    return loss, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="vitc-numerics-"))
    cfg = config(out, shards(out))
    runs = {}
    for precision in PRECISIONS:
        for stage in STAGES:
            run_dir = out / f"z{stage}-{precision}"
            train(cfg, run_dir, stage, precision, args.steps)
            runs[stage, precision] = results(run_dir)
            print(f"z{stage} {precision}: final loss {runs[stage, precision][0][-1]:.4f}", file=sys.stderr)
    print(f"| compared ({args.steps} steps, 2 ranks) | max loss difference | max weight difference |")
    print("|---|---|---|")
    for precision in PRECISIONS:
        for stage in (0, 2, 3):
            loss, weight = differences(runs[stage, precision], runs[1, precision])
            print(f"| {precision}: ZeRO-{stage} vs ZeRO-1 | {loss:.2e} | {weight:.2e} |")
    for stage in STAGES:
        loss, weight = differences(runs[stage, "bf16"], runs[stage, "fp32"])
        print(f"| ZeRO-{stage}: bf16 vs fp32 | {loss:.2e} | {weight:.2e} |")


if __name__ == "__main__":
    main()

"""The first hour on a GPU node: `tools/gpu_smoke.sh` (python -m vitc.bench.gpu_smoke [--cpu]).

Each check prints one line, PASS, FAIL or SKIP with what it saw; the exit status is 1 when any
check failed. On a GPU (about 8 minutes on one H100): no host sync in 20 steady-state steps
(`torch.cuda.set_sync_debug_mode`), a resume through a universal checkpoint with the fused AdamW,
bf16 numerics of vit_c_72gf against fp32 over a few steps, nvJPEG decode of RGB, grayscale and
CMYK JPEGs (vitc.data.loading.gpu_decode), training steps at ZeRO 0-3, export at ZeRO-1 and
ZeRO-3, a compiled run, and the MFU of vit_c_36gf and vit_c_72gf beside `vitc plan`'s prediction.
`--cpu` runs the same checks on the CPU where they mean something there (sync counting through a
TorchFunctionMode instead of the CUDA sync-debug mode, the CPU path of the decoder, tiny models
for numerics and MFU) and skips, naming why, what needs a GPU; tests/test_gpu_smoke.py runs it.
"""

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

# the scale-out the MFU line predicts with the measured kernels: ImageNet-21k on 16 nodes × 8 GPUs
# (docs/plan.md, "MFU of vit_c_72gf on 16 × 8 H100")
SCALE_OUT, SCALE_OUT_CLASSES = (16, 8), 21841
TINY = {"name": "vit_c_1gf", "width": 32, "depth": 2, "heads": 2, "stem_channels": [8, 16],
        "stem_strides": [2, 2], "image_size": 32, "num_classes": "auto"}


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Smoke:
    def __init__(self, out: Path, cpu: bool):
        from vitc.data.shards.build import BuildOptions, build_shards
        from vitc.data.shards.embedded import digits_imagefolder

        self.out, self.cpu = out, cpu
        self.device = "cpu" if cpu else "cuda"
        folder = digits_imagefolder(out / "digits", size=32, per_class=20)
        for prefix in ("train", "val"):
            build_shards(folder, out / "shards" / prefix, prefix, BuildOptions(samples_per_shard=50), progress=False)
        self.results: list[tuple[str, str, str]] = []

    def config(self, name: str, **sections) -> Path:
        cfg = {"model": TINY,
               "data": {"train_shards": str(self.out / "shards/train"), "val_shards": str(self.out / "shards/val"),
                        "workers": 0, "shuffle_buffer": 50, "auto_augment": "none", "mixup_alpha": 0.0,
                        "cutmix_alpha": 0.0, "hflip": 0.0},
               "train": {"run_dir": str(self.out / name), "micro_batch": 8, "device": self.device},
               "schedule": {"epochs": 1, "warmup_epochs": 0}, "log": {"every_steps": 1000, "tensorboard": False},
               "checkpoint": {"every_steps": 1000}, "eval": {"every_epochs": 0, "precise_bn_samples": 0}}
        for key, values in sections.items():
            cfg[key] = {**cfg.get(key, {}), **values}
        path = self.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def vitc(self, *args: str) -> None:
        """`vitc ARGS` as a user runs it, in its own process (its failure is this check's)."""
        done = subprocess.run([sys.executable, "-m", "vitc.cli", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"vitc {' '.join(args)} failed: {done.stderr.strip()[-500:]}")

    def check(self, name: str, fn: Callable[[], str]) -> None:
        start = time.perf_counter()
        try:
            status, detail = "PASS", fn()
        except Skip as e:
            status, detail = "SKIP", str(e)
        except Exception as e:  # noqa: BLE001  a smoke test reports every failure and goes on
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc(file=sys.stderr)
        self.results.append((status, name, detail))
        print(f"{status} {name} ({time.perf_counter() - start:.0f} s): {detail}", flush=True)

    # ---- the checks ---------------------------------------------------------------------------

    def host_syncs(self) -> str:
        """20 steady-state steps (no log line, no save in them) read nothing back from the device."""
        from vitc.bench.host_syncs import CountHostSyncs

        counts = []
        for steps in (5, 25):
            config = self.config(f"syncs{steps}", train={"max_steps": steps})
            if self.cpu:
                with CountHostSyncs() as mode:
                    self.vitc("train", str(config))
                counts.append(mode.vitc_total())
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        self.vitc("train", str(config))
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("/vitc/" in w.filename and "/data/" not in w.filename for w in caught))
        per_step = (counts[1] - counts[0]) / 20
        if per_step:
            raise AssertionError(f"vitc syncs the host {per_step:g} times per steady-state step")
        return f"0 host syncs per steady-state step in vitc's code ({counts[0]} at start and end of a run)"

    def universal_resume(self) -> str:
        """ZeRO-1 for 3 steps, then ZeRO-2 from its checkpoint: DeepSpeed's universal conversion,
        resumed by the fused AdamW on a GPU."""
        config = self.config("universal", train={"zero_stage": 1, "max_steps": 3},
                             checkpoint={"every_steps": 3})
        self.vitc("train", str(config))
        self.vitc("train", str(config), "train.zero_stage=2", "train.max_steps=6")
        universal = list((self.out / "universal" / "checkpoints").glob("*_universal"))
        if not universal:
            raise AssertionError("no universal checkpoint was made")
        fused = "unfused AdamW (no fused AdamW on the CPU)" if self.cpu else "fused AdamW"
        return f"resumed at ZeRO-2 from {universal[0].name} with the {fused}"

    def bf16_numerics(self) -> str:
        """vit_c_72gf (a 2-block copy on the CPU) for 3 SGD steps in bf16 autocast and in fp32 from the
        same weights and batch: the losses agree within 2 %."""
        from vitc.models.spec import get_spec, with_overrides
        from vitc.models.vit import VisionTransformer

        spec = get_spec("vit_c_72gf")
        if self.cpu:
            spec = with_overrides(spec, depth=1, image_size=32)
        images = torch.randn(4, 3, spec.image_size, spec.image_size, device=self.device)
        labels = torch.randint(0, spec.num_classes, (4,), device=self.device)
        losses = {}
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = VisionTransformer(spec).to(self.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            losses[dtype] = []
            for _ in range(3):
                with torch.autocast(self.device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses[dtype].append(loss.item())
            del model, optimizer
        worst = max(abs(a - b) / abs(a) for a, b in zip(losses[torch.float32], losses[torch.bfloat16]))
        if not worst < 0.02:
            raise AssertionError(f"bf16 losses {losses[torch.bfloat16]} vs fp32 {losses[torch.float32]}")
        return f"{spec.name}{' (1 block, 32 px)' if self.cpu else ''}: bf16 within {worst:.2%} of fp32 over 3 steps"

    def jpeg_decode(self) -> str:
        """RGB, grayscale and CMYK JPEGs through the GPU decode path against the CPU's pixels; CMYK
        must fall back to the CPU decoder (vitc.data.loading.gpu_check)."""
        from vitc.data.loading.gpu_check import check_gpu_decode

        if not self.cpu:
            return "; ".join(check_gpu_decode())
        return "; ".join(check_gpu_decode(torch.device("cpu"), _cpu_stand_in)) + " (CPU stand-in for the GPU decoder)"

    def zero_stages(self) -> str:
        for stage in range(4):
            self.vitc("train", str(self.config(f"zero{stage}", train={"zero_stage": stage, "max_steps": 3},
                                               checkpoint={"every_steps": 3})))
        return "3 steps each at ZeRO 0, 1, 2 and 3"

    def export(self, stage: int) -> Callable[[], str]:
        def run() -> str:
            if not (self.out / f"zero{stage}" / "checkpoints").is_dir():
                raise Skip(f"no ZeRO-{stage} run (the ZeRO check failed)")
            out = self.out / f"zero{stage}.safetensors"
            self.vitc("export", str(self.out / f"zero{stage}"), "--out", str(out))
            return f"{out.name}: {out.stat().st_size / 1e6:.2f} MB"
        return run

    def compile(self) -> str:
        if self.cpu:
            raise Skip("inductor builds C++ kernels for minutes on a CPU; tests/test_compile.py covers it")
        self.vitc("train", str(self.config("compiled", train={"compile": True, "max_steps": 5})))
        return "5 compiled steps at the default stage"

    def mfu(self) -> str:
        """The kernels' share of peak on a plain training step (fused AdamW, bf16 autocast on a GPU),
        beside `vitc plan`'s prediction for one GPU (no communication: its --mfu assumption)."""
        from vitc.engine.meters import FLOPS_PER_MULTIPLY_ADD, device_peak_flops
        from vitc.models.cost import model_cost
        from vitc.models.spec import get_spec
        from vitc.models.vit import VisionTransformer
        from vitc.plan.planner import plan_run
        from vitc.plan.setup import Cluster, load_run_config, run_setup

        models = ("vit_c_1gf",) if self.cpu else ("vit_c_36gf", "vit_c_72gf")
        (batch, steps), lines = ((4, 2) if self.cpu else (32, 10)), []
        precision = "fp32" if self.cpu else "bf16"
        peak = device_peak_flops(torch.device(self.device), precision)[0]
        if not peak:
            raise Skip(f"{torch.cuda.get_device_name()} is not in vitc/resources/gpus.yaml: no peak to divide by")
        for name in models:
            spec = get_spec(name)
            model = VisionTransformer(spec).to(self.device)
            optimizer = torch.optim.AdamW(model.parameters(), fused=not self.cpu or None)
            images = torch.randn(batch, 3, spec.image_size, spec.image_size, device=self.device)
            labels = torch.randint(0, spec.num_classes, (batch,), device=self.device)

            def step(model=model, optimizer=optimizer, images=images, labels=labels):
                with torch.autocast(self.device, dtype=torch.bfloat16, enabled=not self.cpu):
                    loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            for i in range(2 + steps):
                if i == 2:  # after the warm-up
                    if not self.cpu:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                step()
            if not self.cpu:
                torch.cuda.synchronize()
            images_per_s = steps * batch / (time.perf_counter() - start)
            measured = images_per_s * 3 * model_cost(spec).flops * FLOPS_PER_MULTIPLY_ADD / peak
            gpu = "cpu" if self.cpu else _table_name()
            plan = plan_run(run_setup(load_run_config(name, [f"train.micro_batch={batch}"]), Cluster(1, 1, gpu=gpu)))
            lines.append(f"{name} at batch {batch}: measured {measured:.1%} of peak, plan predicts "
                         f"{plan.mfu:.1%} (`vitc plan {name} --gpu {gpu} --nodes 1 --gpus-per-node 1 "
                         f"train.micro_batch={batch}`)")
            # the one input of the scale-out prediction only a GPU gives: the kernels' share of peak
            share = round(min(1.0, max(measured, 0.01)), 2)
            overrides = [f"train.micro_batch={batch}", f"model.num_classes={SCALE_OUT_CLASSES}"]
            scaled = plan_run(run_setup(load_run_config(name, overrides), Cluster(*SCALE_OUT, gpu=gpu, mfu=share)))
            lines.append(f"{name} on {SCALE_OUT[0]} × {SCALE_OUT[1]} with kernels at {share:g} of peak: plan predicts "
                         f"{scaled.mfu:.1%} MFU (`vitc plan {name} --gpu {gpu} --nodes {SCALE_OUT[0]} "
                         f"--gpus-per-node {SCALE_OUT[1]} --mfu {share:g} train.micro_batch={batch} "
                         f"model.num_classes={SCALE_OUT_CLASSES}`)")
        return "; ".join(lines)


def _table_name() -> str:
    from vitc.plan.gpus import load_gpus

    name = torch.cuda.get_device_name().lower()
    for key in load_gpus():
        if all(w in name for w in key.split("-")):
            return key
    raise Skip(f"{name} is not in vitc/resources/gpus.yaml: add it to plan its MFU")


def run_smoke(out: Path, cpu: bool) -> list[tuple[str, str, str]]:
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device; pass --cpu for the CPU path")
    smoke = Smoke(out, cpu)
    checks = [("host syncs", smoke.host_syncs), ("universal resume", smoke.universal_resume),
              ("bf16 numerics", smoke.bf16_numerics), ("JPEG decode", smoke.jpeg_decode),
              ("ZeRO 0-3 steps", smoke.zero_stages), ("export ZeRO-1", smoke.export(1)),
              ("export ZeRO-3", smoke.export(3)), ("compile", smoke.compile), ("MFU", smoke.mfu)]
    for name, fn in checks:
        smoke.check(name, fn)
    return smoke.results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU path (what the test suite runs)")
    parser.add_argument("--out", help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    from vitc.log import setup_logging

    setup_logging(0)
    with (contextlib.nullcontext(args.out) if args.out else tempfile.TemporaryDirectory()) as out:
        results = run_smoke(Path(out), args.cpu)
    failed = [name for status, name, _ in results if status == "FAIL"]
    print(f"gpu_smoke: {len(results) - len(failed)} of {len(results)} checks passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def _cpu_stand_in(datas: list[bytes], boxes, device: torch.device) -> list:
    """The CPU's decode_jpeg in the GPU decoder's place for `--cpu`: the same routing (the decode
    path sends CMYK to the CPU decoder before it gets here), not the hardware decoder itself."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = []
    for data, box in zip(datas, boxes):
        full = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        images.append(full[:, box.top:box.top + box.height, box.left:box.left + box.width].to(device))
    return images

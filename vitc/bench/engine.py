"""`vitc bench engine`: a training step through DeepSpeed (ZeRO 0-3) vs the same step in plain PyTorch.

Same model weights, AdamW with the same parameter groups, same batch, one process; candidates are
timed round-robin in one run (`vitc.bench.timing`). Each step is split into forward, backward and
optimizer step so an overhead shows where it lives (an earlier measurement of DeepSpeed 0.19.8 on
a 2-core CPU found ~12 %: forward +20 %, backward +10 %; docs/engine.md has vitc's figures). The
engines come from the builder `vitc train` uses (`vitc.engine.build`), with its DeepSpeed config.
"""

import copy
import logging
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitc.bench.timing import interleaved_rates
from vitc.config import load_config
from vitc.engine.optim import build_optimizer
from vitc.engine.runtime import resolve_runtime
from vitc.engine.build import build_engine, engine_session
from vitc.launch.env import DistEnv
from vitc.models.vit import VisionTransformer
from vitc.run import resolve_run

log = logging.getLogger(__name__)

PHASES = ("forward", "backward", "step")


class PhasedStep:
    """One training step whose phases are timed on every call."""

    def __init__(self, forward: Callable, backward: Callable, step: Callable):
        self.parts = dict(zip(PHASES, (forward, backward, step)))
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}

    def __call__(self) -> None:
        value = None
        for phase, fn in self.parts.items():
            start = time.perf_counter()
            value = fn(value)
            self.times[phase].append(time.perf_counter() - start)

    def medians_ms(self) -> dict[str, float]:
        return {p: 1000 * statistics.median(t) for p, t in self.times.items()}


def _plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, labels) -> PhasedStep:
    def step(_):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return PhasedStep(lambda _: F.cross_entropy(model(images), labels), lambda loss: loss.backward(), step)


def _engine_step(engine, images, labels) -> PhasedStep:
    return PhasedStep(lambda _: F.cross_entropy(engine(images), labels), engine.backward,
                      lambda _: engine.step())


def bench_engine(name: str = "vit_p_1gf", batch: int = 32, iters: int = 5, rounds: int = 5,
                 stages: str = "0,1,2,3", warmup: int = 2) -> dict[str, dict[str, float]]:
    """Per-phase median ms and images/s of plain PyTorch and of DeepSpeed at each ZeRO stage."""
    cfg = load_config(None, [f"model.name={name}", f"train.micro_batch={batch}", "train.precision=fp32",
                             "train.device=cpu", "model.num_classes=1000"])
    rt = resolve_runtime(cfg.train, DistEnv())
    with engine_session(DistEnv(), rt, cfg.train.dist_timeout_s):
        torch.manual_seed(0)
        run = resolve_run(cfg, 1, "cpu", shards=())
        base = VisionTransformer(run.spec)
        images = torch.randn(batch, 3, cfg.model.image_size, cfg.model.image_size)
        labels = torch.randint(0, cfg.model.num_classes, (batch,))
        plain = copy.deepcopy(base)
        steps = {"plain": _plain_step(plain, build_optimizer(plain, cfg.optim, run.lr, False), images, labels)}
        for stage in (int(s) for s in stages.split(",")):
            cfg.train.zero_stage = stage
            engine, _ = build_engine(copy.deepcopy(base), cfg, resolve_run(cfg, 1, "cpu", shards=()), rt)
            steps[f"zero{stage}"] = _engine_step(engine, images, labels)
        log.info("timing %s: %s at batch %d, %d thread(s)", ", ".join(steps), name, batch, torch.get_num_threads())
        rates = interleaved_rates(steps, batch, warmup, iters, rounds)
        return {k: {**s.medians_ms(), "images_per_s": rates[k]} for k, s in steps.items()}


def format_engine_bench(results: dict[str, dict[str, float]]) -> str:
    plain = results["plain"]
    head = f"{'loop':<8} {'images/s':>9} {'overhead':>9} " + " ".join(f"{p + ' ms':>12}" for p in PHASES)
    lines = [head]
    for name, r in results.items():
        overhead = plain["images_per_s"] / r["images_per_s"] - 1.0
        phases = " ".join(f"{r[p]:>7.1f} ({r[p] / max(plain[p], 1e-9) - 1:+4.0%})" if name != "plain"
                          else f"{r[p]:>12.1f}" for p in PHASES)
        lines.append(f"{name:<8} {r['images_per_s']:>9.2f} {overhead:>+9.1%} {phases}")
    lines.append("overhead = plain images/s ÷ engine images/s − 1; phase times are medians per step "
                 "(% vs plain)")
    return "\n".join(lines)

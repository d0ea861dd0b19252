"""The training loop of one invocation (`vitc.engine.train` starts it).

The trainer builds the plain model and data, wraps the model with `deepspeed.initialize` in
exactly one place (`vitc/engine/build.py`), restores the resume point, and runs the loop, which
calls only engine methods. Every optimizer step the ranks sum, with one all_reduce on the device,
two flags and the loss: a preemption signal arrived (then all ranks save at one same step, rank 0
writes the outcome and requeues the Slurm job) and a loss was not finite (then all ranks stop with
a `Diverged` error before any later save can overwrite good state). The host reads the sums, which
waits for the device, only every `log.every_steps` steps, before every save and at the end of an
epoch: the same steps on every rank, so the ranks still agree, and a signal is acted on at most
`log.every_steps` steps late.
"""

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.nn.functional as F

from vitc.checkpoint import resume_point
from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.resume_point import ResumePoint
from vitc.checkpoint.store import CheckpointInfo
from vitc.config import save_config
from vitc.distributed.env import DistEnv
from vitc.distributed.signals import PreemptionSignal
from vitc.engine.bookkeeping import StepBook
from vitc.engine.build import build_engine
from vitc.engine.ema import ModelEMA, ShardedEMA, ema_rule
from vitc.engine.evaluate import evaluate
from vitc.engine.meters import Goodput, MetricsLog, RunMeters, console_line
from vitc.engine.optim import freeze
from vitc.engine.precise_bn import (
    batches_per_rank,
    has_batchnorm,
    precise_bn,
    precise_bn_loader,
)
from vitc.engine.resume import client_state, log_data_position, restore
from vitc.engine.runtime import (
    Runtime,
    environment_summary,
    run_on,
    seed_everything,
)
from vitc.engine.timeouts import collectives_may_wait
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.models.cost import model_cost
from vitc.models.vit import VisionTransformer
from vitc.outcome import Diverged, Score
from vitc.run import Run
from vitc.schema import Config
from vitc.weights.init_from import init_model

log = logging.getLogger(__name__)


class Trainer:
    """State of one training invocation. Methods marked 'every rank' contain collectives."""

    evaluation: Score | None = None  # the run's last evaluation (kept across a resume)
    ema_evaluation: Score | None = None
    skipped_in_row: int = 0  # optimizer steps DeepSpeed skipped in a row, up to the last one

    def __init__(self, cfg: Config, dist: DistEnv, rt: Runtime, preempt: PreemptionSignal,
                 run: Run | None = None):
        from vitc.data.loading.loader import build_eval_loader, build_train_loader

        self.goodput = Goodput()  # start-up runs from here to the first step
        self.cfg, self.dist, self.rt, self.preempt = cfg, dist, rt, preempt
        self.run = run or run_on(cfg, dist, rt)
        self.run_dir = Path(cfg.train.run_dir)
        self.accum = self.run.grad_accum
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        # the shards as the run resolved them and checked their classes (vitc.run.resolve_run)
        self.loader = build_train_loader(cfg, self.run, dist)
        self.eval_loader = build_eval_loader(cfg, self.run, dist) if self.run.val else None
        self.steps_per_epoch = len(self.loader) // self.accum
        if self.steps_per_epoch < 1:
            raise VitcError(f"the training data gives {len(self.loader)} micro-batches per rank per "
                            f"epoch, fewer than train.grad_accum={self.accum}: lower train.micro_batch "
                            "or train.grad_accum, or add data")
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.global_batch = self.run.global_batch
        self.bn_loader = self._precise_bn_loader()
        self.metrics = None
        for loader in (self.loader, self.eval_loader, self.bn_loader):
            if loader is not None:  # forked before the model exists, so that they do not map it
                loader.start_workers()
        try:
            self._build(cfg, dist, rt)
        except BaseException:  # the workers wait for a first pass: let them go, or exit waits for them
            self.close()
            raise

    def _build(self, cfg: Config, dist: DistEnv, rt: Runtime) -> None:
        """The model, its EMA, the engine and the resumed state, after the loaders' workers started."""
        model = self._build_model()
        rule = ema_rule(cfg, self.global_batch)
        sharded = rule is not None and self.run.zero_stage == 3
        # ZeRO 0-2: a full fp32 copy, taken before deepspeed.initialize converts or partitions the model
        self.ema = ModelEMA(model, rule) if rule is not None and not sharded else None
        self.step = self.epoch = self.micro_in_epoch = 0
        self.last_saved: CheckpointInfo | None = None
        resume = self._resume_point() if cfg.checkpoint.resume else None
        if resume:
            checkpoint.same_architecture(self.run_dir, resume.info, self.run.spec)
        self.engine, self.ds_config = build_engine(model, cfg, self.run, rt, self.steps_per_epoch,
                                                   bool(resume and resume.universal))
        if sharded:  # ZeRO-3: this rank's partitions, as deepspeed.initialize made them
            self.ema = ShardedEMA(self.engine.module, rule)
        lr = self.run.lr
        if resume:
            with collectives_may_wait(cfg.checkpoint.save_timeout_min, cfg.train.collective_timeout_min):
                restored = restore(self, resume)
            self.step, self.epoch, self.micro_in_epoch = restored.step, restored.epoch, restored.micro_in_epoch
            self.total_steps, self.last_saved = restored.total_steps, resume.info
            self.evaluation, self.ema_evaluation = restored.evaluation, restored.ema_evaluation
        self.metrics = MetricsLog(self.run_dir, cfg.log.tensorboard) if dist.is_main else None
        self.run_meters = RunMeters(self.goodput, model_cost(self.run.spec).flops, cfg.model.act_checkpoint,
                                    rt.device, self.run.precision, self.run_dir, self.step, bool(resume), dist.is_main)
        log_data_position(self, "start", resume.info.step if resume else None)
        if dist.is_main:
            self._write_run_files(lr)

    def _resume_point(self) -> ResumePoint | None:
        """The checkpoint this start resumes from, rank 0's choice (vitc/checkpoint/resume_point.py).
        The other ranks wait in a broadcast while rank 0 reads the checkpoints' files: a read of a
        checkpoint through a shared filesystem, bounded as a save or load is. Every rank."""
        cfg = self.cfg
        with collectives_may_wait(cfg.checkpoint.save_timeout_min, cfg.train.collective_timeout_min):
            return resume_point.agreed(self.run_dir, self.dist.world_size, self.run.zero_stage, self.dist.rank,
                                       cfg.optim.name)

    def _build_model(self) -> torch.nn.Module:
        model = VisionTransformer(self.run.spec)
        init_model(model, self.cfg, self.dist.rank)  # finetune.init_from (vitc/weights/init_from.py)
        freeze(model, self.cfg.train.freeze)  # before the optimizer groups and the EMA copy are made
        # the parameters stay contiguous, for DeepSpeed's broadcast and flat buffers; `_prepare` makes
        # only the input NHWC, which cuDNN follows (docs/engine.md, "Precision", channels_last)
        return model.to(self.rt.device)

    def performance(self) -> dict[str, float]:
        """Goodput and its parts over this invocation (outcome.json, every log line)."""
        return self.run_meters.performance(self.step)

    def _write_run_files(self, lr: float) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        atomic_write_text(self.run_dir / "deepspeed_config.json", json.dumps(self.ds_config, indent=1) + "\n")
        env = {**environment_summary(self.dist, self.rt), "precision": self.run.precision,
               "global_batch": self.global_batch, "lr": lr,
               "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}
        atomic_write_text(self.run_dir / "environment.json", json.dumps(env, indent=1) + "\n")
        log.info("run %s: %d rank(s), %s, %s, ZeRO-%d, global batch %d (micro-batch %d × accumulation "
                 "%d × %d rank(s)), lr %.3g at that batch, %d steps/epoch", self.run_dir,
                 self.dist.world_size, self.rt.device, self.run.precision, self.run.zero_stage,
                 self.global_batch, self.run.micro_batch, self.accum, self.dist.world_size, lr,
                 self.steps_per_epoch)

    # ---- the loop ----------------------------------------------------------------------

    def fit(self) -> str:
        """Train to the end of the schedule, to train.max_steps, or to a preemption; returns which
        (finished | max_steps | preempted). Every rank."""
        stopped = "max_steps" if self._stop_reason(preempted=False) else "finished"  # resumed at max_steps
        try:
            while self.epoch < self.cfg.schedule.epochs and stopped == "finished":
                stopped = self._train_epoch()
                if stopped != "finished":
                    break
                self.epoch, self.micro_in_epoch = self.epoch + 1, 0
                if self._eval_due():
                    with self.goodput.timed("evaluation"):
                        self._precise_bn()  # before the save: the checkpoint holds what is evaluated
                self._save()
                if self._eval_due():
                    with self.goodput.timed("evaluation"):
                        self._evaluate()
        finally:  # the loaders' persistent workers end with the run, not whenever this object is freed
            self.close()
        return stopped

    def close(self) -> None:
        """Stop the loaders' workers and close the metrics files; every exit path calls this."""
        for loader in (self.loader, self.eval_loader, self.bn_loader):
            if loader is not None:
                loader.close()
        if self.metrics is not None:
            self.metrics.close()

    def _train_epoch(self) -> str:
        """Optimizer steps until the epoch ends ('finished') or the run must stop. Every rank."""
        self.loader.set_epoch(self.epoch)  # the epoch a resumed loader is in keeps its position
        batches = iter(self.loader)
        self.book = StepBook(self.rt.device, self.dist.world_size, self.accum, self.run_meters)
        if self.goodput.seconds["startup"] == 0.0:
            self.goodput.add("startup", time.perf_counter() - self.goodput.start)
        while self.micro_in_epoch < self.steps_per_epoch * self.accum:
            batch = self.book.next_batch(batches)
            if batch is None:  # after a world-size change the loader may resume a batch later
                break
            self.book.add_loss(self._micro_step(*batch))
            self.micro_in_epoch += 1
            if self.micro_in_epoch % self.accum:
                continue
            self.step += 1
            self.book.end_step(self.preempt.requested)
            self._count_skipped()
            if self.ema is not None:  # pycls counts the iteration within the epoch (vitc/engine/ema.py)
                self.ema.update(self.engine.module, self.epoch, self.micro_in_epoch // self.accum - 1)
            save = self._stop_reason(False) or self.step % self.cfg.checkpoint.every_steps == 0
            if not save and self.step % self.cfg.log.every_steps:
                continue
            stop = self._stop_reason(self._agree_on_flags())
            if self.step % self.cfg.log.every_steps == 0:
                self._log()
            if stop or save:
                self._save()
            if stop:
                return stop
        if self._agree_on_flags():  # before the epoch's save
            self._save()
            return self._stop_reason(True)
        return "finished"

    def _micro_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward, backward and (at an accumulation boundary) the optimizer step."""
        images = self._prepare(images, self.engine.module.head.weight.dtype)
        targets = targets.to(self.rt.device, non_blocking=True)
        loss = F.cross_entropy(self.engine(images).float(), targets)  # int labels or soft targets
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    def _prepare(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        fmt = torch.channels_last if self.rt.channels_last else torch.contiguous_format
        return images.to(self.rt.device, dtype, non_blocking=True, memory_format=fmt)

    def _agree_on_flags(self) -> bool:
        """Read the step flags summed since the last read (this waits for the device): whether any
        rank was signalled. Raises on a non-finite loss before anything is saved. Every rank, at
        the same steps."""
        preempted, diverged, loss = self.book.read()
        if diverged:
            good = self.last_saved.tag if self.last_saved else "none saved yet"
            raise Diverged(
                f"loss is not finite (mean over ranks {loss:.4g}) at epoch {self.epoch + 1}, "
                f"step {self.step}: training stopped and the last good checkpoint ({good}) is kept. "
                "Lower optim.base_lr, set train.clip_grad, or use train.precision=fp32")
        return preempted

    def _count_skipped(self) -> None:
        """DeepSpeed skips an optimizer step whose gradients are not finite (ZeRO >= 1, fp16 loss
        scaling) without an error, so a run at a huge lr can "finish" untrained. Log each skip;
        more than train.max_skipped_steps in a row is divergence, a failure in the paper's count.
        Every rank (DeepSpeed agrees on the overflow over ranks)."""
        if self.engine.was_step_applied():
            self.skipped_in_row = 0
            return
        self.skipped_in_row += 1
        limit = self.cfg.train.max_skipped_steps
        log.warning("step %d skipped by DeepSpeed: gradients not finite (%d in a row, %d in the run)",
                    self.step, self.skipped_in_row, self.engine.skipped_steps)
        if self.skipped_in_row > limit:
            raise Diverged(f"{self.skipped_in_row} optimizer steps in a row were skipped for non-finite "
                           f"gradients, up to epoch {self.epoch + 1}, step {self.step}: more than "
                           f"train.max_skipped_steps={limit}. Lower optim.base_lr or set train.clip_grad")

    def _stop_reason(self, preempted: bool) -> str | None:
        if preempted and not self.preempt.interrupted:
            # SIGUSR1 is Slurm's warning before the time limit; SIGTERM is scancel, not requeued
            name = signal.Signals(self.preempt.received).name if self.preempt.received else "a peer's"
            log.warning("%s signal: saving at step %d; requeued only if Slurm still runs the job",
                        name, self.step)
        if preempted:
            return "preempted"
        max_steps = self.cfg.train.max_steps
        return "max_steps" if max_steps is not None and self.step >= max_steps else None

    def _log(self) -> None:
        """Console line, JSONL and TensorBoard (rank 0); the book starts a new window."""
        summary = self.book.record(self.step)
        if self.metrics is not None:
            record = {**summary, "epoch": self.epoch, "epochs": self.cfg.schedule.epochs,
                      "total_steps": self.total_steps, "lr": self.engine.get_lr()[0],
                      "grad_norm": self._grad_norm()}
            record["eta_s"] = record["step_s"] * (self.total_steps - self.step)
            log.info(console_line({**record, "step": self.step}))
            self.metrics.write("train", self.step, record)

    def _grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else None
        return norm if norm is None or math.isfinite(norm) else None

    def _eval_due(self) -> bool:
        every = self.cfg.eval.every_epochs
        last = self.epoch == self.cfg.schedule.epochs
        return self.eval_loader is not None and every > 0 and (self.epoch % every == 0 or last)

    def _precise_bn_loader(self):
        """Training images for precise BN statistics, when they are on and the model has BatchNorm."""
        on = self.cfg.eval.precise_bn_samples > 0 and self.eval_loader is not None and has_batchnorm(self.run.spec)
        return precise_bn_loader(self.cfg, self.run, self.dist) if on else None

    def _precise_bn(self) -> None:
        """Re-estimate BN statistics of the model and of its EMA over eval.precise_bn_samples training
        images, as pycls does before every evaluation (vitc/engine/precise_bn.py). Every rank."""
        if self.bn_loader is None:
            return
        models = {"model": lambda: nullcontext(self.engine)}
        if self.ema is not None:
            models["EMA"] = lambda: self.ema.applied(self.engine)
        batches = batches_per_rank(self.cfg.eval.precise_bn_samples, self.run.micro_batch,
                                   self.dist.world_size, len(self.bn_loader))
        precise_bn(models, self.bn_loader, self.epoch, batches, self._prepare)

    def _sync_buffers(self) -> None:
        """Average BatchNorm running statistics over ranks. Each rank's statistics follow its own
        data (DeepSpeed, unlike DDP, does not broadcast buffers), so without this the evaluated
        and the saved model would be rank 0's alone. Every rank."""
        for buffer in self.engine.module.buffers():
            if buffer.is_floating_point() and self.dist.world_size > 1:
                tdist.all_reduce(buffer)
                buffer /= self.dist.world_size

    def _evaluate(self) -> None:
        """Top-1/top-5 of the engine's weights and of the EMA weights -> self.evaluation,
        self.ema_evaluation. Every rank."""
        self._sync_buffers()
        dtype = self.engine.module.head.weight.dtype
        accuracy = evaluate(self.engine, self.eval_loader, lambda x: self._prepare(x, dtype))
        ema_accuracy = None
        if self.ema is not None:
            with self.ema.applied(self.engine) as ema_model:  # ZeRO-3: swapped into the engine
                ema_dtype = next(ema_model.parameters()).dtype
                ema_accuracy = evaluate(ema_model, self.eval_loader, lambda x: self._prepare(x, ema_dtype))
        if self.metrics is not None:
            values = {"epoch": self.epoch, "top1": accuracy.top1, "top5": accuracy.top5, "count": accuracy.count}
            if ema_accuracy is not None:
                values.update(ema_top1=ema_accuracy.top1, ema_top5=ema_accuracy.top5)
            log.info("eval after epoch %d: %s", self.epoch,
                     ", ".join(f"{k} {v:.2f}" for k, v in values.items() if k not in ("epoch", "count")))
            self.metrics.write("eval", self.step, values)
        self.evaluation = Score.of(accuracy, self.epoch)
        self.ema_evaluation = Score.of(ema_accuracy, self.epoch) if ema_accuracy is not None else None

    # ---- checkpoints -------------------------------------------------------------------

    def _save(self) -> None:
        """A complete checkpoint at this step (skipped when this step is already saved). Every rank."""
        if self.last_saved is not None and self.last_saved.step == self.step:
            return
        with self.goodput.timed("checkpoint"):
            self._save_now()

    def _save_now(self) -> None:
        self._sync_buffers()
        info = CheckpointInfo(checkpoint.tag_for(self.step), self.step, self.epoch,
                              self.dist.world_size, self.run.zero_stage)
        ema_files = (None if self.ema is None else
                     lambda tag_dir: self.ema.save(tag_dir, self.dist.rank, self.dist.world_size))
        log_data_position(self, "save")  # before the checkpoint is complete: a resume finds it logged
        with collectives_may_wait(self.cfg.checkpoint.save_timeout_min, self.cfg.train.collective_timeout_min):
            checkpoint.save(self.engine, self.run_dir, info, client_state(self), self.dist.rank,
                            self.cfg.checkpoint.keep_last, rank_files=ema_files)
        self.last_saved = info

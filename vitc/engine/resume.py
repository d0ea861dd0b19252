"""What a checkpoint holds besides DeepSpeed's own state, and how a trainer gets it back: the
position, every rank's RNG and loader state, the buffers, the last evaluations, and the rules for
a checkpoint saved on another number of ranks. Mixed into `vitc.engine.trainer.Trainer`, whose
attributes these methods read and set."""

import logging

import torch.distributed as tdist

from vitc.checkpoint import store as checkpoint
from vitc.checkpoint.ema_files import ema_saved
from vitc.checkpoint.store import CheckpointInfo
from vitc.config import config_to_dict
from vitc.data.ledger import RECORD, position_record
from vitc.engine.runtime import rng_state, seed_everything, set_rng_state
from vitc.errors import VitcError
from vitc.outcome import read_outcome

log = logging.getLogger(__name__)


class Resuming:
    """The checkpoint-content half of the trainer."""

    def _client_state(self) -> dict:
        """Position, config, and the RNG and loader state of every rank (gathered). Every rank."""
        mine = {"rng": rng_state(), "loader": self.loader.state_dict()}
        ranks: list = [None] * self.dist.world_size
        tdist.all_gather_object(ranks, mine)
        return {"epoch": self.epoch, "step": self.step, "micro_in_epoch": self.micro_in_epoch,
                "micro_per_epoch": self.steps_per_epoch * self.accum, "world_size": self.dist.world_size, "ranks": ranks,
                "config": config_to_dict(self.cfg), "buffers": checkpoint.buffer_state(self.engine.module),
                "architecture": checkpoint.architecture(self.run.spec),
                "classes": self.run.train.manifest.classes if self.run.train else None}

    def _log_data_position(self, event: str, resumed_from: int | None = None) -> None:
        """Where training is in its data (rank 0's loader state) into metrics.jsonl, at start and with
        every checkpoint: `vitc data ledger` replays the run from these records. Rank 0 writes."""
        if self.metrics is not None:
            self.metrics.write(RECORD, self.step, position_record(
                event, self.epoch, self.micro_in_epoch, self.steps_per_epoch * self.accum,
                self.loader.state_dict(), resumed_from))

    def _restore(self, info: CheckpointInfo, tag: str) -> None:
        """Load weights, optimizer, schedule, position, RNG, loader and EMA. Every rank."""
        root = checkpoint.checkpoint_root(self.run_dir)
        fresh = checkpoint.schedule_before_load(self.engine.lr_scheduler)
        path, client = self.engine.load_checkpoint(str(root), tag=tag)
        if path is None or not client:
            raise VitcError(f"could not load checkpoint {root / tag}: DeepSpeed found no loadable state")
        self.step, self.epoch = client["step"], client["epoch"]
        if "buffers" in client:  # absent from checkpoints written before buffers travelled there
            checkpoint.restore_buffers(self.engine.module, client["buffers"])
        ranks = client["ranks"]
        if len(ranks) == self.dist.world_size:
            self.micro_in_epoch = client["micro_in_epoch"]
            set_rng_state(ranks[self.dist.rank]["rng"])
            self.loader.load_state_dict(ranks[self.dist.rank]["loader"])
        else:
            self._restore_resized(client, fresh)
        if self.ema is not None and ema_saved(root / info.tag):  # else: the EMA starts here
            self.ema.load(root / info.tag, self.dist.rank, self.dist.world_size)
        self.last_saved = info
        self._restore_evaluations()
        log.info("resumed from %s: epoch %d, step %d", root / tag, self.epoch + 1, self.step)

    def _restore_evaluations(self) -> None:
        """The last evaluations of the previous invocation's outcome, when not newer than the
        restored position (checkpoints are saved before an epoch's evaluation)."""
        previous = read_outcome(self.run_dir)
        if previous is not None:
            kept = [s if s is not None and s.epoch <= self.epoch else None
                    for s in (previous.evaluation, previous.ema_evaluation)]
            self.evaluation, self.ema_evaluation = kept

    def _restore_resized(self, client: dict, fresh: checkpoint.FreshSchedule) -> None:
        """Another world size: weights and optimizer state came through the universal checkpoint;
        the loader resumes the epoch at the same fraction (per-rank positions do not map onto a
        new sharding) and the RNG is re-seeded per rank from (seed, step). The lr schedule is this
        run's, continued at the same epoch position: with train.global_batch set that is the saved
        schedule itself; without it the global batch, its lr and the steps per epoch are the new
        world's, and the run ends after the steps that remain of the new schedule."""
        fraction = client["micro_in_epoch"] / client["micro_per_epoch"]
        self.micro_in_epoch = int(fraction * self.steps_per_epoch) * self.accum
        self.loader.load_state_dict(client["ranks"][0]["loader"])
        seed_everything(self.cfg.train.seed + 1_000_003 * self.step + self.dist.rank)
        position = self.epoch * self.steps_per_epoch + self.micro_in_epoch // self.accum
        lr = checkpoint.continue_schedule(self.engine.lr_scheduler, fresh, position)
        self.total_steps = self.step + self.total_steps - position  # the optimizer step the run ends at
        log.warning("checkpoint saved on %d rank(s), resuming on %d: epoch %d continues at %.0f %%, "
                    "schedule step %d of %d at global batch %d (next lr %.3g)", client["world_size"],
                    self.dist.world_size, self.epoch + 1, 100 * fraction, position,
                    self.cfg.schedule.epochs * self.steps_per_epoch, self.global_batch, lr)

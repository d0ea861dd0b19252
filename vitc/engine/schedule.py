"""Learning rate: linear warmup + half-period cosine (pycls `vitconfigs` 206d0db,
pycls/core/optimizer.py `get_epoch_lr`); the lr at the global batch is the run's (vitc.run.scaled_lr).

The authors set the lr once per epoch (pycls/core/trainer.py `train_epoch` calls
`get_epoch_lr(cur_epoch)` with the integer epoch): `schedule.lr_update: epoch`, the default. The
lr of epoch e is the cosine at e / epochs, times the warmup factor at e / warmup_epochs while
e < warmup_epochs; the first epoch runs at warmup_factor × lr, the last at the cosine of
(epochs - 1) / epochs, never at the floor itself. `schedule.lr_update: step` evaluates the same
curve at every optimizer step instead (in steps, so it is exact for any number of steps per epoch):
a smoother warmup, vitc's option, not the paper's.

Either way the multiplier is a function of the optimizer step alone, which LambdaLR's checkpointed
step count restores, so an exact resume (vitc/engine/resume.py) lands on the same lr.
"""

import math
from dataclasses import dataclass

from vitc.schema import ScheduleConfig


@dataclass(frozen=True)
class WarmupCosine:
    """lr multiplier at optimizer step t: cosine from 1 to `floor` over `total` units, times a
    linear warmup factor rising from `warmup_factor` to 1 over `warmup` units (pycls's rule). A
    unit is `steps_per_unit` optimizer steps: 1 (per-step updates) or the steps of one epoch
    (per-epoch updates, the authors'); the unit of step t is t // steps_per_unit.

    A callable object (not a lambda) so that torch's LambdaLR can sit in a DeepSpeed checkpoint.
    """

    total: int
    warmup: float
    warmup_factor: float
    floor: float
    steps_per_unit: int = 1

    def __call__(self, step: int) -> float:
        unit = step // self.steps_per_unit
        progress = min(unit, self.total) / self.total
        cosine = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if unit < self.warmup:
            alpha = unit / self.warmup
            return cosine * (self.warmup_factor * (1.0 - alpha) + alpha)
        return cosine


def warmup_cosine(schedule: ScheduleConfig, steps_per_epoch: int) -> WarmupCosine:
    """The schedule of a run with `steps_per_epoch` optimizer steps per epoch (its ranges are the
    schema's, checked by `load_config`), updated per epoch or per step (`schedule.lr_update`)."""
    if schedule.lr_update == "epoch":
        return WarmupCosine(total=schedule.epochs, warmup=schedule.warmup_epochs,
                            warmup_factor=schedule.warmup_factor, floor=schedule.min_lr_factor,
                            steps_per_unit=steps_per_epoch)
    return WarmupCosine(total=schedule.epochs * steps_per_epoch,
                        warmup=round(schedule.warmup_epochs * steps_per_epoch),
                        warmup_factor=schedule.warmup_factor, floor=schedule.min_lr_factor)

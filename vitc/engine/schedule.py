"""Learning rate: the per-iteration warmup + half-period cosine (pycls `vitconfigs` 206d0db,
pycls/core/optimizer.py); the lr at the global batch is the run's (vitc.run.scaled_lr).

pycls evaluates its schedule at fractional epochs (`cur_epoch + cur_iter / epoch_iters`); here the
same curve is a function of the optimizer step, so it is exact for any number of steps per epoch.
"""

import math
from dataclasses import dataclass

from vitc.schema import ScheduleConfig


@dataclass(frozen=True)
class WarmupCosine:
    """lr multiplier at optimizer step t: cosine from 1 to `floor` over `total_steps`, times a
    linear warmup factor rising from `warmup_factor` to 1 over `warmup_steps` (pycls's rule).

    A callable object (not a lambda) so that torch's LambdaLR can sit in a DeepSpeed checkpoint.
    """

    total_steps: int
    warmup_steps: int
    warmup_factor: float
    floor: float

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        cosine = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return cosine * (self.warmup_factor * (1.0 - alpha) + alpha)
        return cosine


def warmup_cosine(schedule: ScheduleConfig, steps_per_epoch: int) -> WarmupCosine:
    """The schedule of a run with `steps_per_epoch` optimizer steps per epoch (its ranges are the
    schema's, checked by `load_config`)."""
    return WarmupCosine(total_steps=schedule.epochs * steps_per_epoch,
                        warmup_steps=round(schedule.warmup_epochs * steps_per_epoch),
                        warmup_factor=schedule.warmup_factor, floor=schedule.min_lr_factor)

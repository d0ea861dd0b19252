"""Learning rate: batch scaling and the per-iteration warmup + half-period cosine (SPEC §2, pycls).

pycls evaluates its schedule at fractional epochs (`cur_epoch + cur_iter / epoch_iters`); here the
same curve is a function of the optimizer step, so it is exact for any number of steps per epoch.
"""

import math
from dataclasses import dataclass

from vitc.errors import VitcError
from vitc.schema import OptimConfig, ScheduleConfig


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """base_lr scaled by global_batch / reference_batch (`linear`, `sqrt` or `none`)."""
    ratio = global_batch / optim.reference_batch
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[optim.lr_scaling]
    return optim.base_lr * factor


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
    """The schedule of a run with `steps_per_epoch` optimizer steps per epoch."""
    if schedule.epochs < 1:
        raise VitcError(f"schedule.epochs must be >= 1, got {schedule.epochs}")
    if not 0 <= schedule.warmup_epochs <= schedule.epochs:
        raise VitcError(f"schedule.warmup_epochs must be in [0, schedule.epochs={schedule.epochs}], "
                        f"got {schedule.warmup_epochs}")
    for key in ("warmup_factor", "min_lr_factor"):
        if not 0.0 <= getattr(schedule, key) <= 1.0:
            raise VitcError(f"schedule.{key} must be in [0, 1], got {getattr(schedule, key)}")
    return WarmupCosine(total_steps=schedule.epochs * steps_per_epoch,
                        warmup_steps=round(schedule.warmup_epochs * steps_per_epoch),
                        warmup_factor=schedule.warmup_factor, floor=schedule.min_lr_factor)

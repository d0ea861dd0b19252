"""The trainer's per-step bookkeeping around the engine step, in one place the trainer and
`vitc bench meters` both run.

Every optimizer step the ranks sum, with one all_reduce left on the device, [preemption requested,
loss not finite, loss] and, with MFU/goodput metering, the step's image count; the host reads the
sums only when the trainer asks (log lines, saves, an epoch's end). Metering adds, besides that
count, the data-wait timing around each batch fetch (`DataWait`) and, at a log line, the MFU and
goodput summaries (`RunMeters.record`). Without `meters` the same bookkeeping runs without them:
what `vitc bench meters` compares the trainer against.
"""

from collections.abc import Iterator

import torch
import torch.distributed as tdist

from vitc.engine.meters import DataWait, RunMeters, Window


class StepBook:
    """One epoch's sums: the micro-batches' loss, the flags not yet read, the log line's window.
    Methods with a collective say so; every rank calls them at the same steps."""

    def __init__(self, device: torch.device, world_size: int, accum: int, meters: RunMeters | None):
        self.device, self.world_size, self.accum, self.meters = device, world_size, accum, meters
        self.data_wait = DataWait(device) if meters is not None else None
        self.window = Window()
        self.loss_sum = torch.zeros((), device=device)
        self.flags = torch.zeros(3 if meters is None else 4, device=device)  # summed since the last read
        self.images = 0  # this rank's images of the step's micro-batches (a host count: no sync)

    def next_batch(self, batches: Iterator):
        """The next micro-batch of `batches`, None at its end; metered: the time waited for it."""
        if self.data_wait is None:
            return next(batches, None)
        self.data_wait.before_batch()
        batch = next(batches, None)
        if batch is not None:
            self.data_wait.after_batch()
            self.images += len(batch[0])
        return batch

    def add_loss(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss (on the device; not read)."""
        self.loss_sum += loss

    def end_step(self, preempt_requested: bool) -> None:
        """At an optimizer step: the flags summed over ranks by one all_reduce, left on the device
        (no host sync; `torch.full`, unlike `torch.tensor`, copies nothing from the host). Every rank."""
        parts = [torch.full((), float(preempt_requested), device=self.device),
                 (~torch.isfinite(self.loss_sum)).float(), self.loss_sum.float() / self.accum]
        if self.meters is not None:
            parts.append(torch.full((), float(self.images), device=self.device))
        flags = torch.stack(parts)
        tdist.all_reduce(flags)
        self.flags += flags
        self.window.add()  # its loss and images when the flags are read
        self.loss_sum.zero_()
        self.images = 0

    def read(self) -> tuple[bool, bool, float]:
        """Read the flags summed since the last read (this waits for the device) and zero them:
        (any rank signalled, a loss not finite, the loss summed over ranks); the mean loss, the
        images and the data wait go to the window. Every rank, at the same steps."""
        values = self.flags.tolist()
        self.flags.zero_()
        preempted, diverged, loss = values[:3]
        self.window.loss_sum += loss / self.world_size
        if self.meters is not None:
            self.window.images += round(values[3])
            waited = self.data_wait.read()  # the device is synced already
            self.window.data_s += waited
            self.meters.goodput.add("data_wait", waited)
        return preempted > 0, diverged > 0, loss

    def record(self, step: int) -> dict[str, float]:
        """A log line's figures of the steps since the last one (loss, step time; metered: images/s,
        data wait, MFU, HFU and goodput); starts the next window."""
        if self.meters is None:
            summary = self.window.summary()
        else:
            summary = self.meters.record(self.window, self.world_size, step)
        self.window = Window()
        return summary

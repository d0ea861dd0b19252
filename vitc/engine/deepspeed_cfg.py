"""A resolved run -> DeepSpeed's config dict, then the `deepspeed:` passthrough section merged over it."""

from typing import Any

from vitc.config import merge_dicts
from vitc.run import Run


def deepspeed_config(run: Run, load_universal: bool = False) -> dict[str, Any]:
    """The dict given to `deepspeed.initialize` (also saved in the run directory)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": run.micro_batch,
        "gradient_accumulation_steps": run.grad_accum,
        "train_batch_size": run.global_batch,
        "zero_optimization": run.zero,
        "bf16": {"enabled": run.precision == "bf16"},
        "fp16": {"enabled": run.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # torch.optim.SGD is not on DeepSpeed's list of ZeRO-tested optimizers; it is sound
        # under ZeRO because it only sees (partitioned) fp32 params and grads.
        "zero_allow_untested_optimizer": True,
        # we log ourselves; DeepSpeed's own printing and timers cost time every step
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if run.clip_grad is not None:
        ds["gradient_clipping"] = run.clip_grad
    return merge_dicts(ds, run.passthrough)  # a passthrough key wins over the generated one

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
        "bf16": {"enabled": run.precision == "bf16" and run.zero_stage > 0},
        "fp16": {"enabled": run.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # Gradients are summed over micro-batches and over ranks in fp32, whatever the compute
        # precision: with 8-16 accumulation steps a bf16 sum loses the small contributions.
        # deepspeed 0.19 reads both keys in runtime/config.py and honours them at every stage:
        # ZeRO-0 all-reduces in `communication_data_type` (engine.py `allreduce_bucket`);
        # ZeRO-1 bf16 with fp32 accumulation runs runtime/bf16_optimizer.py (engine.py
        # `_do_optimizer_sanity_check`), whose fp32 gradient buffers are built with `grad_acc_dtype`;
        # ZeRO-1/2 (zero/stage_1_and_2.py `gradient_accumulation_dtype`, `average_tensor`) and
        # ZeRO-3 (zero/stage3.py, the same names) accumulate and reduce in those dtypes.
        "data_types": {"grad_accum_dtype": "fp32"},
        "communication_data_type": "fp32",
        # torch.optim.SGD is not on DeepSpeed's list of ZeRO-tested optimizers; it is sound
        # under ZeRO because it only sees (partitioned) fp32 params and grads.
        "zero_allow_untested_optimizer": True,
        # we log ourselves; DeepSpeed's own printing and timers cost time every step
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if run.precision == "bf16" and run.zero_stage == 0:
        # deepspeed 0.19 has no ZeRO-0 bf16 mode that accumulates in fp32 (engine.py
        # `_do_optimizer_sanity_check` raises for that mix): ZeRO-0 keeps fp32 parameters and
        # gradients and computes under torch.autocast in bf16. No module's gradients are marked
        # for bf16 communication (`lower_precision_safe_modules`, runtime/torch_autocast.py).
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    if run.clip_grad is not None:
        ds["gradient_clipping"] = run.clip_grad
    return merge_dicts(ds, run.passthrough)  # a passthrough key wins over the generated one

"""A resolved run -> DeepSpeed's config dict, then the `deepspeed:` passthrough section merged over it.

One numeric model for every precision and every ZeRO stage: the parameters, their gradients, the
optimizer's masters and moments and all communication stay fp32; bf16 (or fp16) is the compute
type of the matmuls and convolutions inside `torch.autocast` (DeepSpeed's `torch_autocast`, which
deepspeed 0.19 runs at ZeRO 0-3). Why this one and not DeepSpeed's `bf16` mode (parameters cast to
bf16, fp32 masters in the optimizer):
- DeepSpeed has no ZeRO-0 mode with bf16 parameters and fp32 masters (engine.py
  `_do_optimizer_sanity_check` raises for bf16 parameters with fp32 accumulation without ZeRO, and
  bf16 accumulation updates the bf16 parameters with no master), so ZeRO-0 needs autocast anyway:
  the only model that is the same at every stage is this one;
- the module's weights are the masters: the EMA averages them, export and `init_from` read them,
  frozen parameters are never rounded, and a resume at another stage or world size moves fp32
  values only;
- fp16 gets torch's GradScaler from DeepSpeed at every stage (ZeRO-0 included, where DeepSpeed's
  `fp16` mode crashed at initialize for the same accumulation reason).
Cost (docs/engine.md "Numerics"): a whole fp32 copy of the parameters at ZeRO 0-2 (2 bytes a
parameter more than bf16 parameters), and ZeRO-3 gathers fp32 weights (autocast casts them per op).
"""

from typing import Any

from vitc.config import merge_dicts
from vitc.run import Run

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(run: Run, load_universal: bool = False) -> dict[str, Any]:
    """The dict given to `deepspeed.initialize` (also saved in the run directory)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": run.micro_batch,
        "gradient_accumulation_steps": run.grad_accum,
        "train_batch_size": run.global_batch,
        "zero_optimization": run.zero,
        # DeepSpeed's own bf16/fp16 modes cast the parameters: off, the autocast below instead
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        # Gradients are summed over micro-batches and ranks in fp32, whatever the compute precision:
        # with 8-16 accumulation steps a low-precision sum loses the small contributions. Where
        # DeepSpeed honours both keys at each stage: docs/engine.md, "Precision".
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
    if run.precision in AUTOCAST_DTYPES:
        # No module is marked lower-precision safe: with DeepSpeed's default list ZeRO-3 would also
        # reduce Linear/Conv gradients in bf16, breaking the fp32 reduction (docs/engine.md, "Precision")
        ds["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST_DTYPES[run.precision],
                                "lower_precision_safe_modules": []}
    if run.clip_grad is not None:
        ds["gradient_clipping"] = run.clip_grad
    return merge_dicts(ds, run.passthrough)  # a passthrough key wins over the generated one

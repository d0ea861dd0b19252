"""Our config -> DeepSpeed's config dict, then the `deepspeed:` passthrough section merged over it."""

from typing import Any

from vitc.config import merge_dicts
from vitc.engine.runtime import Runtime
from vitc.errors import VitcError
from vitc.schema import Config


def deepspeed_config(cfg: Config, rt: Runtime, world_size: int, load_universal: bool = False) -> dict[str, Any]:
    """The dict given to `deepspeed.initialize` (also saved in the run directory)."""
    train = cfg.train
    if train.micro_batch < 1 or train.grad_accum < 1:
        raise VitcError(f"train.micro_batch ({train.micro_batch}) and train.grad_accum "
                        f"({train.grad_accum}) must be >= 1")
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage > 0:
        zero.update(reduce_bucket_size=train.reduce_bucket_size,
                    allgather_bucket_size=train.allgather_bucket_size,
                    overlap_comm=rt.on_gpu, contiguous_gradients=True)
    if train.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=train.allgather_bucket_size,
                    stage3_param_persistence_threshold=10_000,
                    # `vitc export` consolidates from the optimizer's fp32 partitions
                    stage3_gather_16bit_weights_on_model_save=False)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch * train.grad_accum * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": rt.precision == "bf16"},
        "fp16": {"enabled": rt.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # torch.optim.SGD is not on DeepSpeed's list of ZeRO-tested optimizers; it is sound
        # under ZeRO because it only sees (partitioned) fp32 params and grads.
        "zero_allow_untested_optimizer": True,
        # we log ourselves; DeepSpeed's own printing and timers cost time every step (SPEC §4)
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if train.clip_grad is not None:
        if train.clip_grad <= 0:
            raise VitcError(f"train.clip_grad must be > 0 or null, got {train.clip_grad}")
        ds["gradient_clipping"] = train.clip_grad
    return merge_dicts(ds, cfg.deepspeed)  # a passthrough key wins over the generated one



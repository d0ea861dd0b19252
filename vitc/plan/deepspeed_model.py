"""What DeepSpeed 0.19 does with the config dict vitc passes it: the planner's model of the engine.

The planner reads the very dict `vitc.deepspeed_config.deepspeed_config(run)` gives
`deepspeed.initialize` and works out from it, as DeepSpeed does, which optimizer wrapper runs,
in which dtype gradients are accumulated and reduced, and whether the reduction overlaps backward.
Nothing here is re-derived from the ZeRO stage alone. The rules, with where DeepSpeed makes them:

- Wrapper (runtime/engine.py `_do_optimizer_sanity_check`, `_configure_optimizer`): with ZeRO
  (stage >= 1), bf16 parameters with fp32 gradient accumulation at stage 1 without CPU offload
  run `BF16_Optimizer`; any other ZeRO mix runs `DeepSpeedZeroOptimizer` (stages 1-2,
  zero/stage_1_and_2.py) or `DeepSpeedZeroOptimizer_Stage3`. Without ZeRO: fp32 runs the plain
  optimizer, fp16 `FP16_Optimizer`, bf16 with bf16 accumulation `FP16_Optimizer` in bf16
  (DDP_BFLOAT16); bf16 with fp32 accumulation is refused by DeepSpeed (vitc computes ZeRO-0 bf16
  under `torch_autocast` with fp32 parameters instead).
- Reduction dtype: `communication_data_type`, else the parameters' dtype (engine.py
  `communication_data_type`). `BF16_Optimizer` reduces its fp32 gradient buffers
  (`get_grads_for_reduction`).
- When gradients are reduced (engine.py `allreduce_gradients`): without a ZeRO optimizer
  (plain, FP16_Optimizer, BF16_Optimizer) one all-reduce of every gradient after backward at the
  accumulation boundary (`buffered_allreduce_fallback`), never overlapped. `DeepSpeedZeroOptimizer`
  at stage 1 reduces at the boundary only; with `overlap_comm` from backward hooks bucket by
  bucket on a side stream during that micro-batch's backward (stage_1_and_2.py `process_gradients`),
  else after it. Stage 2 reduce-scatters during every micro-batch's backward (the hooks fire
  whether or not `overlap_comm` is set; it decides whether they wait for each bucket). Stage 3
  likewise, and prefetches its parameter gathers during forward and backward.
- Buckets: a bucket is reduced once it is full, the last one after backward ends
  (`overlapping_partition_gradients_reduce_epilogue`): a bucket as large as the model is one
  reduction after backward, so only reductions of buckets smaller than the model can overlap.
- `overlap_comm` defaults to True at stage 3 and False below (zero/config.py
  `overlap_comm_valid`); `contiguous_gradients` to True; bucket sizes to 5e8 elements.
"""

from dataclasses import dataclass
from typing import Any

from vitc.errors import VitcError

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
                "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
                "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16"}
DEEPSPEED_BUCKET_DEFAULT = 500_000_000  # zero/config.py reduce_bucket_size, allgather_bucket_size


def _dtype(value: Any, key: str) -> str:
    name = _DTYPE_NAMES.get(str(value).lower())
    if name is None:
        raise VitcError(f"deepspeed.{key}: {value!r} is not a dtype DeepSpeed accepts here "
                        "(expected fp32, bf16 or fp16)")
    return name


@dataclass(frozen=True)
class DeepSpeedModel:
    """What the engine will do, read from its config dict (`from_config`)."""

    stage: int
    wrapper: str  # none | FP16_Optimizer | BF16_Optimizer | DeepSpeedZeroOptimizer | DeepSpeedZeroOptimizer_Stage3
    param_dtype: str  # the parameters' dtype on the device (fp32 under torch_autocast)
    compute_dtype: str  # the matmuls' dtype (torch_autocast's, else the parameters')
    grad_accum_dtype: str
    comm_dtype: str  # dtype the gradients are reduced in
    overlap_comm: bool  # zero_optimization.overlap_comm as DeepSpeed resolves it
    contiguous_gradients: bool
    reduce_bucket_size: int  # elements
    allgather_bucket_size: int  # elements (ZeRO-3: stage3_prefetch_bucket_size)

    @classmethod
    def from_config(cls, ds: dict[str, Any]) -> "DeepSpeedModel":
        zero = ds.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        fp16 = bool((ds.get("fp16") or {}).get("enabled", False))
        bf16 = bool((ds.get("bf16") or ds.get("bfloat16") or {}).get("enabled", False))
        if fp16 and bf16:
            raise VitcError("deepspeed: fp16.enabled and bf16.enabled are both true; DeepSpeed takes one")
        param = "fp16" if fp16 else "bf16" if bf16 else "fp32"
        autocast = ds.get("torch_autocast") or {}
        compute = _dtype(autocast.get("dtype", "bfloat16"), "torch_autocast.dtype") \
            if autocast.get("enabled") else param
        accum = (ds.get("data_types") or {}).get("grad_accum_dtype")
        accum = _dtype(accum, "data_types.grad_accum_dtype") if accum is not None else param
        comm = ds.get("communication_data_type")
        comm = _dtype(comm, "communication_data_type") if comm is not None else param
        offload = (zero.get("offload_optimizer") or {}).get("device", "none") == "cpu"
        if stage >= 1:
            if param == "bf16" and accum == "fp32" and stage == 1 and not offload:
                wrapper = "BF16_Optimizer"
            else:
                wrapper = "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"
        elif param != accum:
            raise VitcError(f"deepspeed: ZeRO-0 with {param} parameters and {accum} gradient accumulation "
                            "is refused by DeepSpeed (engine.py _do_optimizer_sanity_check)")
        else:
            wrapper = "none" if param == "fp32" else "FP16_Optimizer"
        overlap = zero.get("overlap_comm")
        overlap = stage == 3 if overlap is None else bool(overlap)
        allgather_key = "stage3_prefetch_bucket_size" if stage == 3 else "allgather_bucket_size"
        return cls(stage, wrapper, param, compute, accum, comm, overlap,
                   bool(zero.get("contiguous_gradients", True)),
                   int(zero.get("reduce_bucket_size", DEEPSPEED_BUCKET_DEFAULT)),
                   int(zero.get(allgather_key, DEEPSPEED_BUCKET_DEFAULT)))

    @property
    def zero_optimizer(self) -> bool:
        """DeepSpeed's ZeRO optimizer reduces from backward hooks; the others after backward."""
        return self.wrapper.startswith("DeepSpeedZeroOptimizer")

    @property
    def reduces_every_micro_batch(self) -> bool:
        """Stages 2 and 3 reduce-scatter each micro-batch's gradients into the partitions."""
        return self.zero_optimizer and self.stage >= 2

    @property
    def reduction_overlaps_backward(self) -> bool:
        """Gradient buckets are reduced on a side stream while backward goes on."""
        return self.zero_optimizer and self.overlap_comm

    def describe(self) -> str:
        """One line: wrapper, dtypes and when the gradients travel (for `vitc plan`)."""
        when = ("during backward, bucket by bucket (overlap_comm)" if self.reduction_overlaps_backward
                else "after backward, not overlapped")
        every = "every micro-batch" if self.reduces_every_micro_batch else "once per step"
        gather = {3: f"; parameters all-gathered in {self.param_dtype} in forward and backward (prefetched)",
                  2: f"; updated parameters all-gathered in {self.param_dtype} after the optimizer step",
                  1: f"; updated parameters all-gathered in {self.param_dtype} after the optimizer step"}
        extra = gather.get(self.stage, "") if self.zero_optimizer else ""
        compute = f", computing in {self.compute_dtype}" if self.compute_dtype != self.param_dtype else ""
        return (f"DeepSpeed runs {self.wrapper} (ZeRO-{self.stage}) on {self.param_dtype} parameters{compute}; "
                f"gradients accumulated in {self.grad_accum_dtype}, reduced in {self.comm_dtype} {every}, "
                f"{when}{extra}")

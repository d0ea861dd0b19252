"""Memory per GPU: model states by ZeRO stage, as DeepSpeed allocates them, and when they are live.

Model states, bytes per parameter (N = data-parallel ranks; /N = partitioned over them), as
DeepSpeed 0.19 allocates them with a torch AdamW (8 bytes of moments; SGD: 4) and no offload:

| precision | stage | params | grads | fp32 master | fp32 grads | optimizer | buffers |
|---|---|---|---|---|---|---|---|
| fp32  | 0 | 4   | 4   | -   | -   | 8   | all-reduce flatten copy of the grads |
| fp32  | 1 | 4   | 4   | 4/N | 4/N | 8/N | reduce bucket (fp32) |
| fp32  | 2 | 4   | 4/N | 4/N | 4/N | 8/N | reduce bucket |
| fp32  | 3 | 4/N | 4/N | -   | 4/N | 8/N | reduce bucket + its flat copy + gathered params (N > 1) |
| bf16  | 0 | 2   | 2   | 4   | 4   | 8   | all-reduce flatten copy (FP16_Optimizer) |
| bf16  | 1 | 2   | 2   | 4/N | 4/N | 8/N | reduce bucket (fp32) |
| bf16  | 2 | 2   | 2/N | 4/N | 4/N | 8/N | reduce bucket (bf16) |
| bf16  | 3 | 2/N | -   | 4/N | 4/N | 8/N | reduce bucket + its flat copy + gathered params (N > 1) |

The EMA of the weights (optim.ema_alpha > 0; vitc/engine/ema.py) is fp32 and lives through the
run: 4 bytes per parameter at ZeRO 0-2 (a full copy on every rank), 4/N at ZeRO-3 (each rank
keeps the EMA of its own partition; DeepSpeed pads each tensor's partition to a whole element per
rank, and the BatchNorm buffers, a few KB, are kept whole: neither is counted).

The optimizer's step adds temporaries when it is not fused (torch's AdamW on CPU; the engine
fuses it on GPU): AdamW builds sqrt(v) and the denominator, SGD-Nesterov one update, each the
size of the tensor it steps; at ZeRO >= 1 that tensor is the whole flat fp32 partition.

The peak of a step is persistent + max(activations, transient): parameters, master copy, optimizer
states (and at ZeRO-3 the gradient partition and the gathered parameters) stay from step to step;
the gradients (and, on CPU, the buckets) appear as backward frees the activations and go after
the optimizer step, together with its temporaries.

fp32 ZeRO-1/2 clone the partition into a separate "fp32" master even though it is already fp32;
fp32 ZeRO-3 aliases it (stage3.py `_create_fp32_partitions`). The "fp32 grads" of an fp32 run are
the flat copy of the gradient partition that the step hands the optimizer as the master's `.grad`
(stage_1_and_2.py `step`: `flat_grad_partition = self.flatten(self.averaged_gradients[i])`, whose
`.to(fp32)` is the same tensor; stage3.py `_prepare_fp32_grad_for_sub_group`), made while the
gradient partition it copies is still held. ZeRO-3 gathers nothing on one rank: the parameters
point at their partitions (partition_parameters.py `all_gather_coalesced` -> `_no_gather_coalesced`).
On CPU the collectives run on gloo, whose reduce-scatter works on a copy of its whole input
(measured: `torch.distributed.reduce_scatter_tensor` of a 64 MiB tensor on gloo adds 64 MiB):
ZeRO-3's flat bucket is copied once more (`ZeroSetup.gloo`). For bf16/fp16 at stages 2 and 3 the
total is DeepSpeed's own estimate (`deepspeed_model_states_bytes`), which this table reproduces.

A CPU run is planned as vitc runs it (`HostProcess`): vitc keeps freed memory in the process's heap
(vitc/heap.py), so the memory backward frees (activations) stays resident while the gradients,
buckets and the optimizer's temporaries are allocated beside it - the phases add up instead of
peaking apart - and the training process maps every loader worker's shared batch buffers
(vitc/data/loading/slots.py). Traced on vit_p_4gf (the heap's size and glibc's in-use bytes read
every millisecond with the Python stack that grew it): the heap grows by the activations in
forward, then by the model-sized tensors of backward and the step listed above, which mostly do
not fit in the holes the activations leave. Which of them do fit varies from run to run and rank
to rank (the in-use bytes peak alike on both ranks of a run, the heap does not), so measured peaks
spread around this sum (docs/plan.md: the sum is 17 % under to 14 % over them for vit_p_4gf);
the spread is not modelled.
"""

from dataclasses import dataclass

from vitc.errors import VitcError

PARAM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "sgd": 4}  # fp32 moments per parameter (SGD: momentum only)
UNFUSED_STEP_TEMPORARIES = {"adamw": 2, "sgd": 1}  # fp32 tensors the size of the stepped tensor
# DeepSpeed's ZeRO-3 default: gathered parameters stay live up to this many elements.
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
# DeepSpeed's stage-0 all-reduce flattens gradients into buckets of at most this many elements.
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000


@dataclass(frozen=True)
class ZeroSetup:
    """How DeepSpeed holds the model: ZeRO stage, precision, ranks sharing the states."""

    stage: int
    precision: str  # fp32 | bf16 | fp16
    world_size: int
    optimizer: str = "adamw"
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000  # also ZeRO-3's prefetch bucket (vitc.deepspeed_config)
    overlap_comm: bool = True  # DeepSpeed double-buffers the reduce bucket when on (GPU)
    contiguous_gradients: bool = True  # ZeRO-3 keeps a reduce-bucket-sized buffer when on (GPU)
    fused_optimizer: bool = True  # one kernel, no temporaries (the engine's choice on GPU)
    buckets_reserved: bool = True  # GPU: the caching allocator keeps them; CPU: pages come and go
    ema: bool = False  # an fp32 EMA of the weights (optim.ema_alpha > 0)
    gloo: bool = False  # CPU: collectives on gloo, whose reduce-scatter copies its input (module docstring)
    # ZeRO-1/2 buckets hold the gradients in the accumulation dtype when it differs from the
    # parameters' (stage_1_and_2.py `_gradient_reduction_buffer_dtype`); None: the table's rule
    grad_accum_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in (0, 1, 2, 3):
            raise VitcError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.stage}")
        if self.precision not in PARAM_BYTES:
            raise VitcError(f"precision must be one of {', '.join(PARAM_BYTES)}, got '{self.precision}'")
        if self.world_size < 1:
            raise VitcError(f"world size must be >= 1, got {self.world_size}")


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of each kind of model state, and which of them live through the whole step."""

    params: int
    grads: int
    master: int  # fp32 copy of the parameters the optimizer updates
    fp32_grads: int  # fp32 gradients of that copy (mixed precision)
    optimizer: int  # Adam moments / SGD momentum
    buckets: int  # DeepSpeed's reduce bucket(s) or the stage-0 all-reduce flatten copy
    gathered: int  # ZeRO-3: full parameters gathered for forward and backward
    step_temporaries: int  # an unfused optimizer's intermediates during its step
    grads_persist: bool  # ZeRO-3 allocates its gradient partition once, up front
    buckets_reserved: bool  # a GPU's caching allocator keeps the buckets reserved between steps
    ema: int = 0  # the fp32 EMA of the weights: whole at ZeRO 0-2, this rank's partition at ZeRO-3

    @property
    def states(self) -> int:
        """Params, grads and optimizer states: what DeepSpeed's estimators count."""
        return self.params + self.grads + self.master + self.fp32_grads + self.optimizer

    @property
    def persistent(self) -> int:
        """Held from one step to the next, under the activations as well."""
        grads = self.grads + self.fp32_grads if self.grads_persist else 0
        buckets = self.buckets if self.buckets_reserved else 0
        return self.params + self.master + self.optimizer + self.gathered + grads + buckets + self.ema

    @property
    def transient(self) -> int:
        """Allocated as backward frees the activations, released after the optimizer step."""
        grads = 0 if self.grads_persist else self.grads + self.fp32_grads
        buckets = 0 if self.buckets_reserved else self.buckets
        return grads + buckets + self.step_temporaries


def model_states(params: int, setup: ZeroSetup) -> ModelStates:
    """Per-GPU model-state bytes for `params` parameters under `setup` (the module table)."""
    n, p, stage = setup.world_size, PARAM_BYTES[setup.precision], setup.stage
    mixed = setup.precision != "fp32"
    shard = (lambda b: b * params // n)  # noqa: E731  bytes per param, partitioned
    full = (lambda b: b * params)  # noqa: E731
    param_bytes = shard(p) if stage == 3 else full(p)
    if stage == 3 and mixed:
        grad_bytes = 0  # ZeRO-3 reduces 16-bit grads straight into the fp32 partition
    else:
        grad_bytes = shard(p) if stage >= 2 else full(p)
    if stage == 0:
        master = full(4) if mixed else 0
        fp32_grads = full(4) if mixed else 0
    else:
        master = shard(4) if (mixed or stage in (1, 2)) else 0
        fp32_grads = shard(4)  # mixed: the fp32 gradients; fp32: the step's flat copy (module docstring)
    optimizer = (full if stage == 0 else shard)(OPTIMIZER_STATE_BYTES[setup.optimizer])
    # ZeRO-0 steps each parameter tensor on its own: its temporaries are one layer's, negligible.
    temporaries = 0 if setup.fused_optimizer or stage == 0 else shard(4 * UNFUSED_STEP_TEMPORARIES[setup.optimizer])
    gathered = stage3_gathered_bytes(params, setup) if stage == 3 else 0
    return ModelStates(param_bytes, grad_bytes, master, fp32_grads, optimizer, bucket_bytes(params, setup),
                       gathered, temporaries, grads_persist=stage == 3,
                       buckets_reserved=setup.buckets_reserved and stage >= 1,  # stage 0: a temporary copy
                       ema=ema_bytes(params, setup))


def ema_bytes(params: int, setup: ZeroSetup) -> int:
    """The fp32 EMA per rank: a full copy at ZeRO 0-2, 4Ψ/N at ZeRO-3 (vitc/engine/ema.py)."""
    if not setup.ema:
        return 0
    return 4 * params // setup.world_size if setup.stage == 3 else 4 * params


def stage3_gathered_bytes(params: int, setup: ZeroSetup) -> int:
    """ZeRO-3's gathered parameters over several ranks: all of them up to max_live_parameters stay
    gathered from forward to backward (DeepSpeed's default reuse distance keeps them), and each
    coalesced all-gather also stages its flat output (up to the prefetch bucket) before copying it
    out (partition_parameters.py, `torch.cat(partitions)`). One rank gathers nothing: its
    parameters point at their partitions (`all_gather_coalesced` -> `_no_gather_coalesced`)."""
    if setup.world_size == 1:
        return 0
    p = PARAM_BYTES[setup.precision]
    staging = min(params, setup.allgather_bucket_size) * p
    return min(params, STAGE3_MAX_LIVE_PARAMETERS) * p + staging


def bucket_bytes(params: int, setup: ZeroSetup) -> int:
    """Bytes of DeepSpeed's gradient buckets (stage 0: the flattened copy its all-reduce makes).

    Approximation: a bucket larger than the model is counted at the model's size, since it is
    never filled (its untouched pages cost nothing on CPU; on a GPU DeepSpeed reserves it whole).
    """
    p = PARAM_BYTES[setup.precision]
    if setup.stage == 0:
        return min(params, ALLREDUCE_BUCKET_ELEMENTS) * p
    bucket_dtype_bytes = 4 if setup.stage == 1 else p  # ZeRO-1 stages the fp32 accumulator
    if setup.grad_accum_dtype is not None and setup.stage < 3:
        bucket_dtype_bytes = PARAM_BYTES[setup.grad_accum_dtype]
    bucket = min(params, setup.reduce_bucket_size)
    # ZeRO-1/2 without contiguous_gradients flatten each bucket to reduce it (stage_1_and_2.py
    # `buffered_reduce_fallback`): as much memory, held briefly; ZeRO-3 reduces the gradients where
    # they are (stage3.py allocates its bucket buffer only with contiguous_gradients)
    contiguous = setup.contiguous_gradients or setup.stage < 3
    buckets = (2 if setup.overlap_comm else 1) * bucket * bucket_dtype_bytes if contiguous else 0
    if setup.stage == 3:
        # stage3.py `__avg_scatter_grads` -> coalesced_collectives.py `reduce_scatter_coalesced`, on any
        # number of ranks: `torch.cat` of the bucket's gradients into one flat tensor
        buckets += bucket * p
        if setup.gloo:  # ... which gloo's reduce_scatter_tensor copies once more (module docstring)
            buckets += bucket * p
    return buckets


def deepspeed_model_states_bytes(params: int, largest_layer_params: int, stage: int, world_size: int) -> int | None:
    """DeepSpeed's own estimate of the per-GPU bytes of 16-bit params, grads and fp32 optimizer
    states without offload, or None for stages 0 and 1 (it has none).

    The closed forms of DeepSpeed 0.19's `estimate_zero2_model_states_mem_needs`
    (runtime/zero/stage_1_and_2.py): 2Ψ + 18Ψ/N, and `estimate_zero3_model_states_mem_needs`
    (runtime/zero/stage3.py): 4·largest layer + 18Ψ/N, where 18 = 16-bit grads 2 + fp32 grads 4 +
    fp32 params 4 + Adam's two moments 8. Written out here so that `vitc plan` imports no DeepSpeed.
    """
    partitioned = int(18 * params / world_size)
    if stage == 2:
        return 2 * params + partitioned
    if stage == 3:
        return 4 * largest_layer_params + partitioned
    return None


SLOTS_PER_WORKER = 4  # vitc/data/loading/slots.py PER_WORKER


@dataclass(frozen=True)
class HostProcess:
    """How a CPU rank's process holds memory besides the model states and activations."""

    heap_retained: bool  # vitc.heap.retain_freed_memory: freed blocks stay resident
    loader_buffers: int  # bytes of the loader workers' shared uint8 batch buffers


def host_process(on_cpu: bool, workers: int, micro_batch: int, image_size: int) -> HostProcess:
    """The CPU training process as `vitc train` sets it up; a GPU plan counts device memory only."""
    if not on_cpu:
        return HostProcess(False, 0)
    return HostProcess(True, workers * SLOTS_PER_WORKER * micro_batch * 3 * image_size**2)


def step_peak(states: ModelStates, activations: int, host: HostProcess) -> int:
    """Model states + activations at the step's peak: backward frees activations as it makes the
    gradients, so the phases peak apart, unless the heap keeps what was freed (a CPU run)."""
    if host.heap_retained:
        return states.persistent + activations + states.transient
    return states.persistent + max(activations, states.transient)

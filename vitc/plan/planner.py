"""A run's plan: memory per GPU, the largest micro-batch that fits, step time, run time and cost.

Pure arithmetic over a `RunSetup` (the resolved config + cluster) and the audit's counts; the CLI
and the formatting live elsewhere (vitc/plan/setup.py, vitc/plan/report.py).
"""

import dataclasses
from dataclasses import dataclass

from vitc.errors import VitcError
from vitc.models.cost import largest_layer_params, model_cost
from vitc.models.spec import ViTSpec
from vitc.plan.activations import Activations, activation_memory
from vitc.plan.comm import CommVolume, StepTime, comm_time, comm_volume, step_time
from vitc.plan.deepspeed_model import DeepSpeedModel
from vitc.plan.gpus import GpuSpec
from vitc.plan.memory import (
    HostProcess,
    ModelStates,
    ZeroSetup,
    deepspeed_model_states_bytes,
    host_process,
    model_states,
    step_peak,
)
from vitc.plan.throughput import RunTime, compute_time, run_time, train_flops_per_step


@dataclass(frozen=True)
class RunSetup:
    """Everything a plan depends on: model, cluster, the engine's choices and the assumptions."""

    spec: ViTSpec
    gpu: GpuSpec
    nodes: int
    gpus_per_node: int
    micro_batch: int
    grad_accum: int
    zero_stage: int
    precision: str
    optimizer: str
    act_checkpoint: bool
    epochs: int
    dataset_size: int | None
    mfu: float  # the share of peak the forward/backward kernels reach while nothing waits
    overlap: bool  # the cluster lets communication run beside compute (`--no-overlap`: it does not)
    deepspeed: DeepSpeedModel  # read from the dict the engine passes to deepspeed.initialize
    lr: float  # optim.base_lr scaled to the global batch (vitc.run.scaled_lr)
    fused_optimizer: bool = False  # optim.fused as the engine resolves it (vitc/engine/optim.py)
    ema: bool = False  # optim.ema_alpha > 0: an fp32 EMA of the weights
    loader_workers: int = 0  # data.workers

    @property
    def host(self) -> HostProcess:
        return host_process(self.gpu.kind == "cpu", self.loader_workers, self.micro_batch, self.spec.image_size)

    def __post_init__(self) -> None:
        for key in ("nodes", "gpus_per_node", "micro_batch", "grad_accum", "epochs"):
            if getattr(self, key) < 1:
                flag = {"nodes": "--nodes", "gpus_per_node": "--gpus-per-node"}.get(key, key)
                raise VitcError(f"{flag} must be >= 1, got {getattr(self, key)}")
        if self.dataset_size is not None and self.dataset_size < 1:
            raise VitcError(f"--dataset-size must be >= 1, got {self.dataset_size}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def reduce_bucket_size(self) -> int:
        return self.deepspeed.reduce_bucket_size

    @property
    def allgather_bucket_size(self) -> int:
        return self.deepspeed.allgather_bucket_size

    @property
    def zero(self) -> ZeroSetup:
        on_gpu = self.gpu.kind == "gpu"  # the device's facts: the caching allocator, NCCL vs gloo
        ds = self.deepspeed
        # the parameters' dtype is DeepSpeed's (ZeRO-0 bf16 runs torch.autocast over fp32 parameters)
        return ZeroSetup(self.zero_stage, ds.param_dtype, self.world_size, self.optimizer,
                         ds.reduce_bucket_size, ds.allgather_bucket_size, overlap_comm=ds.overlap_comm,
                         contiguous_gradients=ds.contiguous_gradients,
                         fused_optimizer=self.fused_optimizer, buckets_reserved=on_gpu,
                         ema=self.ema, gloo=not on_gpu, grad_accum_dtype=ds.grad_accum_dtype)


@dataclass(frozen=True)
class MemoryPlan:
    runtime: int  # CUDA context, NCCL, DeepSpeed's own (the GPU table's runtime_gib); a CPU's loader buffers
    states: ModelStates
    activations: Activations
    activations_other: Activations  # the same micro-batch with checkpointing switched the other way
    deepspeed_estimate: int | None  # DeepSpeed's estimator for the 16-bit states, where it has one
    capacity: int
    max_micro_batch: int
    max_micro_batch_other: int
    host: HostProcess = HostProcess(False, 0)

    @property
    def total(self) -> int:
        return self.runtime + step_peak(self.states, self.activations.total, self.host)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclass(frozen=True)
class Plan:
    setup: RunSetup
    params: int
    forward_flops: int  # per image, multiply-adds (audit convention)
    memory: MemoryPlan
    train_flops: int  # per optimizer step, all GPUs: 3 × forward × global batch
    compute_s: float
    comm: CommVolume
    comm_s: float  # all of the traffic, hidden or not
    step: StepTime
    run: RunTime

    @property
    def step_s(self) -> float:
        return self.step.total_s

    @property
    def exposed_comm_s(self) -> float:
        return self.step.exposed_comm_s

    @property
    def data_wait_s(self) -> float:
        return self.step.data_wait_s

    @property
    def compute_share(self) -> float:
        return self.compute_s / self.step_s

    @property
    def mfu(self) -> float:
        """Model flops over the step's wall time and the peak: the kernels' share of peak while
        computing (the setup's assumption) times the share of the step spent computing."""
        return self.setup.mfu * self.compute_share


def plan_memory(setup: RunSetup, params: int) -> MemoryPlan:
    states, host = model_states(params, setup.zero), setup.host
    acts = activation_memory(setup.spec, setup.micro_batch, setup.precision, setup.act_checkpoint)
    other = activation_memory(setup.spec, setup.micro_batch, setup.precision, not setup.act_checkpoint)
    runtime = int(setup.gpu.runtime_gib * 2**30) + host.loader_buffers
    capacity = setup.gpu.memory_bytes
    return MemoryPlan(runtime, states, acts, other, _deepspeed_estimate(setup, params), capacity,
                      _fit(capacity, runtime, states, acts.total // setup.micro_batch, host),
                      _fit(capacity, runtime, states, other.total // setup.micro_batch, host), host)


def _fit(capacity: int, runtime: int, states: ModelStates, per_image: int, host: HostProcess) -> int:
    """The most images whose activations fit beside the states (0 when the states alone do not);
    the loader buffers, which grow with the micro-batch too, are small beside the activations."""
    if runtime + step_peak(states, 0, host) > capacity:
        return 0
    beside = states.persistent + (states.transient if host.heap_retained else 0)
    return (capacity - runtime - beside) // per_image


def _deepspeed_estimate(setup: RunSetup, params: int) -> int | None:
    if setup.precision == "fp32":
        return None  # DeepSpeed's estimators assume 16-bit params
    return deepspeed_model_states_bytes(params, largest_layer_params(setup.spec), setup.zero_stage,
                                        setup.world_size)


def plan_run(setup: RunSetup) -> Plan:
    """The plan for `setup` as configured (it may not fit: see `Plan.memory.fits`)."""
    cost = model_cost(setup.spec)
    memory = plan_memory(setup, cost.params)
    images_per_gpu = setup.micro_batch * setup.grad_accum
    compute_s = compute_time(cost.flops, images_per_gpu, setup.gpu.peak_flops(setup.precision), setup.mfu)
    comm = comm_volume(cost.params, setup.deepspeed, setup.world_size, setup.grad_accum)
    step = step_time(compute_s, comm, setup.gpu, setup.nodes, setup.gpus_per_node, setup.overlap)
    return Plan(setup, cost.params, cost.flops, memory,
                train_flops_per_step(cost.flops, setup.global_batch), compute_s, comm,
                comm_time(comm, setup.gpu, setup.nodes, setup.gpus_per_node), step,
                run_time(step.total_s, setup.global_batch, setup.world_size, setup.dataset_size, setup.epochs))


def with_loader(plan: Plan, node_images_per_s: float) -> Plan:
    """`plan` with the data wait of a loader that delivers `node_images_per_s` per node at most:
    the GPUs wait for whatever part of a step's images it has not made in the step's time."""
    s = plan.setup
    loader_s = s.global_batch / s.nodes / node_images_per_s
    wait = max(0.0, loader_s - plan.step.compute_s - plan.step.exposed_comm_s)
    step = dataclasses.replace(plan.step, data_wait_s=wait)
    return dataclasses.replace(plan, step=step, run=run_time(step.total_s, s.global_batch, s.world_size,
                                                               s.dataset_size, s.epochs))


def kernel_share_for(plan: Plan, target: float) -> float | None:
    """The least share of peak the kernels must reach (`--mfu`) for the predicted MFU to reach
    `target`, everything else of `plan` held (its data wait too); None when not even kernels at
    peak reach it. The predicted MFU rises with the kernels' share (a faster step hides less
    communication, but never loses more than it gains), so bisection finds it."""
    def reached(share: float) -> float:
        other = plan_run(dataclasses.replace(plan.setup, mfu=share))
        step = dataclasses.replace(other.step, data_wait_s=plan.data_wait_s)
        return share * other.compute_s / step.total_s

    if reached(1.0) < target:
        return None
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if reached(middle) < target else (low, middle)
    return high


def check_fits(plan: Plan) -> Plan:
    """`plan`, or a VitcError saying by how much the micro-batch overflows the GPU and what fits."""
    mem, s = plan.memory, plan.setup
    if mem.fits:
        return plan
    gib = 2**30
    hint = (f"the largest micro-batch that fits is {mem.max_micro_batch}" if mem.max_micro_batch
            else "not even one image fits")
    raise VitcError(
        f"train.micro_batch={s.micro_batch} does not fit on a {s.gpu.name} ({mem.capacity / gib:.1f} GiB): "
        f"it needs {mem.total / gib:.1f} GiB per GPU (model states {mem.states.persistent / gib:.1f}, "
        f"activations {mem.activations.total / gib:.1f}, runtime {mem.runtime / gib:.1f}); {hint}. "
        "Lower train.micro_batch (raise train.grad_accum to keep the global batch), set "
        "model.act_checkpoint=true, or use a higher train.zero_stage or more GPUs")


def sweep(setup: RunSetup, node_counts: list[int]) -> list[Plan | None]:
    """Plans at each node count holding the global batch fixed (strong scaling): each GPU takes
    global / world images, as micro-batches no larger than the configured one and what fits,
    accumulated. None where the global batch gives some GPU no image."""
    if not node_counts or any(n < 1 for n in node_counts):
        raise VitcError(f"--sweep-nodes must list node counts >= 1, got {node_counts}")
    out = []
    for nodes in node_counts:
        world = nodes * setup.gpus_per_node
        per_gpu = setup.global_batch // world
        if per_gpu < 1 or setup.global_batch % world:
            out.append(None)
            continue
        trial = dataclasses.replace(setup, nodes=nodes, micro_batch=min(setup.micro_batch, per_gpu), grad_accum=1)
        fit = plan_memory(trial, model_cost(setup.spec).params).max_micro_batch
        micro = _largest_divisor_at_most(per_gpu, min(setup.micro_batch, max(fit, 1)))
        out.append(plan_run(dataclasses.replace(trial, micro_batch=micro, grad_accum=per_gpu // micro)))
    return out


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)

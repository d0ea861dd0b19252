"""`vitc plan` output: the plan as a table or JSON, the scale-out sweep, and every assumption."""

import dataclasses
import json
import math

from vitc.plan.comm import link_bandwidth
from vitc.plan.planner import Plan, RunSetup, kernel_share_for, plan_run
from vitc.plan.throughput import LoaderNeed

GIB = 2**30


def assumptions(s: RunSetup) -> list[str]:
    gpu = s.gpu
    overlap = ("what DeepSpeed reduces from backward hooks with overlap_comm hides behind backward (2/3 "
               "of the compute; at ZeRO-1 the last micro-batch's only), except each backward's last "
               "reduce bucket; ZeRO-3's prefetched gathers hide behind all of it; step = compute + what "
               "is not hidden + data wait" if s.overlap else "communication not overlapped (--no-overlap): "
               "step = compute + comm + data wait")
    return [
        f"GPU '{gpu.name}': {gpu.description}; peak {s.precision} {gpu.peak_tflops[s.precision]} TFLOP/s, "
        f"{gpu.memory_gib:g} GiB, {gpu.runtime_gib:g} GiB taken by the runtime before the model",
        f"the kernels reach {s.mfu:g} of peak while computing (--mfu); the audit's forward flops count a multiply-add as 1, the peak as 2; "
        "training = 3 × forward (checkpointing's recompute is not model flops: it lowers the MFU reached)",
        f"communication: NCCL rings, one per network rail, at {gpu.intra_node_gbps:g} GB/s per GPU within a node; "
        f"across nodes each GPU sends 1 of {s.gpus_per_node} hops over its {gpu.inter_node_gbps:g} GB/s rail "
        f"and the rest over NVLink ({_link(s)}); no latency term; {overlap}",
        f"engine: {s.deepspeed.describe()} (read from vitc.deepspeed_config's dict; vitc/plan/deepspeed_model.py)",
        f"memory: DeepSpeed's allocations for ZeRO-{s.zero_stage} {s.precision} with {s.optimizer} "
        "(vitc/plan/memory.py); activations = what autograd saves (vitc/models/cost.py saved_elements); "
        "allocator fragmentation and data-loader buffers not counted",
        f"global batch {s.global_batch} = micro-batch {s.micro_batch} × accumulation {s.grad_accum} × "
        f"{s.world_size} GPUs, lr {s.lr:.3g} at that batch; an epoch drops its last partial step",
    ]


def _link(s: RunSetup) -> str:
    where = "inter-node" if s.nodes > 1 else "intra-node"
    return f"{where} {link_bandwidth(s.gpu, s.nodes, s.gpus_per_node) / 1e9:g} GB/s per GPU"


def _gib(value: int) -> str:
    return f"{value / GIB:10.2f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def _ckpt_label(checkpointing: bool) -> str:
    return "with activation checkpointing" if checkpointing else "without checkpointing"


def _memory_lines(plan: Plan) -> list[str]:
    s, m = plan.setup, plan.memory
    st, n = m.states, s.world_size
    share = lambda partitioned: f" (1/{n} each)" if partitioned and n > 1 else ""  # noqa: E731
    rows = [
        ("runtime (before the model)", m.runtime),
        (f"parameters, {s.deepspeed.param_dtype}{share(s.zero_stage == 3)}", st.params),
        (f"gradients, {s.deepspeed.param_dtype}{share(s.zero_stage >= 2)}", st.grads),
        (f"fp32 master parameters{share(s.zero_stage >= 1)}", st.master),
        (f"fp32 gradients{share(s.zero_stage >= 1)}", st.fp32_grads),
        (f"optimizer states, {s.optimizer}{share(s.zero_stage >= 1)}", st.optimizer),
        ("DeepSpeed gradient buckets / all-reduce copy", st.buckets),
        ("ZeRO-3 gathered parameters (+ all-gather staging)", st.gathered),
        ("unfused optimizer step temporaries", st.step_temporaries),
        (f"EMA of the weights, fp32{share(s.zero_stage == 3)}", st.ema),
        (f"activations saved, micro-batch {s.micro_batch}", m.activations.saved),
        ("activations recomputed (one block)", m.activations.recomputed),
        ("gradients in flight during backward", m.activations.working),
    ]
    lines = [f"memory per GPU {'GiB':>41}"]
    lines += [f"  {label:<51}{_gib(value)}" for label, value in rows if value or label.startswith("param")]
    verdict = "fits" if m.fits else "DOES NOT FIT"
    lines.append(f"  {'peak':<51}{_gib(m.total)}  of {m.capacity / GIB:g} ({verdict})")
    if m.host.heap_retained:  # vitc.plan.memory.step_peak
        lines.append(f"    = runtime + persistent {st.persistent / GIB:.2f} + activations "
                     f"{m.activations.total / GIB:.2f} + transient {st.transient / GIB:.2f}: vitc's heap keeps "
                     "what backward frees (vitc/heap.py), so the phases add up")
    else:
        lines.append(f"    = runtime + persistent {st.persistent / GIB:.2f} + max(activations "
                     f"{m.activations.total / GIB:.2f}, transient {st.transient / GIB:.2f}): backward frees "
                     f"activations as it makes the grads{'' if st.buckets_reserved else ' and buckets'}")
    ckpt = s.act_checkpoint
    lines.append(f"  largest micro-batch that fits: {m.max_micro_batch} {_ckpt_label(ckpt)}, "
                 f"{m.max_micro_batch_other} {_ckpt_label(not ckpt)}")
    lines.append(f"  activations of micro-batch {s.micro_batch} {_ckpt_label(not ckpt)}: "
                 f"{m.activations_other.total / GIB:.2f} GiB")
    if m.deepspeed_estimate is not None:
        ours = st.states
        lines.append(f"  DeepSpeed's own estimator for the model states: {m.deepspeed_estimate / GIB:.2f} GiB "
                     f"(params, grads and optimizer states above: {ours / GIB:.2f})")
    return lines


def _step_lines(plan: Plan) -> list[str]:
    s, c = plan.setup, plan.comm
    parts = ", ".join(f"{name} {value / 1e9:.3g}" for name, value in
                      (("all-reduce", c.all_reduce), ("reduce-scatter", c.reduce_scatter),
                       ("all-gather", c.all_gather)) if value) or "none"
    step = plan.step_s
    return [
        "per step",
        f"  training flops, 3 × forward × {s.global_batch} images: {plan.train_flops:.4g} multiply-adds",
        f"  ZeRO-{s.zero_stage} traffic per GPU: {c.total / 1e9:.4g} GB ({parts}), "
        f"{c.exposed / 1e9:.3g} GB of it where nothing can hide it",
        f"  communication at {_link(s)}: {plan.comm_s:.4g} s in all",
        f"  step {step:.4g} s = compute {plan.compute_s:.4g} s ({plan.compute_s / step:.0%}, kernels at "
        f"{s.mfu:g} of peak) + exposed communication {plan.exposed_comm_s:.4g} s "
        f"({plan.exposed_comm_s / step:.0%}) + data wait {plan.data_wait_s:.4g} s ({plan.data_wait_s / step:.0%})",
        f"  predicted MFU {plan.mfu:.1%} (= {s.mfu:g} × compute share {plan.compute_share:.0%}); {limit(plan)}",
    ]


MFU_TARGET = 0.5  # what a well-run large-model job on current GPUs is expected to reach


def limit(plan: Plan) -> str:
    """Which assumption holds the predicted MFU down, with its numbers, and what 50 % would need."""
    return f"{_limit(plan)}; {_target(plan)}"


def _target(plan: Plan) -> str:
    if plan.mfu >= MFU_TARGET:
        return f"{MFU_TARGET:.0%} MFU reached"
    share = kernel_share_for(plan, MFU_TARGET)
    if share is None:
        at_peak = dataclasses.replace(plan.setup, mfu=1.0)
        return (f"{MFU_TARGET:.0%} MFU is out of reach here: kernels at peak would give "
                f"{plan_run(at_peak).mfu:.0%} (fewer nodes, a larger batch or a faster network move it)")
    return f"{MFU_TARGET:.0%} MFU needs the kernels at ≥ {math.ceil(share * 100) / 100:.2f} of peak (--mfu)"


def _limit(plan: Plan) -> str:
    s = plan.setup
    losses = {"exposed communication": plan.exposed_comm_s, "data wait": plan.data_wait_s}
    worst = max(losses, key=losses.get)
    kernel = (f"limited by the kernels' assumed {s.mfu:g} of peak (--mfu): at most {s.mfu:.0%} even "
              "with nothing exposed")
    if losses[worst] <= 0.05 * plan.step_s:
        return kernel
    what = {"exposed communication": _exposed_what(plan), "data wait": "the CPU loader (see data loading)"}[worst]
    return (f"limited by {worst}, {losses[worst] / plan.step_s:.0%} of the step: {what}; and by the "
            f"kernels' assumed {s.mfu:g} of peak (--mfu)")


def _exposed_what(plan: Plan) -> str:
    ds, c = plan.setup.deepspeed, plan.comm
    if not ds.zero_optimizer:
        return f"{ds.wrapper} all-reduces {ds.comm_dtype} gradients after backward, not overlapped"
    parts = []
    if ds.stage < 3 and c.all_gather:
        parts.append(f"the all-gather of the updated {ds.param_dtype} parameters after the optimizer step "
                     f"({c.all_gather / 1e9:.3g} GB)")
    if not ds.reduction_overlaps_backward:
        parts.append("gradient reductions not overlapped (zero_optimization.overlap_comm is off)")
    elif ds.reduce_bucket_size >= plan.params:
        parts.append(f"reduce_bucket_size {ds.reduce_bucket_size:,} ≥ the model's {plan.params:,} "
                     "parameters, so the reduction starts after backward")
    else:
        parts.append(f"each backward's last reduce bucket ({ds.reduce_bucket_size:,} elements in "
                     f"{ds.comm_dtype}) and what backward is too short to hide")
    return "; ".join(parts)


def _run_lines(plan: Plan) -> list[str]:
    s, r = plan.setup, plan.run
    lines = ["per run", f"  images/s: {r.images_per_s:,.0f}"]
    if s.dataset_size is None:
        return lines + ["  epoch, total time, GPU-hours: need the dataset size (--dataset-size, or data.train_shards)"]
    return lines + [
        f"  {s.epochs} epoch{'s' if s.epochs > 1 else ''} of {s.dataset_size:,} images, "
        f"{r.steps_per_epoch:,} steps each",
        f"  epoch {_duration(r.epoch_s)}, total {_duration(r.total_s)}, {r.gpu_hours:,.0f} GPU-hours",
    ]


def _loader_lines(need: LoaderNeed | None, s: RunSetup) -> list[str]:
    if need is None:
        return ["data loading", "  data.decode_device: cuda: the GPUs decode (nvJPEG), the workers only read "
                "and plan crops; no CPU rate is assumed"]
    has = f"a node has {need.node_cores}" if need.node_cores is not None else \
        f"cores per node of a {s.gpu.name} server unknown (--node-cores)"
    lines = ["data loading (CPU decode and augmentation)",
             f"  GPUs consume {need.gpu_images_per_s:,.0f} images/s per node "
             f"({s.gpus_per_node} × {s.gpu.name} at MFU {s.mfu:g})",
             f"  loader: {need.per_core:,.0f} images/s per core ({need.source})",
             f"  loader CPU cores needed per node: {need.cores:,.1f}; {has}"]
    if not need.enough:
        lines.append(f"  NOT ENOUGH CPU: the loader would hold the GPUs to {need.node_cores * need.per_core:,.0f} "
                     "images/s per node; decode on the GPUs (data.decode_device: cuda) or lower the CPU cost")
    return lines


def format_plan(plan: Plan, loader: LoaderNeed | None = None) -> str:
    """The plan as text; `loader` adds the CPU cores the data loader needs (None: GPU decode)."""
    s = plan.setup
    ranks = f"{s.world_size} {'processes' if s.gpu.kind == 'cpu' else 'GPUs'}"
    head = [f"vitc plan: {s.spec.name} on {s.nodes} × {s.gpus_per_node} {s.gpu.name} ({ranks}), "
            f"ZeRO-{s.zero_stage}, {s.precision}, activation checkpointing {'on' if s.act_checkpoint else 'off'}",
            f"model: {plan.params / 1e6:.1f} M params, {plan.forward_flops / 1e9:.2f} GFLOPs forward per "
            f"image at {s.spec.image_size}px (audit, closed form)", ""]
    body = [*_memory_lines(plan), "", *_step_lines(plan), "", *_run_lines(plan), "",
            *_loader_lines(loader, s), "", "assumptions"]
    return "\n".join(head + body + [f"  - {a}" for a in assumptions(s)])


SWEEP_HEADER = (f"{'nodes':>6} {'GPUs':>6} {'micro×acc':>10} {'compute s':>10} {'comm s':>9} {'step s':>9} "
                f"{'images/s':>10} {'compute':>8} {'scaling':>8} {'mem GiB':>8} {'total':>9} {'GPU-h':>9}")


def format_sweep(plans: list[Plan | None], node_counts: list[int], base: RunSetup) -> str:
    lines = [f"scale-out of {base.spec.name}, ZeRO-{base.zero_stage} {base.precision} on {base.gpu.name} × "
             f"{base.gpus_per_node} per node, global batch {base.global_batch} held fixed, MFU {base.mfu:g}",
             SWEEP_HEADER, "-" * len(SWEEP_HEADER)]
    first = next((p for p in plans if p is not None), None)
    for nodes, plan in zip(node_counts, plans):
        if plan is None:
            lines.append(f"{nodes:>6} {nodes * base.gpus_per_node:>6}  global batch {base.global_batch} "
                         "does not split evenly into at least one image per GPU")
            continue
        s, m = plan.setup, plan.memory
        scaling = (plan.run.images_per_s / first.run.images_per_s) / (s.nodes / first.setup.nodes)
        mem = f"{m.total / GIB:.1f}" + ("" if m.fits else "!")
        lines.append(f"{s.nodes:>6} {s.world_size:>6} {f'{s.micro_batch}×{s.grad_accum}':>10} "
                     f"{plan.compute_s:>10.4g} {plan.comm_s:>9.4g} {plan.step_s:>9.4g} "
                     f"{plan.run.images_per_s:>10,.0f} {plan.compute_share:>8.0%} {scaling:>8.0%} {mem:>8} "
                     f"{_duration(plan.run.total_s):>9} {_gh(plan.run.gpu_hours):>9}")
    lines.append("compute = share of the step spent computing; scaling = images/s per node relative to the "
                 "first row; '!' = does not fit in memory")
    return "\n".join(lines + ["assumptions", *[f"  - {a}" for a in assumptions(base)]])


def _gh(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "-"


def to_json(plan: Plan | None) -> dict | None:
    if plan is None:
        return None
    data = _finite(dataclasses.asdict(plan))
    data.update(step_s=plan.step_s, mfu=plan.mfu, limit=limit(plan))
    data["memory"]["total"] = plan.memory.total
    data["memory"]["fits"] = plan.memory.fits
    data["assumptions"] = assumptions(plan.setup)
    return data


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def format_json(plan: Plan, sweep: list[Plan | None] | None = None, loader: LoaderNeed | None = None) -> str:
    out = {"plan": to_json(plan)}
    if loader is not None:
        out["loader"] = {**dataclasses.asdict(loader), "cores": loader.cores, "enough": loader.enough}
    if sweep is not None:
        out["sweep"] = [to_json(p) for p in sweep]
    return json.dumps(out, indent=1)

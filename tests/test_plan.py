"""`vitc plan`: memory, time and cost of a run, against hand-computed cases and a real `vitc train`."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from engine_runs import peak_rss_added
from torch import nn

from vitc.audit.flops import traced_cost
from vitc.cli import main
from vitc.config import load_config
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.deepspeed_config import deepspeed_config
from vitc.errors import VitcError
from vitc.models.cost import largest_layer_params, model_cost
from vitc.models.spec import get_spec
from vitc.models.vit import VisionTransformer
from vitc.plan.activations import activation_memory
from vitc.plan.comm import comm_volume, link_bandwidth
from vitc.plan.deepspeed_model import DeepSpeedModel
from vitc.plan.gpus import get_gpu, load_gpus
from vitc.plan.memory import ZeroSetup, deepspeed_model_states_bytes, model_states
from vitc.plan.planner import kernel_share_for, plan_memory, plan_run, sweep
from vitc.plan.setup import Cluster, load_run_config, run_setup
from vitc.plan.throughput import compute_time
from vitc.run import resolve_run

# nn.Sequential(Linear(1000, 2000), ReLU(), Linear(2000, 10))
MLP_PARAMS = 1000 * 2000 + 2000 + 2000 * 10 + 10  # 2,022,010
VIT_C_1GF_PARAMS = 4_567_936  # ViT_C-1GF, 1000 classes (the audit's count)


def plan_json(*args: str, capsys) -> dict:
    assert main(["plan", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---- model states -------------------------------------------------------------------------------


def test_two_layer_mlp_fp32_zero0_states_are_what_adamw_allocates():
    mlp = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(), nn.Linear(2000, 10))
    optimizer = torch.optim.AdamW(mlp.parameters())
    mlp(torch.randn(4, 1000)).sum().backward()
    optimizer.step()
    moments = [t for state in optimizer.state.values() for t in state.values() if t.dim() > 0]

    states = model_states(MLP_PARAMS, ZeroSetup(0, "fp32", 1, overlap_comm=False, fused_optimizer=False))

    assert states.params == sum(p.nbytes for p in mlp.parameters()) == 4 * 2_022_010
    assert states.grads == sum(p.grad.nbytes for p in mlp.parameters()) == 8_088_040
    assert states.optimizer == sum(t.nbytes for t in moments) == 16_176_080
    assert states.master == states.fp32_grads == states.step_temporaries == states.gathered == 0
    assert states.buckets == 8_088_040  # DeepSpeed's flatten copy of the grads for the all-reduce
    # the grads and that copy appear as backward frees the activations
    assert (states.persistent, states.transient) == (8_088_040 + 16_176_080, 2 * 8_088_040)


def test_two_layer_mlp_fp32_zero2_on_two_cpu_ranks_by_hand():
    states = model_states(MLP_PARAMS, ZeroSetup(2, "fp32", 2, overlap_comm=False, fused_optimizer=False))

    assert states.params == 8_088_040  # ZeRO-2 keeps every parameter
    assert states.grads == 4_044_020  # half of 4 bytes × 2,022,010
    assert states.master == 4_044_020  # DeepSpeed clones the fp32 partition
    assert states.optimizer == 8_088_040  # 8 bytes × half the params
    assert states.buckets == 8_088_040  # one reduce bucket, the model's size (< 5e8 elements)
    assert states.step_temporaries == 8_088_040  # unfused AdamW: sqrt(v) and the denominator


def test_vit_c_1gf_bf16_zero0_on_8_gpus_by_hand():
    p = VIT_C_1GF_PARAMS
    states = model_states(p, ZeroSetup(0, "bf16", 8))

    assert (states.params, states.grads) == (9_135_872, 9_135_872)  # 2 bytes each, unpartitioned
    assert (states.master, states.fp32_grads) == (18_271_744, 18_271_744)  # 4 bytes each
    assert states.optimizer == 36_543_488  # Adam's two fp32 moments
    assert states.buckets == 9_135_872 and states.step_temporaries == states.gathered == 0
    assert states.states + states.buckets == 22 * p


def test_vit_c_1gf_bf16_zero3_on_8_gpus_by_hand():
    states = model_states(VIT_C_1GF_PARAMS, ZeroSetup(3, "bf16", 8))  # 570,992 params per GPU

    assert states.params == 1_141_984 and states.grads == 0
    assert (states.master, states.fp32_grads, states.optimizer) == (2_283_968, 2_283_968, 4_567_936)
    assert states.buckets == 3 * 9_135_872  # two bf16 reduce buckets (overlap_comm) + a flat copy
    assert states.gathered == 2 * 9_135_872  # every bf16 parameter (< 1e9 live) + the all-gather staging
    assert states.persistent == 1_141_984 + 2_283_968 * 2 + 4_567_936 + 5 * 9_135_872


@pytest.mark.parametrize("stage", [2, 3])
def test_states_agree_with_deepspeeds_own_estimator(stage):
    p, largest = VIT_C_1GF_PARAMS, largest_layer_params(get_spec("vit_c_1gf"))
    ours = model_states(p, ZeroSetup(stage, "bf16", 16)).states

    theirs = deepspeed_model_states_bytes(p, largest, stage, world_size=16)

    # DeepSpeed's ZeRO-3 estimate adds 4 bytes × the largest layer for its gathered weights
    assert theirs - ours == (4 * largest if stage == 3 else 0)


@pytest.mark.parametrize("params", [VIT_C_1GF_PARAMS, 364_508_941, 1_000_000_007])
def test_the_torch_free_estimate_is_deepspeeds_own_formula(params):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    largest = 23_609_657
    for nodes, gpus_per_node in ((1, 8), (2, 8), (16, 8), (1, 3)):
        world = nodes * gpus_per_node
        zero2 = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=False)[1]
        zero3 = estimate_zero3_model_states_mem_needs(params, largest, gpus_per_node, nodes, cpu_offload=False,
                                                      cpu_offload_params=False)[1]
        assert deepspeed_model_states_bytes(params, largest, 2, world) == zero2
        assert deepspeed_model_states_bytes(params, largest, 3, world) == zero3
    assert deepspeed_model_states_bytes(params, largest, 1, 8) is None


# ---- activations ---------------------------------------------------------------------------------


def test_vit_c_1gf_activations_by_hand():
    spec = get_spec("vit_c_1gf")

    plain = activation_memory(spec, 1, "bf16", checkpointing=False)
    ckpt = activation_memory(spec, 1, "bf16", checkpointing=True)

    # stem 150,528 + 2·(24·112² + 48·56² + 96·28² + 192·14²) = 1,279,488; block 197·(8·192 + 2·576)
    # = 529,536; head 197·192 + 192 = 38,016; fp32: 11 blocks × 7·197 + 2·197 + 1000 classes
    assert plain.saved == 2 * (1_279_488 + 11 * 529_536 + 38_016) + 4 * (11 * 1_379 + 1_394)
    assert plain.working == 2 * 197 * 1_536 and plain.recomputed == 0
    assert ckpt.saved == 2 * (1_279_488 + 11 * 197 * 192 + 38_016) + 4 * 1_394
    assert ckpt.recomputed == 2 * 529_536 + 4 * 1_379
    assert activation_memory(spec, 8, "bf16", False).saved == 8 * plain.saved


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_formula_matches_what_autograd_saves(checkpointing):
    spec = get_spec("vit_c_1gf", depth=3, num_classes=10, act_checkpoint=checkpointing)
    model = VisionTransformer(spec).train()
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 2]))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = sum(n for ptr, n in storages.items() if ptr not in weights)

    predicted = activation_memory(spec, 2, "fp32", checkpointing).saved
    # checkpoint() keeps some bookkeeping of its own per block (~2.6 % here) that is not modelled
    assert abs(predicted - saved) <= 0.03 * saved


# ---- communication and time ------------------------------------------------------------------


def ds_model(stage: int, precision: str, *passthrough: str, world: int = 8) -> DeepSpeedModel:
    """What the planner reads from the dict the engine would pass (vitc.deepspeed_config)."""
    cfg = load_config(None, ["model.name=vit_c_1gf", f"train.zero_stage={stage}",
                             f"train.precision={precision}", *passthrough])
    return DeepSpeedModel.from_config(deepspeed_config(resolve_run(cfg, world, "gpu", shards=())))


def test_zero_communication_volumes_by_hand():
    bf16, fp32 = (VIT_C_1GF_PARAMS * b * 7 // 8 for b in (2, 4))  # (N-1)/N of the params over 8 ranks

    # vitc keeps fp32 parameters and reduces gradients in fp32 whatever the compute precision
    # (bf16 is autocast's compute type: vitc/deepspeed_config.py)
    assert comm_volume(VIT_C_1GF_PARAMS, ds_model(0, "bf16"), 8).all_reduce == 2 * fp32
    zero1 = comm_volume(VIT_C_1GF_PARAMS, ds_model(1, "bf16"), 8, accum=4)  # at the boundary only
    assert (zero1.all_reduce, zero1.reduce_scatter, zero1.all_gather) == (0, fp32, fp32)
    zero2 = comm_volume(VIT_C_1GF_PARAMS, ds_model(2, "bf16"), 8, accum=4)  # every micro-batch
    assert (zero2.reduce_scatter, zero2.all_gather) == (4 * fp32, fp32)
    zero3 = comm_volume(VIT_C_1GF_PARAMS, ds_model(3, "bf16", "deepspeed.communication_data_type=bf16"), 8)
    assert (zero3.reduce_scatter, zero3.all_gather) == (bf16, 2 * fp32)  # fp32 weights gathered twice
    assert comm_volume(MLP_PARAMS, ds_model(3, "fp32", world=1), 1).total == 0


# DeepSpeed 0.19's choice of optimizer wrapper for vitc's dict (engine.py _do_optimizer_sanity_check)
WRAPPERS = {(0, "fp32"): "none", (0, "bf16"): "none",
            (1, "bf16"): "DeepSpeedZeroOptimizer", (1, "fp32"): "DeepSpeedZeroOptimizer",
            (1, "fp16"): "DeepSpeedZeroOptimizer", (2, "bf16"): "DeepSpeedZeroOptimizer",
            (2, "fp32"): "DeepSpeedZeroOptimizer", (2, "fp16"): "DeepSpeedZeroOptimizer",
            (3, "bf16"): "DeepSpeedZeroOptimizer_Stage3", (3, "fp32"): "DeepSpeedZeroOptimizer_Stage3",
            (3, "fp16"): "DeepSpeedZeroOptimizer_Stage3"}


@pytest.mark.parametrize("stage,precision", sorted(WRAPPERS))
def test_the_plan_reads_its_engine_assumptions_from_the_deepspeed_dict(stage, precision):
    """For every stage × precision, the wrapper, the dtypes and the overlap come from the dict the
    engine passes: flipping a key in the `deepspeed:` passthrough changes the plan."""
    def plan(*passthrough: str):
        cfg = load_run_config("vit_c_18gf", [f"train.zero_stage={stage}", f"train.precision={precision}",
                                             "train.micro_batch=64", "train.reduce_bucket_size=10000000",
                                             *passthrough])
        return plan_run(run_setup(cfg, Cluster(2, 8, dataset_size=10_000)))

    base = plan()
    ds = base.setup.deepspeed
    assert ds.wrapper == WRAPPERS[stage, precision]
    assert ds.comm_dtype == ds.grad_accum_dtype == "fp32"
    assert ds.param_dtype == "fp32" and ds.compute_dtype == precision  # autocast at every stage
    # the reduction dtype comes from the dict: bf16 halves the gradient traffic
    halved = plan(f"deepspeed.communication_data_type={'fp16' if precision == 'fp16' else 'bf16'}")
    grads = lambda p: p.comm.all_reduce + p.comm.reduce_scatter
    assert grads(halved) == grads(base) // 2 or grads(halved) == grads(base) // 2 + 1
    if ds.zero_optimizer:
        # overlap_comm as the dict says: off, every reduction waits for backward to end
        assert ds.overlap_comm and ds.reduction_overlaps_backward
        serial = plan("deepspeed.zero_optimization.overlap_comm=false")
        assert not serial.setup.deepspeed.overlap_comm
        assert serial.exposed_comm_s > base.exposed_comm_s and serial.mfu < base.mfu
        assert serial.memory.states.buckets < base.memory.states.buckets  # one reduce bucket, not two
        # the bucket size as the dict says: one as large as the model hides nothing
        whole = plan("deepspeed.zero_optimization.reduce_bucket_size=1000000000")
        assert whole.exposed_comm_s > base.exposed_comm_s
    else:  # reduced after backward whatever overlap_comm says
        assert base.exposed_comm_s == pytest.approx(base.comm_s)
        assert plan("deepspeed.zero_optimization.overlap_comm=true").exposed_comm_s == base.exposed_comm_s


def test_zero0_fp16_with_fp32_accumulation_is_refused_as_deepspeed_refuses_it():
    # vitc's fp16 is autocast over fp32 parameters; DeepSpeed's own fp16 mode at ZeRO-0 with fp32
    # accumulation makes deepspeed.initialize raise NotImplementedError: the plan says so in one line
    assert ds_model(0, "fp16").wrapper == "none"
    own_fp16 = ("deepspeed.fp16.enabled=true", "deepspeed.torch_autocast.enabled=false")
    with pytest.raises(VitcError, match="ZeRO-0 with fp16 parameters and fp32 gradient accumulation"):
        ds_model(0, "fp16", *own_fp16)
    assert ds_model(0, "fp16", *own_fp16, "deepspeed.data_types.grad_accum_dtype=fp16").wrapper == "FP16_Optimizer"


def test_the_default_gpu_stage_overlaps_where_deepspeeds_bf16_mode_at_zero1_would_not():
    setup = run_setup(load_run_config("vit_c_72gf", []), Cluster(16, 8))
    default = plan_run(setup)
    bf16_mode = ["train.zero_stage=1", "deepspeed.bf16.enabled=true", "deepspeed.torch_autocast.enabled=false"]
    zero1 = plan_run(run_setup(load_run_config("vit_c_72gf", bf16_mode), Cluster(16, 8)))
    assert default.setup.zero_stage == 2 and default.setup.deepspeed.reduction_overlaps_backward
    assert zero1.setup.deepspeed.wrapper == "BF16_Optimizer" and zero1.exposed_comm_s == zero1.comm_s
    assert default.step_s < zero1.step_s and default.mfu > zero1.mfu
    assert run_setup(load_run_config("vit_c_1gf", []), Cluster(1, 2, "cpu")).zero_stage == 1


def test_plan_prints_the_step_split_and_the_predicted_mfu_with_what_limits_it(capsys):
    assert main(["plan", "vit_c_72gf", "--nodes", "16", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    step = next(line for line in out.splitlines() if line.startswith("  step "))
    assert "compute" in step and "exposed communication" in step and "data wait" in step
    mfu = next(line for line in out.splitlines() if "predicted MFU" in line)
    assert "limited by" in mfu and "all-gather of the updated fp32 parameters" in mfu
    assert "DeepSpeed runs DeepSpeedZeroOptimizer (ZeRO-2)" in out
    assert re.search(r"50% MFU needs the kernels at ≥ 0\.\d\d of peak \(--mfu\)$", mfu)


def test_across_nodes_each_gpu_sends_one_hop_in_gpus_per_node_over_the_network():
    """NCCL's rings, one per rail: a GPU's share crosses the network on 1 hop of 8, the node's 8
    rails carry the 8 rings together; NVLink bounds the other 7 hops."""
    h100 = get_gpu("h100")
    assert link_bandwidth(h100, 1, 8) == 450e9  # one node: NVLink
    assert link_bandwidth(h100, 16, 8) == 400e9  # 8 rails × 50 GB/s, under NVLink's 450 × 8/7
    assert link_bandwidth(h100, 16, 1) == 50e9  # one GPU per node: its own rail only
    assert link_bandwidth(h100, 16, 2) == 100e9
    fast_network = dataclasses.replace(h100, inter_node_gbps=100.0)
    assert link_bandwidth(fast_network, 16, 8) == pytest.approx(450e9 * 8 / 7)  # then NVLink limits


def test_the_plan_finds_the_kernel_efficiency_that_50_percent_mfu_needs():
    plan = plan_run(run_setup(load_run_config("vit_c_72gf", []), Cluster(16, 8)))
    share = kernel_share_for(plan, 0.5)
    assert plan.mfu < 0.5 < share < 1
    at = lambda k: plan_run(dataclasses.replace(plan.setup, mfu=k)).mfu
    assert at(share) >= 0.5 > at(share - 0.01)
    # a 512-node step is the communication floor: not even kernels at peak reach 50 %
    assert kernel_share_for(plan_run(run_setup(load_run_config("vit_c_72gf", ["train.micro_batch=1"]),
                                               Cluster(512, 8))), 0.5) is None


def test_a_loader_that_cannot_keep_up_shows_as_data_wait(capsys):
    args = ["plan", "vit_c_1gf", "--nodes", "1", "--gpus-per-node", "8", "--format", "json"]
    assert main([*args, "--loader-rate", "1000000", "--node-cores", "4"]) == 0
    fed = json.loads(capsys.readouterr().out)["plan"]["step"]
    assert main([*args, "--loader-rate", "10", "--node-cores", "4"]) == 0
    starved = json.loads(capsys.readouterr().out)["plan"]["step"]
    assert fed["data_wait_s"] == 0 and starved["data_wait_s"] > 0
    assert starved["compute_s"] == fed["compute_s"]


def test_compute_time_counts_a_multiply_add_as_two_datasheet_flops():
    flops = model_cost(get_spec("vit_c_1gf")).flops

    seconds = compute_time(flops, 64, get_gpu("h100").peak_flops("bf16"), 0.4)

    assert seconds == pytest.approx(3 * flops * 64 * 2 / (989.4e12 * 0.4), rel=1e-12)


def test_step_flops_are_three_times_the_audits_forward_times_global_batch(capsys):
    tiny = ["model.width=32", "model.depth=2", "model.heads=2", "model.stem_channels=[8,16]",
            "model.stem_strides=[2,2]", "model.image_size=32", "train.micro_batch=16", "train.grad_accum=2"]
    spec = run_setup(load_run_config("vit_c_1gf", tiny), Cluster(2, 8)).spec

    plan = plan_json("vit_c_1gf", *tiny, "--nodes", "2", "--gpus-per-node", "8", capsys=capsys)["plan"]

    assert plan["train_flops"] == 3 * traced_cost(spec).flops * (16 * 2 * 16)


def test_run_time_and_gpu_hours_follow_the_step(capsys):
    plan = plan_json("vit_c_1gf", "schedule.epochs=10", "train.micro_batch=128", "--nodes", "1",
                     "--gpus-per-node", "8", "--dataset-size", "1281167", capsys=capsys)["plan"]

    run, step = plan["run"], plan["step_s"]
    assert run["steps_per_epoch"] == 1281167 // 1024
    assert run["total_s"] == pytest.approx(10 * run["steps_per_epoch"] * step)
    assert run["gpu_hours"] == pytest.approx(run["total_s"] / 3600 * 8)
    assert run["images_per_s"] == pytest.approx(1024 / step)


def test_sweep_holds_the_global_batch_and_shows_where_nodes_stop_paying():
    setup = run_setup(load_run_config("vit_c_36gf", ["train.micro_batch=64"]),  # ZeRO-2, the default
                      Cluster(1, 8, dataset_size=1_000_000))

    one, eight, sixty_four, too_many = sweep(setup, [1, 8, 64, 512])

    assert [p.setup.global_batch for p in (one, eight, sixty_four)] == [512, 512, 512]
    assert eight.run.images_per_s > one.run.images_per_s
    assert one.compute_share > eight.compute_share > sixty_four.compute_share
    assert too_many is None  # 4096 GPUs cannot split 512 images


def test_sweep_prints_one_row_per_node_count(capsys):
    assert main(["plan", "vit_c_1gf", "--gpus-per-node", "8", "--nodes", "1", "train.micro_batch=64",
                 "--sweep-nodes", "1,8,64,512"]) == 0

    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:6].strip().isdigit()]
    assert rows == ["1", "8", "64", "512"]


def test_largest_micro_batch_fills_the_gpu():
    setup = run_setup(load_run_config("vit_c_18gf", ["train.micro_batch=1"]), Cluster(1, 8, gpu="a100-40gb"))

    memory = plan_memory(setup, model_cost(setup.spec).params)
    fixed = memory.runtime + memory.states.persistent
    per_image = memory.activations.total
    fits = memory.max_micro_batch
    assert fits * per_image > memory.states.transient  # activations, not gradients, set the peak
    assert fixed + fits * per_image <= memory.capacity < fixed + (fits + 1) * per_image
    assert memory.max_micro_batch_other > memory.max_micro_batch  # checkpointing fits more


def test_a_cpu_rank_keeps_freed_memory_so_its_phases_add_up_beside_the_loader_buffers():
    def memory(gpu: str, workers: int):
        setup = run_setup(load_run_config("vit_c_1gf", ["train.micro_batch=8", f"data.workers={workers}"]),
                          Cluster(1, 1, gpu=gpu))
        return plan_memory(setup, model_cost(setup.spec).params)

    cpu, gpu = memory("cpu", 2), memory("a100-40gb", 2)
    # vitc's heap retention (vitc/heap.py) keeps the freed activations resident through the step
    states = cpu.states.persistent + cpu.activations.total + cpu.states.transient
    assert cpu.total - cpu.runtime == states
    assert gpu.total - gpu.runtime == gpu.states.persistent + max(gpu.activations.total, gpu.states.transient)
    # 2 workers x 4 shared uint8 buffers of 8 images at 224 px, mapped by the training process
    assert cpu.runtime - memory("cpu", 0).runtime == 2 * 4 * 8 * 3 * 224**2
    assert gpu.runtime == memory("a100-40gb", 0).runtime


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_gpu_suggests_the_closest(capsys):
    assert main(["plan", "vit_c_1gf", "--nodes", "1", "--gpus-per-node", "8", "--gpu", "h10"]) == 2
    assert "unknown GPU 'h10' (did you mean 'h100'?)" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--nodes", "--gpus-per-node"])
def test_fewer_than_one_node_or_gpu_is_refused(flag, capsys):
    args = {"--nodes": "1", "--gpus-per-node": "8", flag: "0"}
    assert main(["plan", "vit_c_1gf", *[x for kv in args.items() for x in kv]]) == 2
    assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def test_micro_batch_that_cannot_fit_names_what_fits(capsys):
    assert main(["plan", "vit_c_203gf", "train.micro_batch=4096", "--nodes", "1", "--gpus-per-node", "8"]) == 2
    err = capsys.readouterr().err
    assert "train.micro_batch=4096 does not fit on a h100" in err and "the largest micro-batch that fits is" in err


def test_gpu_table_typo_names_the_entry_and_key(tmp_path):
    table = tmp_path / "gpus.yaml"
    table.write_text("gpus:\n  mine:\n    description: x\n    kind: gpu\n    peak_tflops: {bf16: 1}\n"
                     "    memory_gib: 8\n    runtime_gib: 1\n    intra_node_gbs: 10\n    inter_node_gbps: 1\n")
    with pytest.raises(VitcError, match=r"gpus.mine: unknown key 'intra_node_gbs' \(did you mean 'intra_node_gbps'\?\)"):
        load_gpus(table)


def test_a_gpu_without_bf16_is_refused_bf16():  # `auto` plans it in fp16: tests/test_run.py
    v100 = get_gpu("v100")
    with pytest.raises(VitcError, match="no bf16 peak"):
        v100.peak_flops("bf16")
    assert math.isclose(get_gpu("cpu").peak_flops("fp32"), 0.06e12)


# ---- checked against a real `vitc train` ---------------------------------------------------------

@pytest.fixture(scope="module")
def probe_config(digits_folder, tmp_path_factory) -> Path:
    """vit_p_4gf (18.5 M params) at 224 px, micro-batch 8: model and activations dominate the process."""
    tmp = tmp_path_factory.mktemp("plan_probe")
    build_shards(digits_folder, tmp / "train", "train", BuildOptions(samples_per_shard=50), progress=False)
    config = tmp / "probe.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "vit_p_4gf", "num_classes": "auto"},
        "data": {"train_shards": str(tmp / "train"), "workers": 0, "shuffle_buffer": 16,
                 "auto_augment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "hflip": 0.0},
        "train": {"run_dir": str(tmp / "run"), "micro_batch": 8, "max_steps": 2},
        "schedule": {"epochs": 1, "warmup_epochs": 0},
        "log": {"every_steps": 1, "tensorboard": False},
        "checkpoint": {"resume": False}}))
    return config


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
@pytest.mark.parametrize("ranks", [1, 2])
def test_plan_predicts_the_memory_a_real_cpu_training_step_adds(probe_config, stage, ranks, tmp_path):
    setup = run_setup(load_run_config(str(probe_config), [f"train.zero_stage={stage}"]), Cluster(1, ranks, "cpu"))
    predicted = plan_memory(setup, model_cost(setup.spec).params).total

    # vitc's default configuration: its heap retention (vitc/heap.py) on, as every user runs it
    measured = peak_rss_added(ranks, tmp_path / f"z{stage}_n{ranks}", 2, str(probe_config),
                              f"train.zero_stage={stage}", f"train.run_dir={tmp_path / f'run_z{stage}_n{ranks}'}")

    print(f"ZeRO-{stage}, {ranks} rank(s): predicted {predicted / 2**20:.0f} MiB, measured "
          + ", ".join(f"{m / 2**20:.0f}" for m in measured) + " MiB")
    for added in measured:
        assert abs(predicted - added) <= 0.2 * added, (stage, ranks, predicted, measured)

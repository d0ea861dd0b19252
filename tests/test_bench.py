"""Benchmarks measure honestly, and the planner uses what they measure: the loader's images/s per
core against the images/s the GPUs consume."""

import json
import os
import re

import psutil
import pytest

from vitc.bench import fragments
from vitc.bench.data import dali_installed
from vitc.bench.engine import format_engine_bench
from vitc.bench.meters import MetersBench, bench_meters, format_meters_bench
from vitc.bench.timing import Contender, Timing, paired_ratio, time_in_processes
from vitc.cli import main
from vitc.data.shards.embedded import photo_imagefolder
from vitc.errors import VitcError
from vitc.plan.throughput import loader_need


def plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eight_h100s_need_more_loader_cores_than_a_node_has_and_the_plan_says_so(capsys):
    for model in ("vit_c_1gf", "vit_c_4gf"):
        assert main(["plan", model, "--nodes", "1", "--gpus-per-node", "8"]) == 0
        out = capsys.readouterr().out
        assert "loader CPU cores needed per node" in out and "a node has 112" in out
        assert "NOT ENOUGH CPU" in out and "data.decode_device: cuda" in out


def test_cores_needed_are_the_gpus_images_per_s_over_the_loaders_rate_per_core(capsys):
    out = plan_json(capsys, "vit_c_1gf", "--nodes", "2", "--gpus-per-node", "8", "--loader-rate", "1000")
    per_node = out["loader"]["gpu_images_per_s"]  # what the GPUs would consume, data aside
    assert out["loader"]["cores"] == pytest.approx(per_node / 1000)
    # 1,000 images/s per core cannot feed 16 H100s on vit_c_1gf: the run waits for data
    assert out["plan"]["run"]["images_per_s"] / 2 < per_node
    assert "--loader-rate" in out["loader"]["source"]


def test_a_users_own_rate_and_node_size_can_say_the_cpus_keep_up(capsys):
    out = plan_json(capsys, "vit_c_1gf", "--nodes", "1", "--gpus-per-node", "8",
                    "--loader-rate", "1e6", "--node-cores", "64")
    assert out["loader"]["enough"] and out["loader"]["node_cores"] == 64


def test_gpu_decode_needs_no_loader_cpu_rate(capsys):
    out = plan_json(capsys, "vit_c_1gf", "--nodes", "1", "--gpus-per-node", "8", "data.decode_device=cuda")
    assert "loader" not in out


def test_a_recipe_without_a_measured_rate_asks_for_the_users_figure():
    with pytest.raises(VitcError, match="auto_augment=randaugment.*--loader-rate"):
        loader_need(1000.0, "h100", 224, "randaugment")


def test_a_resolution_without_a_measured_rate_uses_the_nearest_and_says_so():
    need = loader_need(1000.0, "h100", 384, "autoaugment")
    assert "224 px (nearest to the run's 384 px)" in need.source


@pytest.mark.slow
def test_every_contender_is_timed_in_its_own_process_by_the_same_rules(tmp_path):
    folder = photo_imagefolder(tmp_path / "photos", classes=2, per_class=2)
    contenders = [Contender(name, "vitc.bench.data:decode_pass", {"folder": str(folder)}) for name in "ab"]
    timings = time_in_processes(contenders, warmup=1, iters=2, rounds=2)
    assert set(timings) == {"a", "b"}
    for t in timings.values():
        assert t.rate > 0 and t.per_core > 0 and t.startup_s > 0 and t.details == {}


@pytest.mark.slow
def test_a_contender_that_fails_ends_the_bench_with_its_name(tmp_path):
    with pytest.raises(VitcError, match="contender 'broken' exited"):
        time_in_processes([Contender("broken", "vitc.bench.data:decode_pass", {"folder": str(tmp_path),
                                                                                "no_such": 1})], 1, 1, 1)


def order_probe(path: str, name: str):
    """A contender's step that writes its name to `path` whenever it runs (the rotation test below)."""
    def step() -> int:
        with open(path, "a") as f:
            f.write(name + "\n")
        return 1
    return step


@pytest.mark.slow
def test_each_round_starts_with_the_next_contender_so_none_always_runs_first(tmp_path):
    calls = tmp_path / "calls"
    contenders = [Contender(name, "test_bench:order_probe", {"path": str(calls), "name": name}) for name in "abc"]
    time_in_processes(contenders, warmup=0, iters=1, rounds=3)
    rounds = calls.read_text().split()
    assert [rounds[i:i + 3] for i in (0, 3, 6)] == [list("abc"), list("bca"), list("cab")]


@pytest.mark.slow
def test_several_processes_per_contender_rotate_the_start_order_and_report_the_median_process(tmp_path):
    calls = tmp_path / "calls"
    contenders = [Contender(name, "test_bench:order_probe", {"path": str(calls), "name": name}) for name in "abc"]
    timings = time_in_processes(contenders, warmup=0, iters=1, rounds=1, processes=3)
    # one group of processes after another, each started (and its first round run) one contender later
    assert calls.read_text().split() == list("abc" "bca" "cab")
    for t in timings.values():
        assert t.processes == 3 and t.spread >= 0 and t.per_core_spread >= 0 and t.rate > 0
        assert len(t.group_rates) == len(t.group_per_core) == 3 and t.rate == sorted(t.group_rates)[1]


def test_a_ratio_is_taken_within_each_group_so_the_machines_drift_between_groups_cancels():
    def timing(*rates):
        return Timing(1.0, {}, rates, (1.0,) * len(rates))

    # the machine 2x faster in the second group: 2.0, 2.2 and 1.875 group by group
    a, b = timing(10.0, 22.0, 30.0), timing(5.0, 10.0, 16.0)
    assert paired_ratio(a, b) == 2.0  # the ratio of the two medians would say 2.2
    assert paired_ratio(a, b, per_core=True) == 1.0
    assert paired_ratio(timing(3.0), timing(2.0)) == 1.5


def test_the_processes_per_contender_must_be_at_least_one():
    with pytest.raises(VitcError, match="processes must be >= 1, got 0"):
        time_in_processes([Contender("a", "test_bench:order_probe", {"path": "x", "name": "a"})], 0, 1, 1, 0)


BUDDYINFO = """Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3
Node 0, zone   Normal     10      5      0      0      0      0      0      0      2      7      9
"""


def test_fragments_are_the_free_blocks_under_2_mib():
    page = os.sysconf("SC_PAGE_SIZE")
    if page != 4096:
        pytest.skip("the figures below are for 4 KiB pages")
    # orders 0-8 (4 KiB - 1 MiB) are fragments, 9 and 10 (2 and 4 MiB) are not
    # DMA: one order-8 block; Normal: ten order-0, five order-1 and two order-8 blocks
    assert fragments.fragmented_free_bytes(BUDDYINFO) == (10 + 5 * 2 + 3 * 256) * page
    assert fragments.fragmented_free_bytes("") == 0


def test_the_bench_holds_the_fragmented_free_memory_and_lets_it_go(tmp_path, monkeypatch):
    info, mem = tmp_path / "buddyinfo", tmp_path / "meminfo"
    info.write_text("Node 0, zone   Normal   4096      0\n")  # 4096 free pages of order 0
    mem.write_text("MemTotal: 1000000 kB\nMemAvailable:  900000 kB\n")
    monkeypatch.setattr(fragments, "BUDDYINFO", info)
    monkeypatch.setattr(fragments, "MEMINFO", mem)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = psutil.Process().memory_info().rss
    with fragments.FragmentHold() as hold:
        assert hold.take() == 4096 * page
        assert psutil.Process().memory_info().rss - rss >= 4096 * page * 0.9  # written, not just mapped
        mem.write_text("MemAvailable:  4 kB\n")  # never more than half of what is available
        assert hold.take() == 0 and hold.held == 4096 * page
    assert hold.maps == []


def test_the_engine_table_prints_paired_overheads_and_the_noise_floor():
    def timing(*rates):
        return Timing(1.0, {"forward": 1.0, "backward": 1.0, "step": 1.0}, rates, (1.0,) * len(rates))

    table = format_engine_bench({"plain": timing(10.0, 20.0), "zero3": timing(8.0, 16.0),
                                 "plain2": timing(10.0, 19.0)})
    assert re.search(r"^zero3 +12\.00 +\+25\.0%", table, re.M)
    assert "the plain loop timed twice differs by +2.6%" in table  # median of +0 % and +5.3 %
    assert "each loop is its median of 2 processes" in table


def test_the_metering_cost_is_its_paired_bookkeeping_difference_over_the_steps_time():
    def book(*us_per_round):
        per_core = tuple(1e6 / us for us in us_per_round)
        return Timing(1.0, {}, per_core, (sorted(per_core)[len(per_core) // 2],), (per_core,))

    # rounds of 100 µs without and 110, 112, 108 µs with: metering 10 µs (median paired difference)
    bench = MetersBench({"without": book(100.0, 100.0, 100.0), "with": book(110.0, 112.0, 108.0)},
                        {"without": Timing(1.0, {}, (80.0,), (40.0,)), "with": Timing(1.0, {}, (79.0,), (40.0,)),
                         "without2": Timing(1.0, {}, (80.0,), (39.0,))},
                        batch=8)
    assert bench.metering_us() == pytest.approx([10.0, 12.0, 8.0])
    assert bench.step_ms() == pytest.approx((100.0, 200.0))  # 8 images at 80/s wall, 40 per CPU-second
    out = format_meters_bench(bench)
    assert re.search(r"^  metering +10\.00 µs/step", out, re.MULTILINE)
    assert re.search(r"^  without +80\.00 +0\.0% +100\.0 +200\.0$", out, re.MULTILINE)
    assert "with/without images/s: 0.9875 (+1.25%); without timed twice: 1.0000 (+0.00%)" in out
    assert "with/without images per CPU-second: 1.0000 (+0.00%); without timed twice: 0.9750 (+2.50%)" in out
    # against the smaller of the step's wall and CPU time: the larger share
    assert out.endswith("cost of MFU and goodput metering: 10.00 µs / 100.0 ms per step = 0.0100%")


@pytest.mark.slow
def test_bench_meters_times_the_trainers_bookkeeping_with_and_without_metering():
    bench = bench_meters("vit_p_1gf", batch=1, iters=2, rounds=1, log_every=2, book_steps=40, book_rounds=2)
    for part in (bench.book, bench.step):  # the contenders' log lines: only "with" carries the meters
        assert part["with"].details == {"mfu": 1.0, "goodput": 1.0}
        assert part["without"].details == {"mfu": 0.0, "goodput": 0.0}
    assert bench.step["without2"].details == {"mfu": 0.0, "goodput": 0.0}
    assert len(bench.metering_us()) == 2  # one paired difference a round
    out = format_meters_bench(bench)
    assert re.search(r"^  metering +-?\d+\.\d+ µs/step +\(paired rounds: .*, 2 pairs\)$", out, re.MULTILINE)
    assert re.search(r"^cost of MFU and goodput metering: -?\d+\.\d+ µs / \d+\.\d ms per step = -?\d", out, re.MULTILINE)


def _data_bench(**extra):
    from vitc.bench.data import DataBench

    rates = {"loader": 600.0, "imagefolder": 300.0, "decode": 1000.0, "turbo_decode": 1600.0,
             "gpu_decode_cpu_share": 5000.0, **extra}
    return DataBench(602, (375, 500), 32, 2, "autoaugment", rates, dict(rates), None, (2.0, 0.6),
                     dali_ratio=1.5 if "dali" in extra else None)


def test_data_bench_prints_dali_and_the_bare_vitc_decoder_and_says_how_to_get_dali():
    with_dali = _data_bench(dali=400.0).describe()
    assert "(d) DALI's CPU pipeline" in with_dali and "(a)/(d) = 1.50  (target >= 1.5)" in with_dali
    assert "(e) bare vitc decoder (simplejpeg)" in with_dali and "(a)/(c) = 0.60  (target >= 0.6)" in with_dali
    assert "(f) (a)'s CPU share, decode on GPU    5000" in with_dali
    without = _data_bench().describe()
    assert "(a)/(d)" not in without and "not installed: pip install vitc[dali-bench]" in without


@pytest.mark.skipif(not dali_installed(), reason="NVIDIA DALI is not installed (pip install vitc[dali-bench])")
def test_dalis_pipeline_reads_every_full_batch_of_the_shards_once_per_epoch(tmp_path):
    from vitc.bench.data import dali_epoch

    shards = tmp_path / "shards"
    photo_imagefolder(tmp_path / "photos", classes=2, per_class=5)
    assert main(["shards", "build", str(tmp_path / "photos"), str(shards), "--samples-per-shard", "4"]) == 0
    epoch = dali_epoch(str(shards), batch=4, threads=1, auto_augment=True, image_size=32)
    assert epoch() == 8 and epoch() == 8  # 10 samples: two full batches of 4, every epoch

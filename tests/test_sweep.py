"""The optimizability sweep: make (reproducible sampling), run (crashes retried), collect (status
and the EMA model's best top-1), plot (EDF PNG + CSV by the report's rules) (vitc/sweep/)."""

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vitc.cli import main
from vitc.config import load_config
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.errors import VitcError
from vitc.outcome import RunOutcome, read_outcome, write_outcome
from vitc.run import resolve_run
from vitc.sweep.analysis import load_runs
from vitc.sweep.collect import RESULTS_CSV
from vitc.sweep.edf import edf, error_thresholds
from vitc.sweep.make import load_spec, make_sweep, read_runs, sample_runs
from vitc.sweep.run import pending_runs

REPO = Path(__file__).resolve().parents[1]

MODEL_YAML = """
model: {name: %(name)s, width: 32, depth: %(depth)d, heads: 2, image_size: 32, num_classes: auto%(stem)s}
data: {train_shards: %(shards)s, val_shards: %(shards)s, workers: 1}
train: {micro_batch: 16}
optim: {reference_batch: 16, ema_alpha: 1.0e-3}
schedule: {epochs: 1, warmup_epochs: 0}
log: {tensorboard: false}
"""
SPEC_YAML = """
seed: %(seed)d
samples: %(samples)d
models: {vit_p_tiny: vit_p.yaml, vit_c_tiny: vit_c.yaml}
optimizers:
  adamw: {lr: [1.0e-4, 1.0e-2], weight_decay: [1.0e-3, 0.5]}
  sgd: {lr: [1.0e-2, 1.0], weight_decay: [1.0e-5, 1.0e-3]}
epochs: [1, 2]
"""

ONE_MODEL_SPEC = """
seed: %(seed)d
samples: %(samples)d
models: {vit_c_tiny: vit_c.yaml}
epochs: [1]
optimizers:
  adamw: {lr: [1.0e-3, 1.0e-3], weight_decay: [0.05, 0.05]}
"""


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_data") / "shards"
    build_shards(digits_folder, out, options=BuildOptions(samples_per_shard=100), progress=False)
    return out


def write_spec(root: Path, shards: Path, seed: int = 0, samples: int = 3, body: str = SPEC_YAML) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "vit_p.yaml").write_text(MODEL_YAML % dict(name="vit_p_1gf", depth=3, shards=shards,
                                                      stem=", patch_size: 4"))
    (root / "vit_c.yaml").write_text(MODEL_YAML % dict(name="vit_c_1gf", depth=2, shards=shards,
                                                      stem=", stem_channels: [8, 16], stem_strides: [2, 2]"))
    spec = root / "spec.yaml"
    spec.write_text(body % dict(seed=seed, samples=samples))
    return spec


def test_make_is_reproducible_from_the_spec_seed(shards, tmp_path):
    spec = write_spec(tmp_path / "spec", shards)
    make_sweep(spec, tmp_path / "a")
    make_sweep(spec, tmp_path / "b")
    other = write_spec(tmp_path / "spec2", shards, seed=1)
    make_sweep(other, tmp_path / "c")

    a, b, c = (read_runs(tmp_path / d) for d in "abc")
    settings = lambda runs: [(r.id, r.lr, r.weight_decay, r.epochs, r.seed) for r in runs]  # noqa: E731
    assert settings(a) == settings(b)
    assert settings(a) != settings(c)
    config_a = (tmp_path / "a" / a[0].config).read_text()
    assert config_a.replace(str(tmp_path / "a"), "") == (tmp_path / "b" / b[0].config).read_text().replace(
        str(tmp_path / "b"), "")


def test_make_samples_each_setting_once_for_every_model_within_the_ranges(shards, tmp_path):
    runs = make_sweep(write_spec(tmp_path / "spec", shards, samples=5), tmp_path / "sweep")

    assert len(runs) == 5 * 2 * 2  # samples × optimizers × models
    for optimizer, (lr_range, wd_range) in {"adamw": ((1e-4, 1e-2), (1e-3, 0.5)),
                                            "sgd": ((1e-2, 1.0), (1e-5, 1e-3))}.items():
        group = [r for r in runs if r.optimizer == optimizer]
        assert all(lr_range[0] <= r.lr <= lr_range[1] and wd_range[0] <= r.weight_decay <= wd_range[1]
                   for r in group)
        for model in ("vit_p_tiny", "vit_c_tiny"):  # paired: both models get the same settings
            assert [(r.lr, r.weight_decay, r.seed) for r in group if r.model == model] == \
                   [(r.lr, r.weight_decay, r.seed) for r in group if r.model == "vit_p_tiny"]
    assert {r.stem for r in runs} == {"conv", "patchify"}
    cfg = load_config(tmp_path / "sweep" / runs[-1].config)
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay, cfg.schedule.epochs) == (
        runs[-1].optimizer, runs[-1].lr, runs[-1].weight_decay, runs[-1].epochs)
    assert cfg.train.run_dir == str(tmp_path / "sweep" / "runs" / runs[-1].id)


def test_make_refuses_a_different_sweep_in_the_same_directory(shards, tmp_path):
    make_sweep(write_spec(tmp_path / "s0", shards, seed=0), tmp_path / "sweep")
    with pytest.raises(VitcError, match="was made with other settings: run \\S+ would change"):
        make_sweep(write_spec(tmp_path / "s1", shards, seed=1), tmp_path / "sweep")


def test_re_making_with_other_overrides_is_refused_unless_forced_which_drops_the_changed_runs(shards, tmp_path, capsys):
    spec, sweep = write_spec(tmp_path / "spec", shards, samples=1), tmp_path / "sweep"
    runs = make_sweep(spec, sweep)
    for plan in runs:  # as if trained and collected
        (sweep / "runs" / plan.id).mkdir(parents=True)
    (sweep / "results.csv").write_text("id,top1\n" + "".join(f"{p.id},50.0\n" for p in runs))
    before = {p.id: (sweep / p.config).read_text() for p in runs}

    assert main(["sweep", "make", str(spec), str(sweep), "data.workers=2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitc:")]
    assert len(err) == 1 and f"run {runs[0].id} would change" in err[0] and "--force" in err[0]
    assert {p.id: (sweep / p.config).read_text() for p in runs} == before  # nothing rewritten

    assert main(["sweep", "make", str(spec), str(sweep), "data.workers=2", "--force"]) == 0
    assert all("workers: 2" in (sweep / p.config).read_text() for p in runs)
    assert not any((sweep / "runs" / p.id).exists() for p in runs)
    assert (sweep / "results.csv").read_text() == "id,top1\n"
    assert main(["sweep", "make", str(spec), str(sweep), "data.workers=2"]) == 0  # the same again: a no-op


def test_a_spec_typo_names_the_key_and_suggests_the_right_one(shards, tmp_path):
    spec = write_spec(tmp_path, shards, body=SPEC_YAML.replace("samples:", "sampels:"))
    with pytest.raises(VitcError, match=r"unknown key 'sampels'.*did you mean 'samples'"):
        load_spec(spec)


def test_edf_is_the_fraction_of_errors_strictly_below_each_threshold():
    assert edf([10.0, 20.0, 100.0, 100.0], [10.0, 10.5, 50.0, 100.0]) == [0.0, 0.25, 0.5, 0.5]
    assert error_thresholds(25.0) == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_slurm_dry_run_renders_one_array_task_per_run(shards, tmp_path, capsys):
    runs = make_sweep(write_spec(tmp_path / "spec", shards, samples=2), tmp_path / "sweep")

    assert main(["sweep", "run", str(tmp_path / "sweep"), "--slurm", "--dry-run", "--max-concurrent", "3"]) == 0

    script = capsys.readouterr().out
    assert f"#SBATCH --array=0-{len(runs) - 1}%3" in script
    assert str(tmp_path / "sweep" / "slurm" / "configs.txt") in script
    assert not (tmp_path / "sweep" / "slurm").exists()  # a dry run writes nothing


def _ended(status: str, epoch: int | None = 1, error: str | None = None) -> RunOutcome:
    """The outcome.json a trainer leaves when a run ends this way (here without training it)."""
    return RunOutcome(status, 3, epoch, 0, None, None, error, 1.0)


def _evaluated(run_dir: Path, ema_top1s: list[float]) -> None:
    """The eval records a trainer appends to metrics.jsonl, one per evaluation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        for epoch, top1 in enumerate(ema_top1s, 1):
            f.write(json.dumps({"kind": "eval", "step": epoch, "epoch": epoch, "top1": top1 - 5,
                                "ema_top1": top1}) + "\n")


def results(sweep: Path) -> dict[str, dict]:
    with open(sweep / RESULTS_CSV, newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_collect_reads_the_outcome_that_a_slurm_array_tasks_run_left(shards, tmp_path):
    sweep = tmp_path / "sweep"
    runs = make_sweep(write_spec(tmp_path / "spec", shards, samples=1), sweep)
    # array tasks train without `vitc sweep run`: only their trainers' outcome.json and metrics tell
    write_outcome(sweep / "runs" / runs[0].id, _ended("failed", error="RuntimeError: node lost"))
    write_outcome(sweep / "runs" / runs[1].id, _ended("diverged", error="loss is not finite at step 3"))
    write_outcome(sweep / "runs" / runs[2].id, _ended("finished", runs[2].epochs))
    _evaluated(sweep / "runs" / runs[2].id, [50.0, 61.5, 60.0])  # its best, not its last
    write_outcome(sweep / "runs" / runs[3].id, _ended("preempted"))

    assert main(["sweep", "collect", str(sweep)]) == 0

    rows = results(sweep)
    assert list(rows[runs[0].id])[-2:] == ["status", "best_ema_top1"]
    assert [(rows[r.id]["status"], rows[r.id]["best_ema_top1"]) for r in runs] == [
        ("failed", ""), ("diverged", ""), ("finished", "61.5"),
        ("incomplete", "")]
    errors = {r.id: r.error for r in load_runs(sweep)}  # the report's rules on what collect wrote
    assert errors[runs[1].id] == 100.0 and errors[runs[0].id] is None and errors[runs[3].id] is None


def test_run_retries_every_run_without_a_final_outcome(shards, tmp_path):
    sweep = tmp_path / "sweep"
    runs = make_sweep(write_spec(tmp_path / "spec", shards, samples=1), sweep)
    assert len(runs) == 4
    for run, status in zip(runs, ("finished", "diverged", "failed", "preempted")):
        write_outcome(sweep / "runs" / run.id, _ended(status))

    assert [p.id for p in pending_runs(sweep)] == [r.id for r in runs[2:]]


@pytest.mark.slow
def test_a_crashed_run_is_retried_the_set_number_of_times_then_counted_apart(shards, tmp_path, capsys):
    from safetensors.numpy import save_file

    spec = write_spec(tmp_path / "spec", shards, samples=1, body=ONE_MODEL_SPEC)
    sweep = tmp_path / "sweep"
    weights = tmp_path / "other.safetensors"  # found wrong only once the model loads it: every start fails
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(weights))
    (run,) = make_sweep(spec, sweep, [f"finetune.init_from={weights}"])

    assert main(["sweep", "run", str(sweep), "--retries", "1"]) == 1

    out, err = capsys.readouterr()
    assert "trained 1 runs: 1 failed" in out
    assert f"vitc: error: 1 of 1 runs failed ({run.id})" in err
    assert (sweep / "runs" / run.id / "train.log").read_text().count("vitc: error:") == 2  # 1 + 1 retry
    assert main(["sweep", "collect", str(sweep)]) == 0
    (counted,) = load_runs(sweep)
    assert (counted.status, counted.error) == ("failed", None)  # apart: not a 100 % error


@pytest.mark.slow
def test_a_signal_to_a_sweep_running_two_at_once_checkpoints_both_and_starts_no_other(shards, tmp_path):
    # three settings of 50 epochs: the signal always comes while the first two train
    spec = write_spec(tmp_path / "spec", shards, samples=3,
                      body=ONE_MODEL_SPEC.replace("epochs: [1]", "epochs: [50]").replace(
                          "lr: [1.0e-3, 1.0e-3]", "lr: [1.0e-4, 1.0e-3]"))
    sweep = tmp_path / "sweep"
    first, second, third = make_sweep(spec, sweep)
    sweeping = subprocess.Popen([sys.executable, "-m", "vitc.cli", "sweep", "run", str(sweep), "--jobs", "2"],
                                stderr=subprocess.PIPE, text=True)
    trained = [sweep / "runs" / run.id / "metrics.jsonl" for run in (first, second)]
    while not all(path.is_file() and '"train"' in path.read_text() for path in trained):
        assert sweeping.poll() is None, sweeping.stderr.read()
        time.sleep(0.2)

    sweeping.send_signal(signal.SIGTERM)

    assert sweeping.wait() == 128 + signal.SIGTERM  # stopped, not done: the shell's code for the signal
    assert "stopped by a signal (SIGTERM); run the same command to continue" in sweeping.stderr.read()
    for run in (first, second):  # each saved where the signal found it, to resume from
        outcome = read_outcome(sweep / "runs" / run.id)
        assert outcome.status == "preempted" and outcome.step > 0
        assert any((sweep / "runs" / run.id / "checkpoints").glob(f"step_{outcome.step:08d}"))
    assert not (sweep / "runs" / third.id).exists()
    assert [p.id for p in pending_runs(sweep)] == [first.id, second.id, third.id]


@pytest.mark.slow
def test_run_collect_plot_a_sweep_where_one_run_diverges(shards, tmp_path, capsys):
    # one model, two settings: AdamW at a sane lr finishes; SGD at lr 1e30 overflows to a non-finite loss
    spec = write_spec(tmp_path / "spec", shards, samples=1,
                      body=ONE_MODEL_SPEC + "  sgd: {lr: [1.0e+30, 1.0e+30], weight_decay: [1.0e-4, 1.0e-4]}\n")
    sweep = tmp_path / "sweep"
    assert main(["sweep", "make", str(spec), str(sweep)]) == 0

    assert main(["sweep", "run", str(sweep), "--jobs", "2"]) == 0  # both at once, one core each
    assert "trained 2 runs: 1 diverged, 1 finished" in capsys.readouterr().out
    diverged_log = (sweep / "runs" / "vit_c_tiny-sgd-000" / "train.log").read_text()
    assert diverged_log.count(" rank(s), ") == 1  # one start (the run's first line): a diverged run is never retried
    assert main(["sweep", "run", str(sweep)]) == 0  # both outcomes are final: nothing to redo
    assert "nothing left to train" in capsys.readouterr().out

    assert main(["sweep", "collect", str(sweep)]) == 0
    by_optimizer = {r.optimizer: r for r in load_runs(sweep)}
    assert (by_optimizer["sgd"].status, by_optimizer["sgd"].error) == ("diverged", 100.0)
    adamw = by_optimizer["adamw"]
    assert adamw.status == "finished" and 0.0 <= adamw.error < 100.0

    assert main(["sweep", "plot", str(sweep), "--out", str(tmp_path / "plot")]) == 0
    assert (tmp_path / "plot" / "edf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "plot" / "edf.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    at_100 = rows[-1]
    assert at_100["error"] == "100.0"
    assert at_100["vit_c_tiny adamw (n=1)"] == "1.0000"  # its one run has error < 100
    assert at_100["vit_c_tiny sgd (n=1)"] == "0.0000"  # diverged: 100 % error, never below e


def test_shipped_sweep_specs_make_their_runs(tmp_path):
    for name, count in (("paper_edf", 64 * 2 * 6), ("mini_edf", 16 * 2 * 2), ("stem_edf", 64 * 2 * 8),
                        ("deep_edf", 64 * 1 * 2)):
        spec = load_spec(REPO / "configs" / "sweeps" / f"{name}.yaml")
        assert spec.samples * len(spec.optimizers) * len(spec.models) == count
        assert all(path.is_file() for path in spec.models.values())
    # Fig. 8 pairs the deeper models' runs with the §5.3 sweep's 4GF and 18GF runs: same settings
    paper, deep = (load_spec(REPO / "configs" / "sweeps" / f"{name}.yaml") for name in ("paper_edf", "deep_edf"))
    settings = [{(r.lr, r.weight_decay, r.epochs, r.seed) for r in sample_runs(spec, dict.fromkeys(spec.models, ""))
                 if r.optimizer == "adamw"} for spec in (paper, deep)]
    assert len(settings[0]) == 64 and settings[0] == settings[1]
    runs = make_sweep(REPO / "configs" / "sweeps" / "mini_edf.yaml", tmp_path / "mini",
                      ["data.train_shards=shards/train", "data.val_shards=shards/val"])
    assert len(runs) == 64 and {r.epochs for r in runs} == {30}


@pytest.mark.slow
def test_the_paper_sweep_is_768_runs_of_50_epochs_in_the_papers_intervals(tmp_path):
    runs = make_sweep(REPO / "configs" / "sweeps" / "paper_edf.yaml", tmp_path / "paper")

    assert len(runs) == 768 and {r.epochs for r in runs} == {50}
    assert {r.model for r in runs} == {f"vit_{s}_{gf}" for s in "pc" for gf in ("1gf", "4gf", "18gf")}
    intervals = {"adamw": ((2.5e-4, 8.0e-3), (0.02, 0.8)), "sgd": ((0.1, 3.2), (4.0e-6, 1.2e-4))}  # Appendix E
    for (model, optimizer), n in Counter((r.model, r.optimizer) for r in runs).items():
        assert n == 64
        (lr_lo, lr_hi), (wd_lo, wd_hi) = intervals[optimizer]
        assert all(lr_lo <= r.lr <= lr_hi and wd_lo <= r.weight_decay <= wd_hi
                   for r in runs if (r.model, r.optimizer) == (model, optimizer))
    cfg = load_config(tmp_path / "paper" / runs[-1].config)
    assert (cfg.optim.reference_batch, cfg.optim.ema_alpha, cfg.optim.momentum) == (2048, 1e-5, 0.9)


def test_runs_csv_gives_the_lr_at_the_reference_batch_and_the_lr_at_the_runs_global_batch(shards, tmp_path):
    # micro-batch 16 × accumulation 2 × 2 nodes of one CPU task = 64 images per step, 4 × the
    # reference batch of 16: the run trains at 4 × the sampled lr
    runs = make_sweep(write_spec(tmp_path / "spec", shards), tmp_path / "sweep",
                      ["train.grad_accum=2", "slurm.nodes=2", "slurm.gpus_per_node=0"])

    with open(tmp_path / "sweep" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["lr"]), int(r["global_batch"]), float(r["scaled_lr"])) for r in rows] == \
           [(p.lr, 64, p.scaled_lr) for p in runs]
    for plan in runs:
        cfg = load_config(tmp_path / "sweep" / plan.config)
        assert cfg.optim.base_lr == plan.lr and cfg.optim.reference_batch == 16
        run = resolve_run(cfg, 2, shards=())  # what the trainer resolves on the job's 2 ranks
        assert run.global_batch == 64 and plan.scaled_lr == pytest.approx(4 * plan.lr) == run.lr


def test_sweep_planning_imports_no_torch():
    """`vitc sweep make` runs on a login node; its modules (and the report's) stay light."""
    code = ("import sys, vitc.sweep.make, vitc.sweep.analysis, vitc.sweep.report; "
            "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_runs_table_from_before_scaled_lr_asks_for_a_re_make(shards, tmp_path):
    make_sweep(write_spec(tmp_path / "spec", shards, samples=1), tmp_path / "sweep")
    index = tmp_path / "sweep" / "runs.csv"
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    old = [{k: v for k, v in row.items() if k not in ("global_batch", "scaled_lr")} for row in rows]
    with open(index, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)

    with pytest.raises(VitcError, match="lacks the column.*global_batch, scaled_lr.*re-make"):
        read_runs(tmp_path / "sweep")

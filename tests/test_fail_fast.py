"""A failing command ends at once with one line: nothing hangs, the exit code says what happened,
bad input is refused before anything heavy starts, and a refused command writes nothing.

Each bad input runs `vitc` in a fresh process (the hangs were in the exit of the process); a
process that does not end within HANG_S fails its test. The configs are tiny digit runs
(tests/engine_runs.py) with loader workers on, since the hangs came from them.
"""

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from engine_runs import ROOT, TINY_CONV, TINY_PATCHIFY, digit_shards, write_config

HANG_S = 60  # far above the 10 s a failing start may take here; an infinite hang fails the test


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory):
    return digit_shards(digits_folder, tmp_path_factory.mktemp("shards"))


def vitc(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`vitc ARGS` in a fresh process that must end within HANG_S."""
    return subprocess.run([sys.executable, "-m", "vitc.cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=HANG_S, env=env)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `vitc: error` line of a failed command, after checking there is no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("vitc:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


# ---- nothing hangs -------------------------------------------------------------------------------

def _weights_of_another_model(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"encoder.weight": np.zeros((4, 4), np.float32)}, str(path))
    return path


def _truncated_weights(path: Path) -> Path:
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [1000, 32], "data_offsets": [0, 128000]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    return path


@pytest.mark.parametrize("weights", [_weights_of_another_model, _truncated_weights])
def test_an_error_after_the_loaders_workers_started_ends_the_process(weights, shards, tmp_path):
    # pretrained weights whose header reads well are found wrong only when the model loads them,
    # after the loader's workers were forked (vitc/engine/trainer.py): the hang of issue #30
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2})
    bad = weights(tmp_path / "w.safetensors")
    result = vitc("train", str(config), f"finetune.init_from={bad}")
    assert result.returncode == 2 and error_line(result)


def test_a_child_that_ignores_sigterm_does_not_hold_the_exit(tmp_path):
    # a loader worker ignores SIGTERM while its parent lives (vitc/data/processes.py);
    # multiprocessing's own exit handler would join it forever
    script = (
        "import multiprocessing, sys, time\n"
        "from vitc.data.processes import follow_parent\n"
        "def serve(parent):\n    follow_parent(parent)\n    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    import os\n"
        "    p = multiprocessing.get_context('fork').Process(target=serve, args=(os.getpid(),), daemon=True)\n"
        "    p.start()\n    print(p.pid, flush=True)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_S,
                            check=False, cwd=ROOT)
    assert result.returncode == 3, result.stderr
    child = int(result.stdout)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_sigterm_outside_slurm_saves_and_exits_128_plus_15_quietly(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2},
                          schedule={"epochs": 50})
    proc = subprocess.Popen([sys.executable, "-m", "vitc.cli", "train", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + HANG_S
    while not metrics.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "SIGTERM" in err
    # quiet by default: the loader's details go to the run's log file only
    assert "shared batch buffers" not in err and "train loader:" not in err
    run_log = (tmp_path / "run" / "vitc.log").read_text()
    assert "shared batch buffers" in run_log and "saved checkpoint" in run_log
    exported = vitc("export", str(tmp_path / "run"), "--out", str(tmp_path / "w.safetensors"))
    assert exported.returncode == 0 and exported.stdout == f"{tmp_path / 'w.safetensors'}\n"  # no DeepSpeed lines


# ---- bad input is refused before anything heavy, and writes nothing -----------------------------

def refused(argv: list[str], capsys, tmp_path: Path, code: int = 2) -> str:
    """`vitc ARGV` in this process: exit `code`, one error line (returned), nothing new in tmp_path."""
    from vitc.cli import main

    before = files_under(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vitc:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert files_under(tmp_path) == before
    return errors[0]


def _files(tmp_path: Path) -> dict[str, Path]:
    py = tmp_path / "model.py"
    py.write_text("print('not weights')\n")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    return {"PY": py, "GARBAGE": garbage, "EMPTY": empty}


BAD_TRAIN_OVERRIDES = [  # override, what the line must name
    ("optim.base_lr=.inf", "optim.base_lr"),
    ("optim.base_lr=.nan", "optim.base_lr"),
    ("optim.base_lr=-1e-3", "optim.base_lr"),
    ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("optim.weight_decay=-.nan", "optim.weight_decay"),
    ("schedule.warmup_epochs=.inf", "schedule.warmup_epochs"),
    ("schedule.epochs=1e30", "schedule.epochs"),
    ("schedule.epochs=0", "schedule.epochs"),
    ("schedule.epochs=10000000", "schedule.epochs"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=-5", "train.max_steps"),
    ("train.micro_batch=0", "train.micro_batch"),
    ("model.depth=", "model.depth="),
    ("optim.base_lr=", "optim.base_lr="),
    ("data.train_shards=", "data.train_shards="),
    ("model.depth=0", "model.depth"),
    ("data.hflip=2", "data.hflip"),
    ("deepspeed.zero_optimisation={stage: 2}", "deepspeed.zero_optimisation"),
    ("deepspeed.foo=1", "deepspeed.foo"),
    ("deepspeed.zero_optimization.overlap_com=true", "overlap_com"),
    ("data.train_shards=/nonexistent/shards", "/nonexistent/shards"),
    ("data.val_shards=/nonexistent/val", "/nonexistent/val"),
    ("data.train_manifest=/nonexistent/manifest.json", "/nonexistent/manifest.json"),
    ("finetune.init_from=/nonexistent/w.safetensors", "/nonexistent/w.safetensors"),
    ("finetune.init_from=PY", "model.py"),
    ("finetune.init_from=GARBAGE", "garbage.safetensors"),
    ("finetune.init_from=EMPTY", "empty_dir"),
]


@pytest.mark.parametrize(("override", "named"), BAD_TRAIN_OVERRIDES, ids=[o for o, _ in BAD_TRAIN_OVERRIDES])
def test_a_bad_config_is_one_line_and_writes_nothing(override, named, shards, tmp_path, capsys):
    files = _files(tmp_path)
    for word, path in files.items():
        override = override.replace(f"={word}", f"={path}")
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2})
    line = refused(["train", str(config), override], capsys, tmp_path)
    assert named in line


def test_a_refused_config_loads_no_torch_and_starts_no_process(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", data={"workers": 2})
    probe = ("import multiprocessing, sys\nfrom vitc.cli import main\n"
             f"code = main(['train', {str(config)!r}, 'finetune.init_from=/nonexistent.safetensors'])\n"
             "print(code, 'torch' in sys.modules, 'deepspeed' in sys.modules, len(multiprocessing.active_children()))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_S,
                            check=False, cwd=ROOT)
    assert result.stdout.split() == ["2", "False", "False", "0"], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_resuming_another_models_run_directory_is_refused_before_the_engine(shards, tmp_path, capsys):
    from vitc.cli import main

    conv = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    assert main(["train", str(conv), "train.max_steps=1"]) == 0
    capsys.readouterr()
    patchify = write_config(tmp_path / "p.yaml", shards, tmp_path / "run", model=TINY_PATCHIFY)
    line = refused(["train", str(patchify), "train.max_steps=2"], capsys, tmp_path)
    assert TINY_CONV["name"] in line and TINY_PATCHIFY["name"] in line and "conv stem" in line


def test_slurm_submit_flags_go_through_the_schema(tmp_path, capsys, shards):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    for flags, named in ((["--exit-wait-s", "0"], "slurm.exit_wait_s"), (["--nodes", "0"], "slurm.nodes"),
                         (["--gpus-per-node", "-1"], "slurm.gpus_per_node")):
        assert named in refused(["slurm", "submit", str(config), "--dry-run", *flags], capsys, tmp_path)


def test_slurm_submit_without_sbatch_writes_nothing(tmp_path, capsys, shards, monkeypatch):
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    assert "sbatch not found" in refused(["slurm", "submit", str(config)], capsys, tmp_path)


def test_slurm_status_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    assert "not a run directory" in refused(["slurm", "status", str(tmp_path / "other")], capsys, tmp_path)


@pytest.mark.parametrize("argv", [
    ["demo", "--epochs", "0"],
    ["demo", "--epochs", "-3"],
    ["demo", "--out", "FILE"],
    ["sweep", "plot", "SWEEP", "--step", "0"],
    ["sweep", "plot", "SWEEP", "--step", "-1"],
    ["sweep", "plot", "SWEEP", "--step", "nan"],
    ["config", "show", "CONFIG", "--world", "0"],
    ["config", "show", "CONFIG", "--world", "-2"],
    ["eval", "CONFIG", "--weights", "a.safetensors", "weights=b.safetensors"],
    ["export", "RUN", "--out", "DIR"],
    ["export", "RUN", "--out", "FILE", "--format", "timm"],
], ids=lambda argv: " ".join(argv))
def test_a_bad_command_line_is_one_line_and_writes_nothing(argv, tmp_path, capsys, shards):
    (tmp_path / "a_file").write_text("keep\n")
    (tmp_path / "a_dir").mkdir()
    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run")
    where = {"FILE": tmp_path / "a_file", "DIR": tmp_path / "a_dir", "SWEEP": tmp_path / "sweep",
             "CONFIG": config, "RUN": tmp_path / "run"}
    argv = [str(where.get(a, a)) for a in argv]
    refused(argv, capsys, tmp_path)
    assert (tmp_path / "a_file").read_text() == "keep\n"


def test_a_missing_data_path_in_a_sweep_is_refused_before_any_run_starts(shards, tmp_path, capsys):
    from test_sweep import ONE_MODEL_SPEC, write_spec

    from vitc.sweep.make import make_sweep

    sweep = tmp_path / "sweep"
    make_sweep(write_spec(tmp_path / "spec", shards, samples=1, body=ONE_MODEL_SPEC), sweep,
               [f"data.train_shards={tmp_path / 'lost'}"])
    line = refused(["sweep", "run", str(sweep)], capsys, tmp_path)
    assert str(tmp_path / "lost") in line and "does not exist" in line


def test_a_sweep_without_ema_is_refused_by_sweep_make(shards, tmp_path, capsys):
    from test_sweep import ONE_MODEL_SPEC, write_spec

    spec = write_spec(tmp_path / "spec", shards, samples=1, body=ONE_MODEL_SPEC)
    line = refused(["sweep", "make", str(spec), str(tmp_path / "sweep"), "optim.ema_alpha=0"], capsys, tmp_path)
    assert "optim.ema_alpha" in line
    line = refused(["sweep", "make", str(spec), str(tmp_path / "sweep"), "eval.every_epochs=0"], capsys, tmp_path)
    assert "eval.every_epochs=0" in line


def test_the_deepspeed_keys_vitc_accepts_are_the_installed_deepspeeds():
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from vitc.deepspeed_keys import (
        DEEPSPEED_KEYS,
        DEEPSPEED_VERSION,
        ZERO_OPTIMIZATION_KEYS,
    )

    class Recording(dict):  # the top-level keys DeepSpeedConfig asks its dict for
        asked: ClassVar[set] = set()

        def get(self, key, *default):
            Recording.asked.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            Recording.asked.add(key)
            return super().__getitem__(key)

        def __contains__(self, key):
            Recording.asked.add(key)
            return super().__contains__(key)

    DeepSpeedConfig(Recording(train_batch_size=8, train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1))
    zero = {name for name, f in DeepSpeedZeroConfig.model_fields.items()} | {
        f.alias for f in DeepSpeedZeroConfig.model_fields.values() if f.alias}
    assert deepspeed.__version__ == DEEPSPEED_VERSION
    assert Recording.asked <= DEEPSPEED_KEYS
    assert zero == ZERO_OPTIMIZATION_KEYS


# ---- timeouts ------------------------------------------------------------------------------------

def test_a_dead_rank_ends_the_others_with_one_line_naming_rank_and_host(shards, tmp_path):
    import socket

    from vitc.engine.runtime import free_port

    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run", schedule={"epochs": 50},
                          train={"collective_timeout_min": 0.25})
    port = str(free_port())
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen([sys.executable, "-m", "vitc.cli", "train", str(config)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 4 * HANG_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        assert all(r.poll() is None for r in ranks), ranks[0].communicate()[1][-2000:]
        time.sleep(0.1)
    ranks[1].kill()  # a node lost: no signal handler runs, no checkpoint
    _, err = ranks[0].communicate(timeout=HANG_S)
    ranks[1].communicate()
    line = error_line(subprocess.CompletedProcess([], ranks[0].returncode, "", err))
    assert ranks[0].returncode == 2
    assert f"rank 0 of 2 on {socket.gethostname()}" in line and "train.collective_timeout_min=0.25" in line


FAKE_SLURM = {  # the commands launch.sh calls, as a cluster whose second node went down
    "srun": "#!/bin/bash\nexit 1\n",
    "scontrol": ("#!/bin/bash\n"
                 "case \"$1 $2\" in\n"
                 "  'show hostnames') printf 'node1\\nnode2\\n' ;;\n"
                 "  'show node') [ \"$3\" = node2 ] && [ -n \"$NODE2_DOWN\" ] && echo \"NodeName=node2 State=DOWN*\" "
                 "|| echo \"NodeName=$3 NodeAddr=10.0.0.1 State=ALLOCATED\" ;;\n"
                 "  requeue*) echo \"$2\" >> \"$REQUEUED\" ;;\n"
                 "esac\n"),
}


@pytest.mark.parametrize("node_down", [True, False])
def test_launch_requeues_after_a_node_failure_up_to_the_set_count(node_down, shards, tmp_path):
    from vitc.config import load_config
    from vitc.slurm.submit import render_job_script

    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run",
                          slurm={"node_failure_requeues": 2, "gpus_per_node": 0})
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(load_config(config), config, ROOT))
    (tmp_path / "run" / "slurm").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_CPUS_PER_TASK": "1", "REQUEUED": str(tmp_path / "requeued"),
           **({"NODE2_DOWN": "1"} if node_down else {})}
    runs = [subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=HANG_S,
                           check=False) for _ in range(3)]
    requeued = (tmp_path / "requeued").read_text().split() if (tmp_path / "requeued").exists() else []
    if not node_down:  # a rank that failed on a healthy node: the job ends, no requeue
        assert runs[0].returncode == 1 and not requeued
        assert "vitc: error: the training step ended with status 1" in runs[0].stderr
        return
    assert [r.returncode for r in runs] == [0, 0, 1] and requeued == ["77", "77"]
    assert "node failure (node2): requeueing job 77 (1 of 2)" in runs[0].stderr
    assert "vitc: error: node failure (node2) after 2 requeue(s)" in runs[2].stderr
    assert "slurm.node_failure_requeues=2" in runs[2].stderr


# ---- help ----------------------------------------------------------------------------------------

def test_help_has_no_literal_percent_signs_and_names_what_each_option_is(capsys):
    from vitc.cli import build_parser

    parser = build_parser()
    pages = {}

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        pages[name] = p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, child in action.choices.items():
                    walk(child, f"{name} {sub_name}")

    walk(parser, "vitc")
    for name, page in pages.items():
        assert "%%" not in page, name
        assert "[CONFIG [key=value]" not in page, name  # usage names CONFIG once
    for name in ("vitc bench engine", "vitc bench model"):
        assert "--model MODEL    a registry model" in pages[name] and "--batch BATCH    images per" in pages[name]
    for name in ("vitc eval", "vitc slurm status"):
        description = pages[name].split("\n\n")[1]
        assert not description.startswith(("positional", "options")), name


def test_pin_costs_help_writes_nothing(tmp_path):
    pinned = ROOT / "tests" / "data" / "model_costs.json"
    before = pinned.stat().st_mtime_ns
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "pin_costs.py"), "--help"], capture_output=True,
                            text=True, timeout=HANG_S, check=False, cwd=ROOT)
    assert result.returncode == 0 and "usage:" in result.stdout
    assert pinned.stat().st_mtime_ns == before


# ---- config show ---------------------------------------------------------------------------------

def test_config_show_prints_the_resolved_model_and_this_machines_device(shards, tmp_path, capsys):
    import yaml

    from vitc.cli import main
    from vitc.models.spec import get_spec
    from vitc.preflight import visible_gpus

    config = write_config(tmp_path / "c.yaml", shards, tmp_path / "run",
                          model={"name": "vit_c_4gf", "num_classes": "auto", "image_size": 32})
    assert main(["config", "show", str(config)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    registry = get_spec("vit_c_4gf")
    model = shown["model"]
    assert None not in model.values()
    assert (model["width"], model["depth"], model["heads"], model["norm_eps"]) == (
        registry.width, registry.depth, registry.heads, registry.norm_eps)
    assert model["num_classes"] == 10  # `auto`, counted in the digits' manifest
    assert shown["derived"]["device"] == ("gpu" if visible_gpus() else "cpu")
    assert shown["derived"]["precision"] == ("bf16" if visible_gpus() else "fp32")


def test_an_unreadable_image_is_named_without_pils_in_memory_file_repr():
    from vitc.data.loading.decode import UndecodableImage, decode_full, image_size

    for read in (lambda: image_size(b"not an image"), lambda: decode_full(b"not an image", 8, 8)):
        with pytest.raises(UndecodableImage) as error:
            read()
        assert "BytesIO" not in str(error.value) and "0x" not in str(error.value), str(error.value)


def test_a_shard_directory_that_does_not_exist_is_named_as_missing(tmp_path, capsys):
    from vitc.cli import main

    missing = tmp_path / "nowhere" / "train"
    assert main(["plan", "vit_c_1gf", f"data.train_shards={missing}", "model.num_classes=auto", "--nodes", "1",
                 "--gpus-per-node", "8"]) != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"'{missing}' does not exist" in line and "train_manifest" not in line, line

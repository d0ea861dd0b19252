"""The CLI surface users script against: frozen here, so a rename cannot pass unseen."""

import argparse
import subprocess
import sys

import pytest

from vitc.cli import build_parser, main

SURFACE = {
    "audit": ["--format", "--num-classes", "--parity", "--resolution"],
    "plan": ["--dataset-size", "--format", "--gpu", "--gpus-file", "--gpus-per-node", "--loader-rate", "--mfu",
             "--no-overlap", "--node-cores", "--nodes", "--sweep-nodes"],
    "config show": ["--device", "--format", "--world"],
    "bench model": ["--batch", "--iters", "--model", "--processes", "--rounds"],
    "bench data": ["--auto-augment", "--batch", "--images", "--no-shard-build", "--processes", "--random-erasing",
                   "--rounds", "--shards", "--workers"],
    "bench engine": ["--batch", "--iters", "--model", "--processes", "--rounds", "--stages"],
    "bench startup": ["--out", "--rounds"],
    "bench meters": ["--batch", "--book-rounds", "--book-steps", "--iters", "--log-every", "--model", "--processes",
                     "--rounds", "--stage"],
    "shards build": ["--max-shard-bytes", "--max-side", "--prefix", "--quality", "--samples-per-shard",
                     "--shuffle-seed", "--workers"],
    "shards verify": ["--workers"],
    "shards index": ["--prefix", "--workers"],
    "data ledger": ["--json"],
    "train": [],
    "eval": ["--weights"],
    "export": ["--dtype", "--ema", "--format", "--out"],
    "demo": ["--epochs", "--out"],
    "pipeline": ["--run-dir"],
    "sweep make": ["--force"],
    "sweep run": ["--dry-run", "--jobs", "--max-concurrent", "--retries", "--slurm"],
    "sweep collect": [],
    "sweep plot": ["--name", "--out", "--step"],
    "sweep report": [],
    "slurm submit": ["--account", "--cpu-bind", "--dry-run", "--exit-wait-s", "--gpu-bind", "--gpus-per-node", "--mem", "--nodes",
                     "--partition", "--time"],
    "slurm status": [],
}


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, list[str]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(prefix): sorted(o for a in parser._actions for o in a.option_strings
                                         if o.startswith("--") and o != "--help")}
    out = {}
    for name, child in subs[0].choices.items():
        out.update(leaf_commands(child, (*prefix, name)))
    return out


def test_cli_surface_is_frozen():
    assert leaf_commands(build_parser()) == SURFACE


@pytest.mark.parametrize("command", sorted(SURFACE))
def test_every_command_documents_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert "usage: vitc " + command in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_runs_the_same_cli():
    """torchrun, srun and child processes start vitc as `python -m vitc.cli`."""
    out = subprocess.run([sys.executable, "-m", "vitc.cli", "audit", "vit_p_1gf", "--format", "csv"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1].startswith("vit_p_1gf,patchify,12,192,224,")


def test_an_unknown_option_is_refused():
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "vit_p_1gf", "--parity-tolerance", "0.1"])
    assert exit_.value.code == 2


def test_a_one_epoch_demo_is_accepted_and_its_configs_resolve(monkeypatch, tmp_path):
    """`vitc demo --epochs 1` checks the flag alone (the schema's default warmup of 5 epochs is not
    the demo's: its configs warm up for 1), and hands the epochs to the demo."""
    from vitc.pipelines import demo
    from vitc.config import load_config

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.update(kwargs) or [])
    monkeypatch.setattr(demo, "format_demo", lambda rows: "")
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 0
    assert seen["epochs"] == 1
    for name in demo.MODELS:
        assert load_config(demo.CONFIGS / f"{name}.yaml", ["schedule.epochs=1"]).schedule.epochs == 1

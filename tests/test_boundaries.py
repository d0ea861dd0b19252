"""Walls between vitc's packages: no import cycle, heavy libraries only where they belong, and the
login-node commands (plan, sweep make, slurm submit --dry-run) load neither torch nor DeepSpeed."""

import ast
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vitc"

# Which of vitc's packages (or top-level modules) may import each heavy library. The model is plain
# PyTorch; only the engine wraps it in DeepSpeed (weights consolidates ZeRO partitions with
# DeepSpeed's own reader, checkpoint completes its universal conversions with DeepSpeed's version
# stamp), only the data wing reads WebDataset shards, only the audit counts with
# fvcore; config, the distributed environment, slurm submission, plan and sweep planning run on a
# login node.
MAY_IMPORT = {
    "torch": {"models", "audit", "data", "engine", "bench", "checkpoint", "weights"},
    "deepspeed": {"engine", "weights", "checkpoint"},
    "webdataset": {"data"},
    "fvcore": {"audit"},
}
LIGHT = ("config", "schema", "run", "distributed", "slurm", "resources", "outcome", "plan", "sweep", "cli",
         "errors", "fileio", "log", "preflight", "deepspeed_keys")
# The model's description and cost: what `vitc plan` reads without building a model.
TORCH_FREE_MODEL_FILES = ("models/__init__.py", "models/spec.py", "models/structure.py", "models/cost.py")


def unit_of(module: str) -> str | None:
    """vitc.engine.trainer -> engine; vitc.run -> run; vitc -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "vitc" else None


def imported_modules(path: Path) -> set[str]:
    """Absolute module names `path` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def source_units() -> dict[str, list[Path]]:
    units = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        unit = unit_of(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        if unit is not None:
            units[unit].append(path)
    return units


def package_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for unit, paths in source_units().items():
        for path in paths:
            graph[unit] |= {u for m in imported_modules(path) if (u := unit_of(m)) not in (None, unit)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per strongly connected group of two or more packages (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle_between_packages():
    assert cycles(package_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("library", [
    "torch",
    "deepspeed", "webdataset", "fvcore"])
def test_only_the_packages_in_the_frozen_table_import(library):
    importers = {unit for unit, paths in source_units().items()
                 if any(m.split(".")[0] == library for p in paths for m in imported_modules(p))}
    assert importers <= MAY_IMPORT[library]
    assert not importers & set(LIGHT)


def test_the_model_description_and_its_cost_import_no_torch():
    for name in TORCH_FREE_MODEL_FILES:
        heavy = {m for m in imported_modules(PACKAGE / name) if m.split(".")[0] in MAY_IMPORT}
        assert heavy == set(), name


def test_models_take_plain_arguments_and_never_see_the_config():
    used = {unit_of(m) for p in source_units()["models"] for m in imported_modules(p)} - {None, "models"}
    assert used == {"errors"}


# Runs a `vitc` command line in a fresh interpreter and reports which heavy modules it loaded.
PROBE = """
import contextlib, io, json, sys
from vitc.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": [m for m in ("torch", "deepspeed") if m in sys.modules]}))
"""


def loaded_by(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LOGIN_NODE_COMMANDS = {
    "plan": lambda tmp: ["plan", "vit_c_72gf", "--nodes", "1", "--gpus-per-node", "8"],
    "sweep make": lambda tmp: ["sweep", "make", "configs/sweeps/mini_edf.yaml", str(tmp / "sweep"),
                               "data.train_shards=shards/train", "data.val_shards=shards/val"],
    "slurm submit --dry-run": lambda tmp: ["slurm", "submit", "configs/in1k/vit_c_1gf.yaml", "--dry-run",
                                           f"train.run_dir={tmp / 'run'}"],
}


@pytest.mark.parametrize("command", LOGIN_NODE_COMMANDS)
def test_login_node_commands_load_neither_torch_nor_deepspeed(command, tmp_path):
    outcome = loaded_by(LOGIN_NODE_COMMANDS[command](tmp_path))
    assert outcome == {"code": 0, "loaded": []}


def documented_floors() -> dict[str, int]:
    """docs/architecture.md's floor diagram: package or module -> its floor number (a floor's line
    starts with its number; the names on it end in / or .py)."""
    floors = {}
    diagram = (REPO / "docs" / "architecture.md").read_text().split("```", 2)[1]
    for line in diagram.splitlines():
        words = line.split()
        if words and words[0].isdigit():
            for name in words[1:]:
                if re.fullmatch(r"[a-z_]+(/|\.py)", name):
                    floors[name.rstrip("/").removesuffix(".py")] = int(words[0])
    return floors


def test_every_package_imports_only_from_its_floor_or_below():
    floors = documented_floors()
    graph = package_graph()
    assert set(graph) <= set(floors), f"packages missing from docs/architecture.md: {set(graph) - set(floors)}"
    upward = sorted((unit, dep) for unit, deps in graph.items() for dep in deps if floors[dep] > floors[unit])
    assert upward == []

"""vitc installed from its wheel, as `pip install vitc` would, works from any directory: the files it
reads at run time ship inside the package (vitc/resources) and no command reads the checkout.

The wheel is built offline from a copy of the sources (a stale build/ in the checkout cannot leak
into it) and installed alone into a fresh venv; vitc's dependencies come from the venv running the
tests, through a .pth line, so nothing is downloaded."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding vitc's wheel and nothing else of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "vitc", src / "vitc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # --no-build-isolation: the build uses this venv's setuptools (the `test` extra pins one that
    # builds wheels by itself) instead of downloading one.
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", tmp / "dist", src, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("vitc-*.whl")

    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    # pip runs from this venv but installs into the new one (pip's --python), which sees no vitc yet
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    # The dependencies: this interpreter's site-packages, after the new venv's own. A plain path
    # line, so the .pth files there (the editable install's finder of the checkout) are not run.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    shared = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "vitc_test_dependencies.pth").write_text("".join(f"{p}\n" for p in shared))
    return venv


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A directory unrelated to the checkout, holding a user's copy of the configs."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    return tmp_path


def clean_env(venv: Path) -> dict[str, str]:
    """The user's shell after activating the venv: no PYTHONPATH pointing at a checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}


def test_the_installed_vitc_is_the_wheel_with_every_shipped_file(venv, elsewhere):
    where = run(venv / "bin" / "python", "-c", "import vitc; print(vitc.__file__)", cwd=elsewhere,
                env=clean_env(venv)).stdout.strip()
    package = Path(where).parent
    assert package.is_relative_to(venv), where

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    missing = files(ROOT / "vitc" / "resources") - files(package / "resources")
    assert not missing, f"not in the wheel (pyproject's [tool.setuptools.package-data]): {sorted(missing)}"


COMMANDS = {
    "config show": ["config", "show", "configs/in21k/vit_c_4gf.yaml"],
    "plan": ["plan", "vit_c_72gf", "--nodes", "1", "--gpus-per-node", "8"],
    "plan a config": ["plan", "configs/in21k/vit_c_4gf.yaml", "model.num_classes=21841", "--dataset-size", "14197122",
                      "--nodes", "2"],
    "slurm submit --dry-run": ["slurm", "submit", "configs/in21k/vit_c_4gf.yaml", "--dry-run"],
    "audit": ["audit", "vit_c_4gf", "vit_p_4gf", "--parity"],
    "demo config": ["config", "show", "{resources}/demo/vit_c_tiny.yaml", "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_of_the_installed_vitc_runs_from_any_directory(command, venv, elsewhere):
    resources = next(venv.glob("lib/python*/site-packages/vitc/resources"))
    args = [a.format(resources=resources) for a in COMMANDS[command]]
    out = run(venv / "bin" / "vitc", *args, cwd=elsewhere, env=clean_env(venv)).stdout

    if command == "slurm submit --dry-run":  # the shipped template and launch body, run by the wheel's python
        assert "#SBATCH --nodes=" in out and "vitc launch body" in out
        assert f"{venv / 'bin' / 'python'} -m vitc.cli" in out and f"cd {elsewhere}" in out
    elif command.startswith("plan"):  # the shipped GPU table
        assert "H100 SXM5" in out
    elif command == "audit":
        assert "vit_c_4gf" in out and "vit_p_4gf" in out
    else:
        assert "derived:" in out

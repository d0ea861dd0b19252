"""Files vitc reads at run time, shipped inside the package (so a wheel install works anywhere).

gpus.yaml (the accelerator table), loader_rates.yaml (the loader's measured rates), demo/ (the
demo's configs) and slurm/ (the sbatch templates and their shared launch body).
"""

from importlib.resources import files
from pathlib import Path

# A wheel installs as plain files, so the package's directory is a real path that YAML `_base`
# includes and sbatch templates can be read from.
ROOT = Path(str(files(__name__)))


def resource(name: str) -> Path:
    """The path of one shipped file or folder, e.g. `resource("gpus.yaml")`."""
    return ROOT / name

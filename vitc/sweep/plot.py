"""`vitc sweep plot`: EDF curves of a collected sweep, one per (model, optimizer): PNG and CSV.

Conv-stem models are drawn in one colour family and patchify ones in another; AdamW solid, SGD
dashed, as the paper's Fig. 4-6 compare them. Runs without an outcome (incomplete) are left out;
diverged and failed ones are in the count at 100 % error, so they keep a curve below 1.
"""

import csv
import io
import os
from pathlib import Path

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.sweep.collect import RunResult, read_results
from vitc.sweep.edf import edf, error_thresholds

COLOURS = {"conv": ("tab:blue", "tab:cyan", "tab:purple"), "patchify": ("tab:red", "tab:orange", "tab:brown")}
LINESTYLES = {"adamw": "-", "sgd": "--"}


def curves(results: list[RunResult], thresholds: list[float]) -> dict[str, tuple[RunResult, list[float], int]]:
    """Curve label -> (a run of that curve, EDF values, number of runs counted)."""
    out = {}
    for key in sorted({(r.model, r.optimizer) for r in results}):
        group = [r for r in results if (r.model, r.optimizer) == key and r.error is not None]
        if group:
            out[f"{key[0]} {key[1]}"] = (group[0], edf([r.error for r in group], thresholds), len(group))
    return out


def edf_csv(thresholds: list[float], found: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["error", *(f"{label} (n={n})" for label, (_, _, n) in found.items())])
    for i, e in enumerate(thresholds):
        writer.writerow([e, *(f"{values[i]:.4f}" for _, values, _ in found.values())])
    return out.getvalue()


def plot_edf(sweep_dir: str | Path, out_dir: str | Path | None = None, step: float = 0.5,
             name: str = "edf") -> tuple[Path, Path]:
    """Write <name>.png and <name>.csv (error threshold, EDF of each curve) into `out_dir`
    (default: the sweep directory); returns their paths."""
    results = read_results(sweep_dir)
    thresholds = error_thresholds(step)
    found = curves(results, thresholds)
    if not found:
        raise VitcError(f"{sweep_dir}: no run has a result yet (all incomplete): nothing to plot")
    out_dir = Path(out_dir or sweep_dir)
    csv_path, png_path = out_dir / f"{name}.csv", out_dir / f"{name}.png"
    atomic_write_text(csv_path, edf_csv(thresholds, found))
    where = "/".join(Path(sweep_dir).resolve().parts[-2:])
    _draw(found, thresholds, png_path, f"{sum(n for _, _, n in found.values())} runs of {where}")
    return png_path, csv_path


def _draw(found: dict, thresholds: list[float], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise VitcError("vitc sweep plot needs matplotlib: pip install 'vitc[sweep]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    used = {"conv": 0, "patchify": 0}
    colour_of = {}
    for label, (run, values, n) in found.items():
        if run.model not in colour_of:
            family = COLOURS.get(run.stem, COLOURS["patchify"])
            colour_of[run.model] = family[used.get(run.stem, 0) % len(family)]
            used[run.stem] = used.get(run.stem, 0) + 1
        ax.step(thresholds, values, where="post", color=colour_of[run.model],
                linestyle=LINESTYLES.get(run.optimizer, ":"), label=f"{label} (n={n})")
    first = next((e for i, e in enumerate(thresholds) if any(v[i] > 0 for _, v, _ in found.values())), 0.0)
    ax.set_xlim(max(first - 5.0, 0.0), 100.0)  # start just left of the best run
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("top-1 error (%)")
    ax.set_ylabel("cumulative prob. (fraction of runs with error < e)")
    ax.set_title(f"EDF of top-1 error: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)

"""Sweep figures: `vitc sweep plot` (the EDF of error per (model, optimizer): PNG and CSV) and the
figures of `vitc sweep report` (EDFs of error and Δerror, lr-wd scatter with the good range).

Conv-stem models are drawn in one colour family and patchify ones in another; AdamW solid, SGD
dashed. Both commands count runs by the rules of vitc/sweep/analysis.py (`curves(load_runs(...))`),
so the plot and the report cannot disagree: diverged runs are in at 100 % error (they keep a
curve below 1), crashed runs and runs without an outcome yet are left out.
"""

import csv
import io
import math
from pathlib import Path

import numpy as np

from vitc.errors import VitcError
from vitc.fileio import atomic_output, atomic_write_text
from vitc.sweep.analysis import DIVERGED_ERROR, Curve, curves, load_runs
from vitc.sweep.edf import edf, error_thresholds

COLOURS = {"conv": ("tab:blue", "tab:cyan", "tab:purple"), "patchify": ("tab:red", "tab:orange", "tab:brown")}
LINESTYLES = {"adamw": "-", "sgd": "--"}


def edf_csv(found: list[Curve], thresholds: list[float]) -> str:
    """The EDF of each curve's errors on a grid of error thresholds, one column per curve."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["error", *(f"{c.label} (n={len(c.errors)})" for c in found)])
    columns = [edf(c.errors, thresholds) for c in found]
    for i, e in enumerate(thresholds):
        writer.writerow([e, *(f"{values[i]:.4f}" for values in columns)])
    return out.getvalue()


def plot_edf(sweep_dir: str | Path, out_dir: str | Path | None = None, step: float = 0.5,
             name: str = "edf") -> tuple[Path, Path]:
    """Write <name>.png (the report's EDF of error) and <name>.csv (error threshold, EDF of each
    curve) into `out_dir` (default: the sweep directory); returns their paths."""
    if not (math.isfinite(step) and 0 < step <= 100):
        raise VitcError(f"vitc sweep plot --step: expected an error resolution in percent, > 0 and <= 100, "
                        f"got {step:g}")
    found = [c for c in curves(load_runs(sweep_dir)) if c.errors]
    if not found:
        raise VitcError(f"{sweep_dir}: no run has finished or diverged yet: nothing to plot")
    out_dir = Path(out_dir or sweep_dir)
    csv_path, png_path = out_dir / f"{name}.csv", out_dir / f"{name}.png"
    atomic_write_text(csv_path, edf_csv(found, error_thresholds(step)))
    save_png(edf_figure(found, False), png_path)
    return png_path, csv_path


def save_png(fig, path: Path) -> None:
    """Write the figure to PATH atomically (temp name + rename) and close it."""
    try:
        with atomic_output(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        pyplot().close(fig)


def model_colours(stems: dict[str, str]) -> dict[str, str]:
    """Model label -> colour: conv-stem models from one colour family, patchify ones from another."""
    used, out = {}, {}
    for model, stem in stems.items():
        family = COLOURS.get(stem, COLOURS["patchify"])
        out[model] = family[used.get(stem, 0) % len(family)]
        used[stem] = used.get(stem, 0) + 1
    return out


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display)."""
    try:
        import matplotlib
    except ImportError:
        raise VitcError("vitc sweep plot and report need matplotlib: pip install 'vitc[demo]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def edf_figure(curves: list[Curve], delta: bool):
    """EDF of error (or of Δerror against the model's best run), one panel per optimizer: the
    authors' `plot_edf` (pycls/sweep/plotting.py) with the paper's Δ axis (§5.3)."""
    plt = pyplot()
    optimizers = list(dict.fromkeys(c.optimizer for c in curves))
    values = {c.label: (c.deltas if delta else c.errors) for c in curves}
    finite = [v for c in curves for v, e in zip(values[c.label], c.errors) if e < DIVERGED_ERROR]
    low = 0.0 if delta or not finite else max(min(finite) - 2.0, 0.0)
    high = min(max(finite, default=50.0) + (1.0 if delta else 2.0), 100.0)
    xs = list(np.linspace(low, high, 400))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.0 * len(optimizers), 3.6), sharey=True,
                             squeeze=False)
    colours = model_colours({c.model: c.stem for c in curves})
    for ax, optimizer in zip(axes[0], optimizers):
        for c in (c for c in curves if c.optimizer == optimizer and values[c.label]):
            ax.step(xs, edf(values[c.label], xs), where="post", color=colours[c.model],
                    linestyle=LINESTYLES.get(optimizer, ":"),
                    label=f"{c.model} (n={len(c.errors)}, best {c.errors[0]:.1f})")
        ax.set_xlim(low, high)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(optimizer, fontsize=10)
        ax.set_xlabel("Δtop-1 error against the model's best run (points)" if delta else "top-1 error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("cumulative prob.")
    fig.tight_layout()
    return fig


def lr_wd_figure(curves: list[Curve], ranges: dict[str, dict | None], clip: float = 10.0):
    """(lr, wd) of every run coloured by its Δerror (clipped at `clip` points), one panel per model
    (columns) and optimizer (rows), diverged runs as red crosses, runs without an error as grey
    rings; the dashed box is the good range
    and the black cross its best point (analysis.good_range). The authors' `plot_values_2d`
    colours by rank instead; Δerror keeps a scale in points."""
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    optimizers = list(dict.fromkeys(c.optimizer for c in curves))
    models = list(dict.fromkeys(c.model for c in curves))
    fig, axes = plt.subplots(len(optimizers), len(models), figsize=(2.8 * len(models) + 1.2, 2.6 * len(optimizers)),
                             squeeze=False, layout="constrained")
    scatter = None
    for c in curves:
        ax = axes[optimizers.index(c.optimizer)][models.index(c.model)]
        counted = [r for r in c.runs if r.error is not None and r.error < DIVERGED_ERROR]
        diverged = [r for r in c.runs if r.status == "diverged"]
        scatter = ax.scatter([r.lr for r in counted], [r.weight_decay for r in counted], s=18,
                             c=[min(r.error - c.curve_best, clip) for r in counted], cmap="viridis",
                             vmin=0.0, vmax=clip)
        ax.scatter([r.lr for r in diverged], [r.weight_decay for r in diverged], marker="x", s=18, color="tab:red")
        # runs without an error (crashed, not run yet) as grey rings: where the sweep has no answer,
        # and log axes that always hold a point (a partial sweep's curve may have no result yet)
        uncounted = [r for r in c.runs if r.error is None]
        ax.scatter([r.lr for r in uncounted], [r.weight_decay for r in uncounted], s=18, facecolors="none",
                   edgecolors="tab:gray")
        if (good := ranges.get(c.label)) is not None:
            (lr_lo, lr_mid, lr_hi), (wd_lo, wd_mid, wd_hi) = good["lr"], good["wd"]
            ax.add_patch(plt.Rectangle((10**lr_lo, 10**wd_lo), 10**lr_hi - 10**lr_lo, 10**wd_hi - 10**wd_lo,
                                       fill=False, linestyle="--", color="black"))
            ax.plot([10**lr_mid], [10**wd_mid], marker="+", markersize=12, color="black")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # decades only: minor labels of a narrow range overlap
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(c.label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("lr (at the reference batch)" if c.optimizer == optimizers[-1] else "", fontsize=8)
        ax.set_ylabel("weight decay" if c.model == models[0] else "", fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, shrink=0.9, label=f"Δtop-1 error (clipped at {clip:g})")
    return fig

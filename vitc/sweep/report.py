"""`vitc sweep report`: one self-contained HTML page of a collected sweep, SWEEP/report.html.

The authors' sweep tooling writes such a page (pycls tools/sweep_analyze.py with
pycls/sweep/htmlbook.py): sections of plots embedded in the HTML. Ours holds a summary table per
model and optimizer (runs, crashed, diverged, best and median error, share of runs within 1, 2 and
5 points of the model's best), the EDFs of error and of Δerror, the (lr, wd) scatter and the good
range. Plots are PNGs inside the page (data: URIs) and the style is inline, so the file can be
mailed or archived alone: it references nothing outside itself. Rules: vitc/sweep/analysis.py.
"""

import base64
import html
import io
from pathlib import Path

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.sweep.analysis import WITHIN, Curve, curves, good_range, load_runs, summarize
from vitc.sweep.plot import edf_figure, lr_wd_figure, pyplot

REPORT_HTML = "report.html"
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th { background: #eee; } td.name { text-align: left; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; }
"""


def _img(alt: str, fig) -> str:
    """The figure as an <img> holding its PNG (a data: URI); closes the figure."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    data = base64.b64encode(out.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def summary_table(found: list[Curve]) -> str:
    head = ["runs", "finished", "diverged", "crashed", "no outcome yet", "best error (%)",
            "median error (%)", *(f"Δ&lt;{k:g}" for k in WITHIN)]
    cells = []
    for s in map(summarize, found):
        cells.append([s.runs, s.finished, s.diverged, s.crashed, s.incomplete, _cell(s.best), _cell(s.median),
                      *(f"{w:.0%}" for w in s.within)])
    return _table(head, found, cells)


def range_table(found: list[Curve], ranges: dict) -> str:
    head = [f"{m} {part}" for m in ("lr", "wd") for part in ("low", "best", "high")]
    cells = [["–"] * 6 if (good := ranges.get(c.label)) is None else
             [f"{10**v:.3g}" for m in ("lr", "wd") for v in good[m]] for c in found]
    return _table(head, found, cells)


def _table(head: list[str], found: list[Curve], cells: list[list]) -> str:
    """One row per curve: its model and optimizer, then `cells`."""
    rows = "".join(f'<tr><td class="name">{html.escape(c.model)}</td><td class="name">{html.escape(c.optimizer)}'
                   "</td>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for c, row in zip(found, cells))
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in ["model", "optimizer", *head]) + "</tr>"
            + rows + "</table>")


def render(title: str, found: list[Curve], ranges: dict) -> str:
    """The report page."""
    crashed = [r.id for c in found for r in c.runs if r.status == "failed"]
    parts = [
        f"<h1>Optimizability sweep: {html.escape(title)}</h1>",
        f"<p>{sum(len(c.runs) for c in found)} runs, {len(found)} curves (model × optimizer).</p>",
        "<h2>Summary</h2>", summary_table(found),
        '<p class="note">Error: 100 − the best top-1 of the run\'s EMA model over its evaluations. '
        "Diverged runs count as 100 % error; crashed runs (the process failed after its retries) "
        "and runs without an outcome yet are left out of the curves. Δ: error minus the best error "
        "of the same model with the same optimizer (the paper's §5.3); Δ&lt;k is the share of counted runs (finished and "
        "diverged) within k points of it.</p>",
        "<h2>EDF of top-1 error</h2>", _img("EDF of error", edf_figure(found, False)),
        "<h2>EDF of Δtop-1 error</h2>", _img("EDF of Δerror", edf_figure(found, True)),
        "<h2>Learning rate and weight decay</h2>", _img("lr and wd of every run", lr_wd_figure(found, ranges)),
        "<h3>Good range</h3>", range_table(found, ranges),
        '<p class="note">Where the best runs lie, by the authors\' bootstrap (pycls '
        "sweep/analysis.py get_filters): 2,500 times, the best of a random quarter of the runs; "
        "the range holds the central 95 % of them, best is their median. lr is normalised to the "
        "configs' optim.reference_batch (2048 in the paper's sweep).</p>",
    ]
    if crashed:
        parts += ["<h2>Crashed runs</h2>", "<p>" + ", ".join(html.escape(i) for i in crashed) + "</p>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(sweep_dir: str | Path) -> Path:
    """Write SWEEP/report.html from SWEEP/results.csv; returns its path."""
    sweep_dir = Path(sweep_dir)
    found = curves(load_runs(sweep_dir))
    if not any(c.errors for c in found):
        raise VitcError(f"{sweep_dir}: no run has finished or diverged yet: nothing to report")
    ranges = {c.label: good_range(c.runs) for c in found}
    path = sweep_dir / REPORT_HTML
    atomic_write_text(path, render("/".join(sweep_dir.resolve().parts[-2:]), found, ranges))
    return path

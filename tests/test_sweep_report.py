"""`vitc sweep report`: the errors it counts, its summary, the good range, and one HTML page that
stands alone and renders in a real browser (vitc/sweep/analysis.py, report.py)."""

import csv
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from system_packages import apt_get

from vitc.cli import main
from vitc.errors import VitcError
from vitc.sweep.analysis import curves, good_range, load_runs, summarize
from vitc.sweep.report import write_report

COLUMNS = ["id", "model", "stem", "optimizer", "lr", "weight_decay", "epochs", "seed", "status", "best_ema_top1"]


def write_results(sweep: Path, rows: list[dict]) -> Path:
    """SWEEP/results.csv as `vitc sweep collect` writes it (the columns the report reads)."""
    sweep.mkdir(parents=True, exist_ok=True)
    with open(sweep / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({"epochs": 50, "seed": 0, **row} for row in rows)
    return sweep


def run(model: str, optimizer: str, i: int, status: str, top1: float | str = "", lr: float = 1e-3,
        wd: float = 0.1) -> dict:
    stem = "conv" if model.startswith("vit_c") else "patchify"
    return dict(id=f"{model}-{optimizer}-{i:03d}", model=model, stem=stem, optimizer=optimizer, lr=lr,
                weight_decay=wd, status=status, best_ema_top1=top1)


def paper_shaped_sweep(sweep: Path) -> Path:
    """Two twins, AdamW and SGD, 16 settings each: error grows with the distance of log lr and
    log wd from a best setting; the patchify model diverges at the largest lrs; a few crash."""
    rows = []
    for optimizer, (lr0, lr1), (wd0, wd1) in (("adamw", (2.5e-4, 8e-3), (0.02, 0.8)),
                                              ("sgd", (0.1, 3.2), (4e-6, 1.2e-4))):
        for i in range(16):
            lr = lr0 * (lr1 / lr0) ** ((i * 7 % 16) / 15)
            wd = wd0 * (wd1 / wd0) ** ((i * 5 % 16) / 15)
            distance = math.log10(lr / math.sqrt(lr0 * lr1)) ** 2 + math.log10(wd / math.sqrt(wd0 * wd1)) ** 2
            for model, base, slope in (("vit_p_1gf", 33.0, 12.0), ("vit_c_1gf", 29.0, 4.0)):
                status = "diverged" if model == "vit_p_1gf" and lr > 0.8 * lr1 else "finished"
                status = "failed" if i == 3 and optimizer == "sgd" else status
                top1 = 100.0 - (base + slope * distance) if status == "finished" else ""
                rows.append(run(model, optimizer, i, status, top1, lr, wd))
    return write_results(sweep, rows)


def test_error_is_100_minus_the_best_ema_top1_and_a_diverged_run_counts_as_100(tmp_path):
    sweep = write_results(tmp_path, [run("vit_c_1gf", "adamw", 0, "finished", 71.5),
                                     run("vit_c_1gf", "adamw", 1, "diverged"),
                                     run("vit_c_1gf", "adamw", 2, "failed"),
                                     run("vit_c_1gf", "adamw", 3, "preempted")])

    errors = {r.id[-3:]: r.error for r in load_runs(sweep)}

    assert errors == {"000": pytest.approx(28.5), "001": 100.0, "002": None, "003": None}


def test_the_summary_counts_crashed_runs_apart_from_diverged_ones(tmp_path):
    rows = [run("vit_p_1gf", "sgd", i, "finished", 100 - e) for i, e in enumerate((30.0, 30.5, 31.5, 34.0))]
    rows += [run("vit_p_1gf", "sgd", 4, "diverged"), run("vit_p_1gf", "sgd", 5, "failed"),
             run("vit_p_1gf", "sgd", 6, "max_steps")]
    (curve,) = curves(load_runs(write_results(tmp_path, rows)))

    s = summarize(curve)

    assert (s.runs, s.finished, s.diverged, s.crashed, s.incomplete) == (7, 4, 1, 1, 1)
    assert s.best == pytest.approx(30.0) and s.median == pytest.approx(31.5)  # of 30, 30.5, 31.5, 34, 100
    assert s.within == pytest.approx((2 / 5, 3 / 5, 4 / 5))  # Δ 0, 0.5, 1.5, 4, 70 below 1, 2, 5


def test_delta_error_is_measured_per_model_and_optimizer(tmp_path):
    # the paper's EDFs of Δtop-1 error (§5.3, Figs. 4-5) are per model and optimizer
    pinned = json.loads((Path(__file__).parent / "data/paper_recipes.json").read_text())["code"]["sweep_delta"]
    assert pinned["value"] == "per model and optimizer"
    rows = [run("vit_p_1gf", "adamw", 0, "finished", 70.0), run("vit_p_1gf", "adamw", 1, "finished", 69.0),
            run("vit_p_1gf", "sgd", 0, "finished", 66.0)]
    adamw, sgd = curves(load_runs(write_results(tmp_path, rows)))

    assert adamw.deltas == pytest.approx([0.0, 1.0]) and sgd.deltas == [0.0]


def test_the_good_range_brackets_the_best_setting(tmp_path):
    found = curves(load_runs(paper_shaped_sweep(tmp_path)))
    conv_adamw = next(c for c in found if c.label == "vit_c_1gf adamw")

    good = good_range(conv_adamw.runs)

    low, best, high = good["lr"]
    assert low <= best <= high
    assert low <= math.log10(math.sqrt(2.5e-4 * 8e-3)) + 0.5 and high >= math.log10(math.sqrt(2.5e-4 * 8e-3)) - 0.5
    assert good == good_range(conv_adamw.runs)  # seeded: the same report twice


def test_a_results_table_without_the_ema_column_names_it(tmp_path):
    (tmp_path / "results.csv").write_text("id,model,stem,optimizer,lr,weight_decay,status,top1\n")
    with pytest.raises(VitcError, match="lacks the column.*best_ema_top1"):
        load_runs(tmp_path)


def test_a_sweep_with_no_outcome_yet_has_nothing_to_report(tmp_path):
    sweep = write_results(tmp_path, [run("vit_c_1gf", "adamw", 0, "incomplete")])
    with pytest.raises(VitcError, match="nothing to report"):
        write_report(sweep)


class Resources(HTMLParser):
    """Every URL an HTML page would load: src/href/srcset attributes and CSS url(...)."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "poster") and v]

    def handle_data(self, data):
        self.urls += [part.split(")")[0] for part in data.split("url(")[1:]]


def test_the_report_references_no_external_resource(tmp_path):
    path = write_report(paper_shaped_sweep(tmp_path))

    page = Resources()
    page.feed(path.read_text())

    assert page.tags.count("img") == 3
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert not {"script", "link", "iframe"} & set(page.tags)


def chromium() -> str:
    """Debian's chromium, installed with apt-get when absent and we are root (as
    tests/slurm_cluster.py installs Slurm); else skip, saying why."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("rendering the report needs Debian's chromium package (not installed; installing "
                    "it needs root and apt-get)")
    for step in (["update", "-qq"], ["install", "-y", "-qq", "chromium"]):
        done = apt_get(*step, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"rendering the report needs chromium, and `apt-get {' '.join(step)}` failed: "
                        f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser(tmp_path, capsys):
    browser = chromium()
    sweep = paper_shaped_sweep(tmp_path / "sweep")
    assert main(["sweep", "report", str(sweep)]) == 0
    assert f"wrote {sweep / 'report.html'}" in capsys.readouterr().out

    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,2400", f"--screenshot={shot}", (sweep / "report.html").as_uri()],
                   check=True, capture_output=True)

    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    painted = sum(n for n, rgb in colours if rgb != (255, 255, 255)) / (image.width * image.height)
    assert painted > 0.05 and len(colours) > 100  # text, tables and the plots' colour maps, not a blank page


def test_plot_counts_the_runs_the_report_counts(tmp_path):
    sweep = write_results(tmp_path / "sweep", [run("vit_c_1gf", "adamw", 0, "finished", 70.0),
                                               run("vit_c_1gf", "adamw", 1, "diverged"),
                                               run("vit_c_1gf", "adamw", 2, "failed"),
                                               run("vit_c_1gf", "adamw", 3, "preempted")])

    assert main(["sweep", "plot", str(sweep), "--step", "10"]) == 0

    with open(sweep / "edf.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (curve,) = curves(load_runs(sweep))
    assert list(rows[0])[1:] == [f"vit_c_1gf adamw (n={len(curve.errors)})"] == ["vit_c_1gf adamw (n=2)"]
    assert [row["vit_c_1gf adamw (n=2)"] for row in rows if row["error"] in ("30.0", "40.0", "100.0")] == \
           ["0.0000", "0.5000", "0.5000"]  # the crashed and preempted runs are in neither
    assert (sweep / "edf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

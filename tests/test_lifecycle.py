"""A run's whole life at every ZeRO stage, precision and optimizer, on the CPU (gloo, 2 ranks where
the cell needs them, the tiny conv-stem model, a few steps): train -> periodic checkpoint -> kill -9
-> resume on the same ranks -> resume on another number of ranks -> resume at every other stage ->
export safetensors -> export timm -> `finetune.init_from` fine-tune -> eval. Each step passes or is
refused at once in one line naming what is unsupported and the alternative (`expected`); no step
crashes. Damage cells: resume and export fall back to the newest intact tag in one line, and
nothing is deleted. The numerics of the one precision model (vitc/deepspeed_config.py) are
measured on the cells' own runs.

`.venv/bin/python tests/test_lifecycle.py` rewrites the matrix table in docs/engine.md from
`CELLS` and `expected`; a test checks the two agree.
"""

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from engine_runs import (
    ROOT,
    digit_shards,
    killed_once_saved,
    metrics,
    vitc_on,
    write_config,
)

from vitc.checkpoint import store as checkpoint
from vitc.cli import main
from vitc.weights.export import load_weights

STAGES = (0, 1, 2, 3)
TRAINED_STEPS = 4  # the first invocation is killed once step 2 is saved; the same-ranks resume ends here
DOCS = ROOT / "docs" / "engine.md"
TABLE_START, TABLE_END = "<!-- lifecycle-matrix:start -->", "<!-- lifecycle-matrix:end -->"


@dataclass(frozen=True)
class Cell:
    stage: int
    precision: str  # fp32 | bf16
    optimizer: str  # adamw (fused: torch has a fused AdamW on the CPU) | sgd

    @property
    def name(self) -> str:
        return f"z{self.stage}-{self.precision}-{self.optimizer}"


CELLS = [Cell(s, p, o) for s in STAGES for p in ("fp32", "bf16") for o in ("adamw", "sgd")]
# the representative subset run by default; the rest repeat a layout one of these covers
FAST = {Cell(3, "bf16", "adamw"), Cell(1, "bf16", "adamw"), Cell(0, "fp32", "sgd")}


def expected(cell: Cell, step: str) -> str:
    """'ok', or the words the one-line refusal of `step` contains. Steps: 'other world' (2 -> 1
    rank), 'stage N' (a resume at ZeRO-N), and the others, which always pass."""
    if step.startswith("stage "):
        target = int(step.split()[1])
        if 0 in (cell.stage, target):
            return "DeepSpeed converts checkpoints between ZeRO stages 1-3 only"
        if target == 3 and cell.optimizer == "sgd":
            return "DeepSpeed's ZeRO-3 loads only AdamW's state"
    if step == "other world" and cell.stage == 3 and cell.optimizer == "sgd":
        return "DeepSpeed's ZeRO-3 loads only AdamW's state"
    return "ok"


def other_stages(cell: Cell) -> list[str]:
    return [f"stage {t}" for t in STAGES if t != cell.stage]


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory):
    return digit_shards(digits_folder, tmp_path_factory.mktemp("shards"))


def cell_config(path: Path, shards: Path, cell: Cell, run_dir: Path) -> Path:
    # global batch 8 on 1 or 2 ranks: the same schedule on both; every step an EMA copy (warmup),
    # so the EMA is the weights it averages, bit for bit
    return write_config(path, shards, run_dir,
                        train={"micro_batch": 4, "global_batch": 8, "zero_stage": cell.stage,
                               "precision": cell.precision, "seed": 0},
                        optim={"name": cell.optimizer, "fused": cell.optimizer == "adamw",
                               "ema_alpha": 1e-3, "ema_update_period": 1},
                        schedule={"epochs": 1, "warmup_epochs": 0.9},
                        checkpoint={"every_steps": 2, "keep_last": 10})


def resume_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "resumed tag" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def one_line_refusal(result, words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("vitc: error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@dataclass
class Walk:
    """A cell's run directory after train, kill -9 and the resumes, and what each step gave."""

    cell: Cell
    config: Path
    run_dir: Path
    outcomes: dict[str, str]
    straight_losses: list[float]  # the losses of steps 1..TRAINED_STEPS, for the numerics check


def walk_training(cell: Cell, shards: Path, root: Path) -> Walk:
    run_dir = root / cell.name
    config = cell_config(root / f"{cell.name}.yaml", shards, cell, run_dir)
    outcomes: dict[str, str] = {}
    # train on 2 ranks; kill -9 every process once step 2 is saved (mid-epoch, maybe mid-step)
    marker = checkpoint.checkpoint_root(run_dir) / checkpoint.tag_for(2) / checkpoint.MARKER
    killed_once_saved(2, marker, "train", str(config), f"train.max_steps={TRAINED_STEPS}")
    outcomes["train, kill -9"] = "ok"
    same = vitc_on(2, "train", str(config), f"train.max_steps={TRAINED_STEPS}")
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"world 2→2, stage {cell.stage}→{cell.stage}" in resume_line(same.stderr)
    outcomes["same world"] = "ok"
    by_step = {r["step"]: r["loss"] for r in metrics(run_dir)}  # a resumed step is logged again, equal
    straight = [by_step[s] for s in range(1, TRAINED_STEPS + 1)]
    step = TRAINED_STEPS
    for what, overrides in [("other world", [f"train.zero_stage={cell.stage}"]),
                            *[(s, [f"train.zero_stage={s.split()[1]}"]) for s in other_stages(cell)]]:
        before = checkpoint.newest_checkpoint(run_dir)
        result = vitc_on(1, "train", str(config), *overrides, f"train.max_steps={step + 1}")
        want = expected(cell, what)
        if want == "ok":
            assert result.returncode == 0, f"{cell.name} {what}: {result.stderr[-3000:]}"
            line = resume_line(result.stderr)
            target = int(overrides[0].split("=")[1])
            assert f"world {before.world_size}→1, stage {before.zero_stage}→{target}" in line
            step += 1
            assert checkpoint.newest_checkpoint(run_dir).step == step
        else:
            one_line_refusal(result, want)
            assert checkpoint.newest_checkpoint(run_dir) == before  # nothing saved, nothing lost
        outcomes[what] = want
    return Walk(cell, config, run_dir, outcomes, straight)


_walks: dict[Cell, Walk] = {}


@pytest.fixture(scope="module")
def walked(shards, tmp_path_factory):
    """A cell's walk through training, made once per module and shared by its tests."""
    def get(cell: Cell) -> Walk:
        if cell not in _walks:
            _walks[cell] = walk_training(cell, shards, tmp_path_factory.mktemp(cell.name))
        return _walks[cell]
    return get


def cells(subset=None):
    # the cells outside FAST take 6-18 min each here: `make test-matrix` runs them, `make test` the FAST ones
    return [pytest.param(c, id=c.name, marks=() if c in FAST else (pytest.mark.slow, pytest.mark.matrix))
            for c in CELLS if subset is None or subset(c)]


@pytest.mark.parametrize("cell", cells())
def test_a_run_lives_its_whole_life(cell, walked, tmp_path, capsys):
    walk = walked(cell)
    assert walk.outcomes == {step: expected(cell, step) for step in walk.outcomes}
    # export: the fp32 masters, whole; the EMA (an exact copy every step of this warmup) equals them,
    # so it averaged the fp32 masters, not a rounded working copy
    out = tmp_path / "model.safetensors"
    assert main(["export", str(walk.run_dir), "--out", str(out)]) == 0
    assert main(["export", str(walk.run_dir), "--out", str(tmp_path / "ema.safetensors"), "--ema"]) == 0
    weights, ema = load_weights(out), load_weights(tmp_path / "ema.safetensors")
    assert weights["head.weight"].dtype == torch.float32 and all(v.isfinite().all() for v in weights.values())
    params = [k for k in weights if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(weights[k], ema[k]) for k in params), [k for k in params if not torch.equal(weights[k], ema[k])][:4]
    assert main(["export", str(walk.run_dir), "--out", str(tmp_path / "timm"), "--format", "timm"]) == 0
    assert (tmp_path / "timm" / "config.json").is_file()
    # fine-tune from the run directory at the cell's stage and precision (1 rank), its stem frozen,
    # then evaluate it: the frozen stem is exported as it was given, fp32 bit for bit
    tuned = tmp_path / "finetune"
    result = vitc_on(1, "train", str(walk.config), f"train.run_dir={tuned}", f"finetune.init_from={walk.run_dir}",
                     "train.freeze=[stem]", "train.max_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["export", str(tuned), "--out", str(tmp_path / "tuned.safetensors")]) == 0
    tuned_weights = load_weights(tmp_path / "tuned.safetensors")
    assert all(torch.equal(tuned_weights[k], weights[k]) for k in weights if k.startswith("stem."))
    assert not torch.equal(tuned_weights["head.weight"], weights["head.weight"])
    capsys.readouterr()
    assert main(["eval", str(walk.config), "--weights", str(tmp_path / "tuned.safetensors")]) == 0
    assert "top-1" in capsys.readouterr().out


def test_bf16_trains_the_same_numerics_at_every_zero_stage(walked):
    """The losses of the first TRAINED_STEPS steps of the AdamW bf16 cells (same seed, data, 2
    ranks): autocast over fp32 parameters at every stage, so the stages differ only in summation
    order; and bf16 against fp32 at ZeRO-1 by what bf16 matmuls cost. Measured in docs/engine.md
    ("Numerics")."""
    bf16 = {s: walked(Cell(s, "bf16", "adamw")).straight_losses for s in (1, 3)}
    fp32 = walked(Cell(1, "fp32", "adamw")).straight_losses if Cell(1, "fp32", "adamw") in _walks else None
    assert max(abs(a - b) for a, b in zip(bf16[1], bf16[3])) < 1e-3
    if fp32 is not None:
        assert max(abs(a - b) for a, b in zip(bf16[1], fp32)) < 2 * 2**-6


# ---- damage: resume and export fall back to the newest intact tag, nothing deleted ----------

@pytest.fixture(scope="module")
def saved_twice(shards, tmp_path_factory):
    """A 2-rank ZeRO-2 run with checkpoints at steps 2 and 4."""
    cell = Cell(2, "fp32", "adamw")
    root = tmp_path_factory.mktemp("damage")
    config = cell_config(root / "c.yaml", shards, cell, root / "run")
    result = vitc_on(2, "train", str(config), f"train.max_steps={TRAINED_STEPS}")
    assert result.returncode == 0, result.stderr[-3000:]
    return config, root / "run"


def _cut_short(tag: Path) -> str:
    shutil.copytree(tag, tag.with_name(checkpoint.PARTIAL + checkpoint.tag_for(6)))
    (tag.with_name(checkpoint.PARTIAL + checkpoint.tag_for(6)) / checkpoint.MARKER).unlink()
    return checkpoint.PARTIAL + checkpoint.tag_for(6) + " (a save cut short)"


def _corrupt_marker(tag: Path) -> str:
    (tag / checkpoint.MARKER).write_text('{"tag": "step_0000')
    return "completion marker vitc_complete.json is unreadable"


def _missing_marker(tag: Path) -> str:
    (tag / checkpoint.MARKER).unlink()
    return "no completion marker vitc_complete.json"


def _truncated_model_states(tag: Path) -> str:
    states = tag / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])
    return "has 1000 bytes"


def _missing_rank_file(tag: Path) -> str:
    (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    return "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing"


DAMAGE = {"kill -9 during a save": _cut_short, "corrupt completion marker": _corrupt_marker,
          "missing completion marker": _missing_marker, "truncated model states": _truncated_model_states,
          "missing rank file": _missing_rank_file}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_and_export_fall_back_to_the_newest_intact_tag(damage, saved_twice, tmp_path, capfd):
    config, trained = saved_twice
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    newest = checkpoint.checkpoint_root(run_dir) / checkpoint.tag_for(4)
    why = DAMAGE[damage](newest)
    before = sorted(p.name for p in checkpoint.checkpoint_root(run_dir).iterdir())
    capfd.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.safetensors")]) == 0
    fell_back = json.loads(_metadata(tmp_path / "m.safetensors")["vitc_checkpoint"])
    expect_tag = checkpoint.tag_for(4) if damage == "kill -9 during a save" else checkpoint.tag_for(2)
    assert fell_back["tag"] == expect_tag
    skipped = [line for line in capfd.readouterr().err.splitlines() if "skipped checkpoint" in line]
    assert len(skipped) == 1 and why in skipped[0] and f"using {expect_tag}" in skipped[0]
    if damage in ("kill -9 during a save", "corrupt completion marker"):  # and a real resume, on 2 ranks
        result = vitc_on(2, "train", str(config), f"train.run_dir={run_dir}", "train.max_steps=5")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resumed tag {expect_tag}" in resume_line(result.stderr)
        assert sum("skipped checkpoint" in line for line in result.stderr.splitlines()) == 1
    after = {p.name for p in checkpoint.checkpoint_root(run_dir).iterdir()}
    assert set(before) <= after  # nothing deleted


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


# ---- the table in docs/engine.md --------------------------------------------------------------

COLUMNS = ["train, kill -9", "same world", "other world", "other stages", "export", "export timm",
           "init_from fine-tune", "eval"]


def matrix_table() -> str:
    """The lifecycle matrix as a markdown table, from `CELLS` and `expected`."""
    def mark(cell: Cell, step: str) -> str:
        want = expected(cell, step)
        if want == "ok":
            return "✓"
        return "refused: ZeRO-0 ↔ 1-3" if "ZeRO stages 1-3" in want else "refused: SGD into ZeRO-3"

    rows = ["| ZeRO | precision | optimizer | " + " | ".join(COLUMNS) + " |",
            "|---" * (3 + len(COLUMNS)) + "|"]
    for cell in CELLS:
        stages = ", ".join(f"→{s.split()[1]} {mark(cell, s)}" for s in other_stages(cell))
        steps = {"other world": mark(cell, "other world"), "other stages": stages}
        optimizer = "AdamW (fused)" if cell.optimizer == "adamw" else "SGD"
        rows.append(f"| {cell.stage} | {cell.precision} | {optimizer} | "
                    + " | ".join(steps.get(c, "✓") for c in COLUMNS) + " |")
    return "\n".join(rows)


def _docs_block(text: str) -> str:
    match = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.DOTALL)
    assert match, f"docs/engine.md has no {TABLE_START} ... {TABLE_END} block"
    return match.group(1)


def test_the_matrix_in_the_docs_is_the_one_tested():
    assert _docs_block(DOCS.read_text()) == matrix_table(), "run `.venv/bin/python tests/test_lifecycle.py`"


if __name__ == "__main__":  # rewrite the table in docs/engine.md
    text = DOCS.read_text()
    old = f"{TABLE_START}\n{_docs_block(text)}\n{TABLE_END}"
    DOCS.write_text(text.replace(old, f"{TABLE_START}\n{matrix_table()}\n{TABLE_END}"))
    print(f"wrote the lifecycle matrix into {DOCS}", file=sys.stderr)


# ---- the pieces the matrix cannot show on a CPU -------------------------------------------------

@pytest.mark.parametrize("error", ["ENOSYS", "ENOLCK"])
def test_without_posix_locks_the_run_directory_is_locked_by_an_exclusive_file(error, tmp_path, monkeypatch, caplog):
    import errno
    import fcntl
    import os
    import socket

    from vitc.checkpoint.lock import HELD_FILE, run_lock
    from vitc.errors import VitcError

    def unsupported(*_):  # what Lustre and NFS mounts without lock support answer
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    monkeypatch.setattr(fcntl, "lockf", unsupported)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    held = tmp_path / "run" / HELD_FILE
    with run_lock(tmp_path / "run"):
        assert json.loads(held.read_text())["pid"] == os.getpid()
        with pytest.raises(VitcError, match=f"pid {os.getpid()}.*remove the lock file"), run_lock(tmp_path / "run"):
            pass
    assert not held.exists()  # released
    # a holder killed with -9 left its file: a pid that no longer runs here, or the same Slurm job
    gone = {"host": socket.gethostname(), "pid": 2**22 + 12345, "job": None}
    for stale, env in [(gone, None), ({**gone, "host": "elsewhere", "job": "77"}, "77")]:
        held.write_text(json.dumps(stale))
        if env:
            monkeypatch.setenv("SLURM_JOB_ID", env)
        with run_lock(tmp_path / "run"):
            assert json.loads(held.read_text())["pid"] == os.getpid()
    assert sum("taking over the lock" in r.getMessage() for r in caplog.records) == 2
    held.write_text(json.dumps({**gone, "host": "elsewhere", "job": "78"}))  # may still run: refused
    with pytest.raises(VitcError, match="host elsewhere"), run_lock(tmp_path / "run"):
        pass


def test_fp16_at_zero_0_is_autocast_over_fp32_parameters_as_every_precision_at_every_stage():
    from deepspeed.runtime.config import DeepSpeedConfig

    from vitc.config import load_config
    from vitc.deepspeed_config import deepspeed_config
    from vitc.run import resolve_run

    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for stage in STAGES:
            cfg = load_config(ROOT / "vitc/resources/demo/vit_c_tiny.yaml",
                              [f"train.precision={precision}", f"train.zero_stage={stage}", "model.num_classes=10"])
            ds = DeepSpeedConfig(deepspeed_config(resolve_run(cfg, 1, "gpu", shards=())))
            # parameters stay fp32 (DeepSpeed's fp16/bf16 modes off): DeepSpeed's ZeRO-0 sanity check
            # (engine.py `_do_optimizer_sanity_check`) then has fp32 model and accumulation dtypes,
            # where fp16 parameters with fp32 accumulation crashed deepspeed.initialize
            assert not ds.float16_config.enabled and not ds.bfloat16_config.enabled
            assert ds.torch_autocast_enabled and ds.torch_autocast_dtype == dtype
            assert ds.torch_autocast_lower_precision_safe_modules == []  # fp32 communication
            assert ds.grad_accum_dtype == "fp32" and ds.communication_data_type == torch.float32


@pytest.mark.parametrize("fused", [True, False])
def test_after_a_load_every_parameter_has_its_own_step_where_its_optimizer_wants_it(fused):
    from vitc.engine.resume import steps_per_parameter

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], fused=fused or None)
    shared = torch.tensor(5.0)  # what DeepSpeed's ZeRO-3 universal load sets for every group
    for p in params:
        optimizer.state[p] = {"step": shared, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        p.grad = torch.ones_like(p)
    steps_per_parameter(optimizer)
    optimizer.step()  # torch's fused AdamW runs on the CPU in this torch
    assert [float(optimizer.state[p]["step"]) for p in params] == [6.0, 6.0]  # not 7: no shared counter
    assert all(optimizer.state[p]["step"].device == p.device for p in params)

"""`vitc sweep make`: a sweep spec (YAML) -> one run config per sampled setting, in a sweep directory.

A spec (configs/sweeps/*.yaml) names the models to compare (run configs, one EDF curve each per
optimizer), the optimizers with log-uniform lr and weight-decay ranges, the schedule lengths to
draw from, how many settings to sample per optimizer, and the seed. The same sampled settings are
given to every model (paired sampling): the curves then differ only by the model, which makes a
small sweep's comparison less noisy. Sampling uses only the spec's seed, so `make` is reproducible.

The sweep directory holds runs.csv (one row per run), configs/<id>.yaml and, once trained,
runs/<id>/. A row gives the run's id, model, stem, optimizer, `lr` and `weight_decay` as sampled,
epochs, seed, the run's `global_batch` and `scaled_lr`, and its config path. `lr` is normalised to
the config's `optim.reference_batch` (the paper: "All lr values are normalized w.r.t. a minibatch
size of 2048", Appendix E) and becomes `optim.base_lr`; `scaled_lr` is what the run trains with at
its own global batch (vitc/run.py `scaled_lr`, the trainer's rule), so a run at batch 512 shows a quarter.
"""

import csv
import io
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vitc.config import dump_config, load_config, model_spec, read_yaml, save_config
from vitc.errors import VitcError, did_you_mean
from vitc.fileio import atomic_write_text
from vitc.run import resolve_run
from vitc.schema import Config

RUNS_CSV = "runs.csv"
RESULTS_CSV = "results.csv"  # written by `vitc sweep collect` (vitc/sweep/collect.py)
SPEC_KEYS = ("seed", "samples", "models", "optimizers", "epochs", "overrides")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class SweepSpec:
    seed: int
    samples: int  # settings sampled per optimizer; every model trains each of them
    models: dict[str, Path]  # curve label -> run config
    optimizers: dict[str, dict[str, tuple[float, float]]]  # name -> {lr: (lo, hi), weight_decay: (lo, hi)}
    epochs: list[int]  # schedule lengths, drawn uniformly
    overrides: list[str]  # key=value applied to every run


@dataclass(frozen=True)
class RunSetting:
    """A model and the setting sampled for it: what identifies a run in every sweep table."""

    id: str
    model: str
    stem: str
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    seed: int


@dataclass(frozen=True)
class RunPlan(RunSetting):
    """One run of the sweep: a model trained with one sampled setting."""

    global_batch: int  # images per optimizer step (`global_batch` below)
    scaled_lr: float  # lr × the batch scaling: the peak lr the run trains with
    config: str  # path relative to the sweep directory


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; model config paths are relative to the spec file."""
    path = Path(path)
    data = read_yaml(path, "sweep spec")
    if not isinstance(data, dict):
        raise VitcError(f"{path}: expected a mapping of {', '.join(SPEC_KEYS)}")
    for key in data:
        if key not in SPEC_KEYS:
            raise VitcError(f"{path}: unknown key '{key}'{did_you_mean(key, SPEC_KEYS)}; "
                            f"a sweep spec has {', '.join(SPEC_KEYS)}")
    seed, samples = _int(data, "seed", path, 0), _int(data, "samples", path, 1)
    models = data.get("models")
    if not isinstance(models, dict) or not models or not all(isinstance(v, str) for v in models.values()):
        raise VitcError(f"{path}: 'models' must map curve labels to run config paths")
    optimizers = {name: _ranges(name, value, path) for name, value in _mapping(data, "optimizers", path).items()}
    epochs = data.get("epochs")
    if not isinstance(epochs, list) or not epochs or not all(isinstance(e, int) and e > 0 for e in epochs):
        raise VitcError(f"{path}: 'epochs' must be a non-empty list of positive integers, got {epochs!r}")
    overrides = data.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise VitcError(f"{path}: 'overrides' must be a list of key=value strings")
    return SweepSpec(seed, samples, {k: path.parent / v for k, v in models.items()}, optimizers,
                     epochs, overrides)


def _int(data: dict, key: str, path: Path, minimum: int) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise VitcError(f"{path}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _mapping(data: dict, key: str, path: Path) -> dict:
    value = data.get(key)
    if not isinstance(value, dict) or not value:
        raise VitcError(f"{path}: '{key}' must be a non-empty mapping")
    return value


def _ranges(name: str, value, path: Path) -> dict[str, tuple[float, float]]:
    if name not in OPTIMIZERS:
        raise VitcError(f"{path}: optimizer '{name}'{did_you_mean(name, OPTIMIZERS)}: expected one "
                        f"of {', '.join(OPTIMIZERS)}")
    if not isinstance(value, dict) or set(value) != {"lr", "weight_decay"}:
        raise VitcError(f"{path}: optimizers.{name} must give exactly lr: [low, high] and "
                        "weight_decay: [low, high]")
    out = {}
    for key, bounds in value.items():
        ok = isinstance(bounds, list) and len(bounds) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        if not ok or not 0 < bounds[0] <= bounds[1]:
            raise VitcError(f"{path}: optimizers.{name}.{key} must be [low, high] with "
                            f"0 < low <= high (sampled log-uniformly), got {bounds!r}")
        out[key] = (float(bounds[0]), float(bounds[1]))
    return out


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # 4 significant digits: readable configs and CSVs; far finer than the sweep's resolution
    return float(f"{math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))):.4g}")


def sample_runs(spec: SweepSpec, stems: dict[str, str]) -> list[RunSetting]:
    """Every run of the sweep, drawn from `spec.seed` alone (reproducible). `stems` gives each
    model label's stem (conv / patchify) for the plot."""
    rng = np.random.default_rng(spec.seed)
    runs = []
    for optimizer, ranges in spec.optimizers.items():
        for i in range(spec.samples):
            lr, wd = _log_uniform(rng, ranges["lr"]), _log_uniform(rng, ranges["weight_decay"])
            epochs = int(rng.choice(spec.epochs))
            seed = int(rng.integers(0, 2**31 - 1))
            for model in spec.models:
                runs.append(RunSetting(f"{model}-{optimizer}-{i:03d}", model, stems[model], optimizer,
                                       lr, wd, epochs, seed))
    return runs


def plan_run(setting: RunSetting, cfg: Config) -> RunPlan:
    """The runs.csv row of `setting`, whose config is `cfg`: its global batch and lr as the trainer
    resolves them (vitc.run) on the ranks `vitc sweep run --slurm` starts for it
    (`slurm.world_size`). A local `vitc sweep run` trains each run in one process: give such
    sweeps slurm.gpus_per_node=0 and slurm.nodes=1 to keep runs.csv true."""
    run = resolve_run(cfg, cfg.slurm.world_size, shards=(), count_classes=False)  # data may live elsewhere
    return RunPlan(**asdict(setting), global_batch=run.global_batch, scaled_lr=run.lr,
                   config=f"configs/{setting.id}.yaml")


def run_config(spec: SweepSpec, setting: RunSetting, sweep_dir: Path, overrides: list[str] = ()) -> Config:
    """The config of one run: the model's config, the spec's and the caller's overrides, then the
    sampled setting (which wins) and the run directory inside the sweep."""
    sampled = [f"optim.name={setting.optimizer}", f"optim.base_lr={setting.lr}",
               f"optim.weight_decay={setting.weight_decay}", f"schedule.epochs={setting.epochs}",
               f"train.seed={setting.seed}", f"data.seed={setting.seed}",
               f"train.run_dir={sweep_dir / 'runs' / setting.id}"]
    cfg = load_config(spec.models[setting.model], [*spec.overrides, *overrides, *sampled])
    if cfg.schedule.warmup_epochs > setting.epochs:
        raise VitcError(f"sweep: schedule.warmup_epochs={cfg.schedule.warmup_epochs} exceeds the "
                        f"sampled schedule of {setting.epochs} epochs; lower it in the spec's overrides")
    if not cfg.data.val_shards:
        raise VitcError(f"sweep: {spec.models[setting.model]} has no data.val_shards: a sweep run's "
                        "result is its top-1 error on them")
    return cfg


def make_sweep(spec_path: str | Path, sweep_dir: str | Path, overrides: list[str] = (),
               force: bool = False) -> list[RunPlan]:
    """Write configs/<id>.yaml and runs.csv into `sweep_dir`. Re-making the same sweep is a no-op.
    A re-make that would change a run's config (other overrides, another spec) is refused, since
    `vitc sweep run` would then skip runs trained under the old settings and report their results
    as the new ones'; `force` re-makes it and drops the changed runs' outputs and results."""

    spec, sweep_dir = load_spec(spec_path), Path(sweep_dir).resolve()
    stems = {label: model_spec(load_config(path, list(spec.overrides)).model, 1).stem
             for label, path in spec.models.items()}
    settings = sample_runs(spec, stems)
    configs = {s.id: run_config(spec, s, sweep_dir, list(overrides)) for s in settings}
    runs = [plan_run(s, configs[s.id]) for s in settings]
    check_sweep_requirements(configs)  # before anything is written
    changed = changed_runs(sweep_dir, runs, configs)
    if changed and not force:
        raise VitcError(f"{sweep_dir} was made with other settings: run {changed[0]} would change "
                        f"({len(changed)} run(s) in all, whose results would no longer match): choose a "
                        "new directory, or pass --force to re-make it and drop those runs' outputs and results")
    drop_runs(sweep_dir, changed)
    for plan in runs:
        save_config(configs[plan.id], sweep_dir / plan.config)
    atomic_write_text(sweep_dir / RUNS_CSV, runs_table(runs))  # last: a directory with runs.csv has all its configs
    return runs


def check_sweep_requirements(configs: dict[str, Config]) -> None:
    """A sweep's error is its EMA model's best evaluation (vitc/sweep/analysis.py): every run must
    keep an EMA and evaluate it, or `vitc sweep collect` refuses the sweep after it was trained."""
    for run_id, cfg in configs.items():
        if cfg.optim.ema_alpha <= 0:
            raise VitcError(f"sweep run {run_id}: optim.ema_alpha is {cfg.optim.ema_alpha:g}, but a sweep's "
                            "error is its EMA model's: set optim.ema_alpha > 0 (e.g. 1e-5) in the spec's "
                            "overrides or the model configs")
        if cfg.eval.every_epochs == 0 or cfg.data.val_shards is None:
            raise VitcError(f"sweep run {run_id}: the EMA model is never evaluated (eval.every_epochs="
                            f"{cfg.eval.every_epochs}, data.val_shards={cfg.data.val_shards}): a sweep's "
                            "error is its EMA model's best evaluation")


def changed_runs(sweep_dir: Path, runs: list[RunPlan], configs: dict[str, Config]) -> list[str]:
    """Ids of the runs already in `sweep_dir` whose config would change, or which the re-made
    sweep no longer has."""
    changed = [p.id for p in runs if (sweep_dir / p.config).is_file()
               and (sweep_dir / p.config).read_text() != dump_config(configs[p.id])]
    if (sweep_dir / RUNS_CSV).is_file():
        kept = {p.id for p in runs}
        changed += [r["id"] for r in read_table(sweep_dir / RUNS_CSV, ("id",), "", "re-make the sweep "
                                                "in a new directory") if r["id"] not in kept]
    return changed


def drop_runs(sweep_dir: Path, ids: list[str]) -> None:
    """Remove runs/<id>, configs/<id>.yaml and their rows of results.csv."""
    if not ids:
        return
    for run_id in ids:
        shutil.rmtree(sweep_dir / "runs" / run_id, ignore_errors=True)
        (sweep_dir / "configs" / f"{run_id}.yaml").unlink(missing_ok=True)
    results = sweep_dir / RESULTS_CSV
    if results.is_file():
        with open(results, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r["id"] not in ids]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(results, out.getvalue())


def runs_table(runs: list[RunPlan]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(RunPlan.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(plan) for plan in runs)
    return out.getvalue()


def read_table(path: Path, columns, not_found: str, remedy: str) -> list[dict[str, str]]:
    """The rows of a sweep's CSV table; a missing file or column is a VitcError saying what to do."""
    if not path.is_file():
        raise VitcError(f"{path} not found: {not_found}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise VitcError(f"{path} lacks the column(s) {', '.join(missing)}: {remedy}")
    return rows


def read_runs(sweep_dir: str | Path) -> list[RunPlan]:
    """The runs of a sweep directory made by `vitc sweep make`."""
    rows = read_table(Path(sweep_dir) / RUNS_CSV, RunPlan.__dataclass_fields__,
                      f"make the sweep first with `vitc sweep make SPEC {sweep_dir}`",
                      "made by an older vitc? re-make the sweep in a new directory")
    types = {"lr": float, "weight_decay": float, "epochs": int, "seed": int, "global_batch": int,
             "scaled_lr": float}
    return [RunPlan(**{k: types.get(k, str)(v) for k, v in row.items()}) for row in rows]

"""`vitc pipeline`: pretrain -> export -> finetune -> export -> eval, one resumable chain
(the paper's ImageNet-21k -> ImageNet-1k protocol, Table 2).

All stages live in one run directory:

    RUN/pretrain/                  the pretraining run (checkpoints, metrics, config.yaml)
    RUN/pretrain.safetensors       its exported weights, and RUN/pretrain.classes.json its class map
    RUN/pretrain.ema.safetensors   its EMA weights (when the run keeps an EMA: optim.ema_alpha > 0)
    RUN/finetune/                  the finetuning run, initialised from RUN/pretrain.safetensors
    RUN/finetune.safetensors       its exported weights, RUN/finetune.ema.safetensors its EMA's
    RUN/eval.json                  top-1/top-5 on the finetune eval data of the finetuned EMA
                                   weights (top level: the number the paper reports) and of the
                                   raw weights beside them (`raw`)
    RUN/pretrain.yaml, RUN/finetune.yaml   the resolved config each training stage ran with
    RUN/stages/<stage>.json        completion markers

The paper evaluates the EMA of the weights in all its experiments ("For inference, we use an
exponential moving average (EMA) of the model weights", §5.4): with an EMA, eval.json's top-level
top1/top5 are the EMA model's, and `raw` holds the raw weights' result; without one (ema_alpha 0)
the top level is the raw weights' and `ema` is null. The finetuning starts from the raw pretrained
weights: the authors' pycls loads TRAIN.WEIGHTS' model_state into the model (and the saved EMA
into its EMA, which vitc does not: its finetuning EMA starts from the model).

A stage writes its marker atomically after its outputs; a later invocation skips every stage whose
marker and outputs exist, after checking the marker was written for the same config (a changed
config is an error, not a silent reuse). A training stage is complete when its run's
outcome.json says `finished`; a stage that is cut short (preemption, train.max_steps, a kill) has
no marker: re-running resumes it, the training stages from their newest checkpoint.
Running a stage deletes the markers of the stages after it, which depend on its output.

Under torchrun or srun every rank runs the pipeline: training and evaluation are collective;
export and marker files are rank 0's, the other ranks wait for the export marker.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vitc.config import config_to_dict, load_config, save_config
from vitc.distributed.env import DistEnv, discover
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.outcome import FAILURES
from vitc.schema import Config

log = logging.getLogger(__name__)

STAGES = ("pretrain", "export_pretrain", "finetune", "export_finetune", "eval")
# Override prefixes that route a key=value to one stage's config; unprefixed ones go to both.
PREFIXES = ("pretrain:", "finetune:")


@dataclass
class PipelineResult:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the chain stopped early (e.g. "pretrain: preempted")
    eval: dict | None = None

    def describe(self) -> str:
        lines = [f"{self.run_dir}: ran {', '.join(self.ran) or 'nothing'}; "
                 f"skipped (complete) {', '.join(self.skipped) or 'nothing'}"]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}; re-run the same command to resume")
        if self.eval:
            which = "EMA" if self.eval.get("reported") == "ema" else "raw"
            lines.append(f"finetuned ({which} weights) top-1 {self.eval['top1']:.2f}%  "
                         f"top-5 {self.eval['top5']:.2f}%  ({self.eval['count']} images) -> "
                         f"{self.run_dir / 'eval.json'}")
            if self.eval.get("reported") == "ema":
                raw = self.eval["raw"]
                lines.append(f"finetuned (raw weights) top-1 {raw['top1']:.2f}%  top-5 {raw['top5']:.2f}%")
        return "\n".join(lines)


@dataclass(frozen=True)
class Layout:
    """Paths of one pipeline run directory."""

    root: Path
    ema_stages: frozenset[str] = frozenset()  # training stages whose run keeps an EMA

    def run(self, stage: str) -> Path:
        return self.root / stage

    def weights(self, stage: str, ema: bool = False) -> Path:
        return self.root / f"{stage}{'.ema' if ema else ''}.safetensors"

    def exported(self, stage: str) -> list[Path]:
        """The weights files the export of `stage` writes: raw, and the EMA's when it has one."""
        return [self.weights(stage)] + ([self.weights(stage, ema=True)] if stage in self.ema_stages else [])

    @property
    def classes(self) -> Path:
        return self.root / "pretrain.classes.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def outputs(self, stage: str) -> list[Path]:
        return {"pretrain": [self.run("pretrain")], "finetune": [self.run("finetune")],
                "export_pretrain": [*self.exported("pretrain"), self.classes],
                "export_finetune": self.exported("finetune"), "eval": [self.eval]}[stage]


def stage_configs(pretrain_config: str, finetune_config: str, overrides: list[str],
                  layout: Layout) -> tuple[Config, Config]:
    """The two training configs: overrides routed by prefix, run directories and the finetune's
    init_from (the exported pretrained weights) and class map set by the pipeline."""
    common = [o for o in overrides if not o.startswith(PREFIXES)]
    for item in overrides:
        if item.partition("=")[0].split(":")[-1].strip() == "train.run_dir":
            raise VitcError(f"override '{item}': the pipeline places its runs in the run directory; "
                            "choose it with --run-dir")
    own = {p: [o[len(p):] for o in overrides if o.startswith(p)] for p in PREFIXES}
    pre = load_config(pretrain_config, [*common, *own["pretrain:"], f"train.run_dir={layout.run('pretrain')}"])
    ft = load_config(finetune_config, [*common, *own["finetune:"], f"train.run_dir={layout.run('finetune')}",
                                       f"finetune.init_from={layout.weights('pretrain')}"])
    if ft.finetune.head == "map" and not ft.finetune.source_classes:
        ft = replace(ft, finetune=replace(ft.finetune, source_classes=str(layout.classes)))
    return pre, ft


def run_pipeline(pretrain_config: str, finetune_config: str, run_dir: str, overrides: list[str] = (),
                 dist: DistEnv | None = None) -> PipelineResult:
    """Run (or resume) the chain in `run_dir`. Every rank of the job calls this."""
    dist = discover() if dist is None else dist
    layout = Layout(Path(run_dir))
    pre, ft = stage_configs(pretrain_config, finetune_config, list(overrides), layout)
    layout = replace(layout, ema_stages=frozenset(s for s, c in (("pretrain", pre), ("finetune", ft))
                                                  if c.optim.ema_alpha > 0))
    result = PipelineResult(layout.root)
    identity = {"pretrain": config_to_dict(pre), "finetune": config_to_dict(ft),
                "export_pretrain": {"run": str(layout.run("pretrain"))},
                "export_finetune": {"run": str(layout.run("finetune"))},
                "eval": {"config": config_to_dict(ft), "weights": [str(p) for p in layout.exported("finetune")]}}
    actions: dict[str, Callable[[], str | None]] = {
        "pretrain": lambda: _train_stage(layout, "pretrain", pre, dist),
        "export_pretrain": lambda: _export_stage(layout, "pretrain", pre, dist),
        "finetune": lambda: _train_stage(layout, "finetune", ft, dist),
        "export_finetune": lambda: _export_stage(layout, "finetune", ft, dist),
        "eval": lambda: _eval_stage(layout, ft, dist, result),
    }
    for i, stage in enumerate(STAGES):
        if is_complete(layout, stage, identity[stage]):
            log.info("pipeline: %s is complete (%s), skipped", stage, layout.marker(stage))
            result.skipped.append(stage)
            continue
        if dist.is_main:
            for later in STAGES[i + 1:]:  # they were made from the output this stage replaces
                layout.marker(later).unlink(missing_ok=True)
        log.info("pipeline: running %s", stage)
        stopped = actions[stage]()
        if stopped:
            result.stopped = f"{stage}: {stopped}"
            return result
        if dist.is_main:
            write_marker(layout, stage, identity[stage])
        result.ran.append(stage)
    if result.eval is None and layout.eval.is_file():
        result.eval = json.loads(layout.eval.read_text())
    return result


def is_complete(layout: Layout, stage: str, identity: dict) -> bool:
    """The stage's marker and outputs exist; a marker written for another config is an error."""
    marker = layout.marker(stage)
    if not marker.is_file() or not all(p.exists() for p in layout.outputs(stage)):
        return False
    recorded = json.loads(marker.read_text())["identity"]
    if recorded != identity:
        changed = _changed_keys(recorded, identity)
        raise VitcError(f"pipeline stage '{stage}' in {layout.root} was completed with another "
                        f"config (changed: {', '.join(changed[:6]) or '?'}); use a new --run-dir, "
                        f"or delete {marker} and the stage's output to redo it")
    return True


def write_marker(layout: Layout, stage: str, identity: dict) -> None:
    atomic_write_text(layout.marker(stage), json.dumps(
        {"stage": stage, "outputs": [str(p) for p in layout.outputs(stage)],
         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "identity": identity}, indent=1) + "\n")


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _train_stage(layout: Layout, stage: str, cfg: Config, dist: DistEnv) -> str | None:
    """`vitc train` on the stage's config in a child process (vitc/pipelines/train_process.py says
    why); None when its schedule is complete, else why it stopped, from the run's outcome."""
    from vitc.pipelines.train_process import train_in_subprocess

    config_path = layout.root / f"{stage}.yaml"
    save_config(cfg, config_path)
    outcome = train_in_subprocess(config_path, layout.run(stage), is_main=dist.is_main)
    if outcome.status in FAILURES:
        raise VitcError(f"pipeline stage '{stage}': `vitc train {config_path}` {outcome.status}: "
                        f"{outcome.error}")
    if outcome.status == "finished":
        return None
    return f"{outcome.status} at step {outcome.step}, before the end of the schedule"


def _export_stage(layout: Layout, stage: str, cfg: Config, dist: DistEnv) -> None:
    """Rank 0 exports `stage`'s run (the pretraining's also with its class map, for
    finetune.head=map); the other ranks wait until rank 0's marker says the files are complete."""
    if not dist.is_main:
        return _wait_for(layout.marker(f"export_{stage}"), cfg.checkpoint.save_timeout_min * 60)
    from vitc.weights.export import export_weights

    export_weights(layout.run(stage), layout.weights(stage))
    if stage in layout.ema_stages:
        export_weights(layout.run(stage), layout.weights(stage, ema=True), ema=True)
    if stage == "pretrain":
        from vitc.data.shards.manifest import resolve_shards

        classes = resolve_shards(cfg.data.train_shards, cfg.data.train_manifest, "train_shards")[1].classes
        atomic_write_text(layout.classes, json.dumps(classes, indent=1) + "\n")
    return None


def _eval_stage(layout: Layout, ft: Config, dist: DistEnv, result: PipelineResult) -> None:
    """Evaluate the finetuned raw weights and, when the run keeps one, its EMA (the reported
    number, the top level of eval.json)."""
    from vitc.engine.evaluate import evaluate_weights

    found = {}
    for ema in (False, True) if "finetune" in layout.ema_stages else (False,):
        weights = str(layout.weights("finetune", ema=ema))
        accuracy = evaluate_weights(replace(ft, eval=replace(ft.eval, weights=weights)), dist)
        found["ema" if ema else "raw"] = {"top1": accuracy.top1, "top5": accuracy.top5,
                                          "count": accuracy.count, "weights": weights}
    reported = found.get("ema", found["raw"])
    result.eval = {**reported, "reported": "ema" if "ema" in found else "raw",
                   "ema": found.get("ema"), "raw": found["raw"]}
    if dist.is_main:
        atomic_write_text(layout.eval, json.dumps(result.eval, indent=1) + "\n")
    return None


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise VitcError(f"waited {timeout_s:.0f} s for rank 0 to write {path}")
        time.sleep(1.0)

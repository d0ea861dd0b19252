"""`vitc audit`: resolve the models named, count them twice (fvcore and analytic), report."""

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vitc.audit.flops import traced_cost
from vitc.audit.parity import ParityResult
from vitc.config import load_config, model_spec
from vitc.errors import VitcError
from vitc.models.cost import model_cost
from vitc.models.spec import MODELS, PAPER_MODELS, ViTSpec, twin_name
from vitc.run import resolve_run

# fvcore and the per-module formulas are independent counts of one convention; they must agree.
ANALYTIC_AGREEMENT = 0.01
TARGET_GROUPS = {"all": tuple(MODELS), "paper": PAPER_MODELS}


@dataclass(frozen=True)
class AuditRow:
    name: str
    stem: str
    depth: int
    width: int
    resolution: int
    gflops: float
    mparams: float
    macts: float
    analytic_gflops: float
    skipped_ops: dict[str, int]


def resolve_targets(targets: list[str], overrides: list[str], resolution: int | None,
                    num_classes: int | None) -> list[tuple[ViTSpec, float]]:
    """(spec, parity tolerance) for each registry name, group name or YAML path in `targets`."""
    extra = [*overrides]
    if resolution is not None:
        extra.append(f"model.image_size={resolution}")
    if num_classes is not None:
        extra.append(f"model.num_classes={num_classes}")
    out = []
    for target in [t for name in targets for t in TARGET_GROUPS.get(name, (name,))]:
        if target.endswith((".yaml", ".yml")) or Path(target).is_file():
            cfg = load_config(target, extra)
        else:
            cfg = load_config(None, [f"model.name={target}", *extra])
        out.append((_model_of(cfg, target), cfg.audit.parity_tolerance))
    return out


def _model_of(cfg, target: str) -> ViTSpec:
    """The model the trainer builds for `cfg` (vitc.run): for `model.num_classes: auto`, with the
    training manifest's class count."""
    try:
        run = resolve_run(cfg, 1, shards=())
    except VitcError as e:
        if cfg.model.num_classes != "auto":
            raise
        raise VitcError(f"{target}: model.num_classes is 'auto' and the training manifest cannot be "
                        f"read ({e}); pass --num-classes K to audit without the data") from None
    if run.model is None:
        raise VitcError(f"{target}: model.num_classes is 'auto' and the config names no training "
                        "shards to count classes in; pass --num-classes K")
    return run.model


def audit_row(spec: ViTSpec) -> AuditRow:
    traced, analytic = traced_cost(spec), model_cost(spec)
    if abs(traced.flops - analytic.flops) > ANALYTIC_AGREEMENT * analytic.flops:
        raise VitcError(f"model '{spec.name}': fvcore counts {traced.flops / 1e9:.3f} GF but the "
                        f"per-module formulas give {analytic.flops / 1e9:.3f} GF (> 1 % apart)")
    return AuditRow(spec.name, spec.stem, spec.depth, spec.width, spec.image_size,
                    traced.flops / 1e9, traced.params / 1e6, traced.acts / 1e6,
                    analytic.flops / 1e9, traced.skipped)


def parity_pairs(specs: list[tuple[ViTSpec, float]]) -> list[tuple[ViTSpec, ViTSpec, float]]:
    """(conv, patchify, tolerance): two models named are checked against each other; otherwise
    each conv-stem model is paired with its registered patchify twin."""
    if len(specs) == 2:
        (a, tol), (b, _) = specs
        return [(a, b, tol) if a.stem == "conv" or b.stem != "conv" else (b, a, tol)]
    pairs = []
    for spec, tol in specs:
        if spec.stem != "conv":
            continue
        base = spec.name.split("[", 1)[0]
        twin = twin_name(base)
        if twin is None:
            raise VitcError(f"--parity: model '{spec.name}' has no registered patchify twin; "
                            "name the two models to compare")
        twin_spec = model_spec(load_config(None, [f"model.name={twin}",
                                                  f"model.image_size={spec.image_size}",
                                                  f"model.num_classes={spec.num_classes}"]).model)
        pairs.append((spec, twin_spec, tol))
    if not pairs:
        raise VitcError("--parity: none of the models named has a conv stem to pair")
    return pairs


def check_parity(pairs: list[tuple[ViTSpec, ViTSpec, float]]) -> list[ParityResult]:
    return [ParityResult(c.name, model_cost(c).flops, p.name, model_cost(p).flops, tol)
            for c, p, tol in pairs]


def format_rows(rows: list[AuditRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[k for k in AuditRow.__dataclass_fields__ if k != "skipped_ops"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: v for k, v in asdict(r).items() if k != "skipped_ops"})
        return buf.getvalue().rstrip("\n")
    header = f"{'model':<28} {'stem':<8} {'depth':>5} {'width':>5} {'res':>4} {'GFLOPs':>8} {'Mparams':>8} {'Macts':>7} {'analytic':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<28} {r.stem:<8} {r.depth:>5} {r.width:>5} {r.resolution:>4} {r.gflops:>8.2f} "
                     f"{r.mparams:>8.1f} {r.macts:>7.1f} {r.analytic_gflops:>8.2f}")
    skipped = sorted({op for r in rows for op in r.skipped_ops})
    if skipped:
        lines.append(f"ops without multiply-adds, not counted: {', '.join(skipped)}")
    return "\n".join(lines)

"""Load YAML configs: `_base_` inheritance, dotted `key=value` overrides, strict typed schema.

The schema is `vitc.schema.Config`. Every file and every override is checked against it (keys,
types, the ranges declared beside the types) as it is read, so an error names the file (or the
override) where the bad key or value came from; `load_config` then checks the relations between
keys and that the model exists, so a bad config stops before anything heavy starts.
"""

import dataclasses
import logging
import math
import types
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from vitc.deepspeed_keys import (
    DEEPSPEED_KEYS,
    DEEPSPEED_VERSION,
    ZERO_OPTIMIZATION_KEYS,
)
from vitc.errors import VitcError, did_you_mean
from vitc.fileio import atomic_write_text
from vitc.models.spec import MODELS, ViTSpec, get_spec
from vitc.models.structure import block_shape, stem_layers
from vitc.schema import Config, ModelConfig

BASE_KEY = "_base_"
log = logging.getLogger(__name__)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: schema defaults < `_base_` files < `path` < overrides (in order)."""
    merged = _load_yaml_tree(Path(path), chain=()) if path is not None else {}
    for item in overrides:
        key, value = parse_override(item)
        _check_dict(_nest(key, value), Config, "", f"override '{item}'")
        merged = merge_dicts(merged, _nest(key, value))
    cfg = config_from_dict(merged, "the resolved config")
    check_relations(cfg)
    return cfg


def check_flag(key: str, value: Any, flag: str) -> None:
    """A command-line flag that sets config `key`, checked by the schema as the key is (type and
    range); an error names the flag as the user wrote it."""
    _check_dict(_nest(key, value), Config, "", f"`{flag} {value}`")


def check_relations(cfg: Config) -> None:
    """What no single key's range says: keys that constrain each other, and the model itself."""
    if cfg.schedule.warmup_epochs > cfg.schedule.epochs:
        raise VitcError(f"schedule.warmup_epochs={cfg.schedule.warmup_epochs:g} exceeds "
                        f"schedule.epochs={cfg.schedule.epochs}")
    if len(cfg.optim.betas) != 2:
        raise VitcError(f"optim.betas must be two numbers [beta1, beta2], got {cfg.optim.betas}")
    crop = cfg.data.crop_scale
    if len(crop) != 2 or crop[0] > crop[1]:
        raise VitcError(f"data.crop_scale must be [min, max] with min <= max, got {crop}")
    if cfg.optim.name == "sgd" and cfg.optim.nesterov and cfg.optim.momentum <= 0:
        raise VitcError(f"optim.nesterov needs optim.momentum > 0, got {cfg.optim.momentum}")
    model = cfg.model
    try:  # unknown name, broken stem, image size vs patch size
        spec = model_spec(model, 1)
    except VitcError as e:
        raise VitcError(f"model.name: {e}" if model.name not in MODELS else str(e)) from None
    if model.stem_strides and model.patch_size is None and spec.patch_size != MODELS[model.name].patch_size:
        log.info("model.patch_size is %d: the product of model.stem_strides %s", spec.patch_size,
                 model.stem_strides)
    _check_key_prefixes(cfg, spec)
    check_deepspeed_keys(cfg.deepspeed)


def check_deepspeed_keys(section: dict) -> None:
    """`deepspeed:` keys DeepSpeed reads (vitc.deepspeed_keys); DeepSpeed itself ignores an unknown
    top-level key, so a misspelt one would change nothing, silently."""
    for key, value in section.items():
        if key not in DEEPSPEED_KEYS:
            raise VitcError(f"deepspeed.{key}: not a key DeepSpeed {DEEPSPEED_VERSION} reads"
                            f"{did_you_mean(key, sorted(DEEPSPEED_KEYS))}")
        if key == "zero_optimization" and isinstance(value, dict):
            for sub in value:
                if sub not in ZERO_OPTIMIZATION_KEYS:
                    raise VitcError(f"deepspeed.zero_optimization.{sub}: not a key of DeepSpeed "
                                    f"{DEEPSPEED_VERSION}'s ZeRO config"
                                    f"{did_you_mean(sub, sorted(ZERO_OPTIMIZATION_KEYS))}")


def _check_key_prefixes(cfg: Config, spec: ViTSpec) -> None:
    """finetune.init_keys and train.freeze name prefixes of this model's state dict keys."""
    keys = state_keys(spec)
    for name, prefixes in (("finetune.init_keys", cfg.finetune.init_keys), ("train.freeze", cfg.train.freeze)):
        for prefix in prefixes:
            if not any(matches_prefix(k, [prefix]) for k in keys):
                tops = sorted({k.split(".")[0] for k in keys})
                raise VitcError(f"{name}: '{prefix}' is no prefix of a key of model {spec.name} "
                                f"(its keys start with {', '.join(tops)})")
    ft = cfg.finetune
    if ft.init_keys and not ft.init_from:
        raise VitcError("finetune.init_keys selects keys of finetune.init_from, which is unset")
    if ft.init_keys and ft.head == "map" and not any(matches_prefix("head.weight", ft.init_keys)):
        raise VitcError("finetune.head=map maps the pretrained head, but finetune.init_keys does not "
                        "select it: add 'head' to finetune.init_keys or set finetune.head=keep")


def matches_prefix(key: str, prefixes: list[str]) -> bool:
    """`key` is one of `prefixes` or lies under one: `stem` (or `stem.`) covers `stem.proj.weight`,
    `stem.convs.1` covers `stem.convs.1.weight` but not `stem.convs.10.weight`."""
    return any(key == p.rstrip(".") or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def config_from_dict(data: dict, origin: str = "config") -> Config:
    """Build a Config from a plain nested dict, rejecting unknown keys and wrong types."""
    return _build(Config, data, "", origin)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """YAML text that `config_from_dict(yaml.safe_load(text))` turns back into `cfg`."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, dump_config(cfg))


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=1e-3' -> ('a.b', 0.001). Values are YAML: ints, floats, bools, lists and null parse."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise VitcError(f"malformed override '{item}': expected key=value, e.g. model.depth=12")
    if not text.strip():  # `model.depth=` would otherwise read as null: the registry's value, silently
        raise VitcError(f"override '{item}' has no value: expected {key}=VALUE ({key}=null for the default)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise VitcError(f"malformed override '{item}': the value is not valid YAML ({e.problem})")
    return key, _yaml11_float(value)


def _yaml11_float(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads '1e-3' as a string; a user writing it means a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def _load_yaml_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise VitcError(f"_base_ cycle: {cycle}")
    if not path.is_file():
        where = f" (named in _base_ of {chain[-1]})" if chain else ""
        raise VitcError(f"config file not found: {path}{where}")
    data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise VitcError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise VitcError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    _check_dict(data, Config, "", str(path))
    merged: dict = {}
    for base in bases:
        merged = merge_dicts(merged, _load_yaml_tree(path.parent / base, (*chain, path)))
    return merge_dicts(merged, data)


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The data of a YAML file vitc reads (config, sweep spec, GPU table): one VitcError naming the
    file, and the line and caret PyYAML gives, for a missing file, bytes that are not UTF-8, a
    syntax error or a key given twice in one mapping."""
    path = Path(path)
    if not path.is_file():
        raise VitcError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise VitcError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except _DuplicateKey as e:
        raise VitcError(f"{path}:{e.line}: key '{e.key}' appears twice (first at line {e.first}); "
                        "merge the two into one") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        source = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise VitcError(f"{where}: not valid YAML: {e.problem or e.context}\n  {source}\n  "
                        f"{' ' * (mark.column if mark else 0)}^") from None
    except yaml.YAMLError as e:
        raise VitcError(f"{path}: not valid YAML: {e}") from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping naming a key twice is an error: plain YAML
    keeps the last, silently dropping a whole `model:` section written earlier in the file."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, Hashable):  # an unhashable key is the base loader's error
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
        return super().construct_mapping(node, deep)


def merge_dicts(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively; lists and scalars in `top` replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _nest(dotted: str, value: Any) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _all_key_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        paths.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            paths += _all_key_paths(tp, f"{prefix}{f.name}.")
    return paths


def _unknown_key(cls: type, key: str, prefix: str, origin: str) -> VitcError:
    hint = did_you_mean(prefix + key, [prefix + f.name for f in dataclasses.fields(cls)])
    if not hint:  # a key put in the wrong section: suggest its full path
        same_leaf = [p for p in _all_key_paths(Config) if p.rsplit(".", 1)[-1] == key]
        hint = f" (did you mean '{same_leaf[0]}'?)" if same_leaf else did_you_mean(
            prefix + key, _all_key_paths(Config))
    return VitcError(f"unknown key '{prefix}{key}' in {origin}{hint}")


def _check_dict(data: Any, cls: type, prefix: str, origin: str) -> None:
    """Check keys and value types of a partial config (one file, one override)."""
    if not isinstance(data, dict):
        raise VitcError(f"'{prefix.rstrip('.') or 'config'}' in {origin}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(cls, key, prefix, origin)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_dict(value, tp, f"{prefix}{key}.", origin)
        else:
            _check_range(_coerce(value, tp, prefix + key, origin), fields[key], prefix + key, origin)


def _check_range(value: Any, f: dataclasses.Field, key: str, origin: str) -> None:
    """The range declared beside the key's type (vitc.schema.bounded), for a number or each item."""
    bounds = f.metadata.get("range")
    if bounds is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bounds.holds(item):
            raise VitcError(f"'{key}' in {origin}: expected a value {bounds.describe()}, got {value!r}")


def _build(cls: type, data: Any, prefix: str, origin: str):
    _check_dict(data, cls, prefix, origin)
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", origin)
        else:
            kwargs[key] = _coerce(value, tp, prefix + key, origin)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """`value` as type `tp`, or a VitcError naming the key, the value and the expected type."""
    kind, args = get_origin(tp), get_args(tp)
    ok, out = True, value
    if tp is Any:
        pass
    elif kind in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1:  # Optional[X]: X's own error is the most precise one
            return _coerce(value, choices[0], key, origin)
        for arg in choices:
            try:
                return _coerce(value, arg, key, origin)
            except VitcError:
                continue
        ok = False
    elif kind is Literal:
        ok = value in args
        if not ok and isinstance(value, str):
            raise VitcError(f"'{key}' in {origin}: expected {_type_name(tp)}, got {value!r}"
                            f"{did_you_mean(value, [str(a) for a in args])}")
    elif kind is list:
        ok = isinstance(value, (list, tuple))
        if ok:
            out = [_coerce(v, args[0], f"{key}[{i}]", origin) for i, v in enumerate(value)]
    elif kind is dict:
        ok = isinstance(value, dict)
        out = dict(value) if ok else value
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        value = _yaml11_float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # .inf and .nan pass every range comparison
            raise VitcError(f"'{key}' in {origin}: expected a finite number, got {value!r}")
        out = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        # YAML 1.1 reads an unquoted 4:00:00 as the sexagesimal number 14400
        hint = "; quote the value if it is text (YAML reads 4:00:00 as a number)" if (
            tp is str and isinstance(value, (int, float))) else ""
        raise VitcError(f"'{key}' in {origin}: expected {_type_name(tp)}, got {value!r}{hint}")
    return out


# Config keys that map one-to-one onto ViTSpec fields when set (None = the registry's value).
_ARCH_KEYS = ("stem", "width", "depth", "heads", "mlp_ratio", "patch_size", "stem_channels",
              "stem_strides", "stem_kernels", "stem_paddings", "stem_norm", "classifier", "norm_eps")


def model_spec(model: ModelConfig, num_classes: int | None = None) -> ViTSpec:
    """The ViTSpec a `model:` section describes. `num_classes` resolves `model.num_classes: auto`."""
    if model.num_classes == "auto":
        if num_classes is None:
            raise VitcError("model.num_classes is 'auto' but there is no dataset manifest to take "
                            "the class count from; set model.num_classes to an integer")
    else:
        num_classes = model.num_classes
    changed = {k: getattr(model, k) for k in _ARCH_KEYS if getattr(model, k) is not None}
    base = get_spec(model.name)
    spec = get_spec(model.name, **changed, num_classes=num_classes, image_size=model.image_size,
                    drop_path=model.drop_path, act_checkpoint=model.act_checkpoint)
    arch_diff = [f"{k}={_show(getattr(spec, k))}" for k in _ARCH_KEYS
                 if getattr(spec, k) not in (getattr(base, k), ())]
    name = model.name + (f"[{','.join(arch_diff)}]" if arch_diff else "")
    return dataclasses.replace(spec, name=name)


def _show(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def state_keys(spec: ViTSpec) -> list[str]:
    """The state dict keys of `VisionTransformer(spec)` (vitc/models/vit.py), torch-free, so that a
    key prefix in a config is checked at load (a test holds them equal to the built model's)."""
    *convs, last = stem_layers(spec)
    keys = []
    for i, layer in enumerate(convs):  # stem.convs is [conv, norm, ReLU] per conv before the 1×1
        norm_keys = _BN_KEYS if layer.norm == "batch" else ("weight", "bias")
        keys += [f"stem.convs.{3 * i}.weight"] + [f"stem.convs.{3 * i + 1}.{k}" for k in norm_keys]
    keys += ["stem.proj.weight"] + (["stem.proj.bias"] if last.bias else [])
    keys += (["cls_token"] if spec.classifier == "token" else []) + ["pos_embed"]
    layers = ["norm1", *block_shape(spec).linears, "norm2"]
    keys += [f"blocks.{b}.{layer}.{w}" for b in range(spec.depth) for layer in layers for w in ("weight", "bias")]
    return keys + ["norm.weight", "norm.bias", "head.weight", "head.bias"]

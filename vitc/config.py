"""Load YAML configs: `_base_` inheritance, dotted `key=value` overrides, strict typed schema.

The schema is `vitc.schema.Config`. Every file and every override is checked against it as it is
read, so an error names the file (or the override) where the bad key or value came from.
"""

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from vitc.errors import VitcError, did_you_mean
from vitc.fileio import atomic_write_text
from vitc.schema import Config

BASE_KEY = "_base_"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: schema defaults < `_base_` files < `path` < overrides (in order)."""
    merged = _load_yaml_tree(Path(path), chain=()) if path is not None else {}
    for item in overrides:
        key, value = parse_override(item)
        _check_dict(_nest(key, value), Config, "", f"override '{item}'")
        merged = merge_dicts(merged, _nest(key, value))
    return config_from_dict(merged, "the resolved config")


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
    try:
        value = yaml.safe_load(text) if text.strip() else None
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VitcError(f"{path}: not valid YAML: {e}")
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
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(cls, key, prefix, origin)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_dict(value, tp, f"{prefix}{key}.", origin)
        else:
            _coerce(value, tp, prefix + key, origin)


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
        out = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        # YAML 1.1 reads an unquoted 4:00:00 as the sexagesimal number 14400
        hint = "; quote the value if it is text (YAML reads 4:00:00 as a number)" if (
            tp is str and isinstance(value, (int, float))) else ""
        raise VitcError(f"'{key}' in {origin}: expected {_type_name(tp)}, got {value!r}{hint}")
    return out

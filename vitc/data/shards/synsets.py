"""Map one class map into another by synset name: ImageNet-1k's classes into ImageNet-21k's indices.

The 1k synsets are a subset of every 21k release (fall11: 21,841 synsets; winter21: 19,167;
21k-P: about 10,450), so a 21k-pretrained head can be cut to 1k rows (or 1k labels scored with a
21k head) by indexing with the list `map_classes` returns. Class counts come from the maps, never
from constants.
"""

import json
import os
from pathlib import Path

from vitc.data.shards.manifest import MANIFEST_NAME, Manifest
from vitc.errors import VitcError


def map_classes(source_classes: dict[str, int], target_classes: dict[str, int]) -> list[int]:
    """`result[i]` is the target index of the source class with index `i`.

    Source indices must be 0..n-1 (each once); every source name must be in the target map.
    """
    by_index = sorted(source_classes.items(), key=lambda kv: kv[1])
    if [i for _, i in by_index] != list(range(len(by_index))):
        raise VitcError(f"source class map: indices must be 0..{len(by_index) - 1}, each once")
    missing = [name for name, _ in by_index if name not in target_classes]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VitcError(f"{len(missing)} of {len(by_index)} source classes are not in the target class "
                        f"map ({len(target_classes)} classes): {shown}")
    return [target_classes[name] for name, _ in by_index]


def read_class_map(path: str | os.PathLike) -> dict[str, int]:
    """A class map from a shard directory or manifest, a JSON object {name: index}, or a text file
    with one synset per line (index = line number; ImageNet's `LOC_synset_mapping.txt` works, only
    the first word of a line is read)."""
    path = Path(path)
    if path.is_dir() or path.name == MANIFEST_NAME:
        return Manifest.load(path).classes
    if not path.is_file():
        raise VitcError(f"class map not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise VitcError(f"class map {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise VitcError(f"class map {path}: expected a JSON object of name -> integer index")
        return data
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise VitcError(f"class map {path} names a class twice")
    return {name: i for i, name in enumerate(names)}

"""The shard manifest (`manifest.json` beside `<prefix>-%06d.tar` shards), and which shards a config names.

Format `vitc-shards/1` (docs/shards.md): shard names with their sample counts, bytes and sha256,
the class-name -> index map, where the samples came from and how they were written, and the inputs
that were skipped with the reason. Writers (`vitc shards build|index`) save it last, so a directory
with a manifest is a complete one.

This module imports neither torch nor webdataset: the planner and the run resolver resolve shard
lists on a login node. Manifests are read through iopath (vitc.fileio), so a manifest may sit at a
URL; brace patterns are expanded with braceexpand, the expansion webdataset itself uses.
"""

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import braceexpand

from vitc.errors import VitcError
from vitc.fileio import atomic_write_text, exists, open_text

FORMAT = "vitc-shards/1"
MANIFEST_NAME = "manifest.json"
SOURCE_KINDS = ("imagefolder", "synset_tars", "indexed")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardRecord:
    """One shard file: its name inside the directory, sample count, size and checksum, and where
    every INDEX_STRIDE-th sample starts (vitc.data.shards.sample_index; empty in manifests written
    before it, whose shards are then read from their start)."""

    name: str
    samples: int
    bytes: int
    sha256: str
    index: list = field(default_factory=list)

    @classmethod
    def of_file(cls, path: str | os.PathLike, samples: int) -> "ShardRecord":
        from vitc.data.shards.sample_index import (
            sample_index,  # webdataset: not for resolving shard lists
        )

        path = Path(path)
        return cls(path.name, samples, path.stat().st_size, file_sha256(path), sample_index(path, samples))


@dataclass(frozen=True)
class SkippedInput:
    """An input that is not in any shard, and why (corrupt image, not an image, no label...)."""

    input: str
    reason: str


@dataclass
class Manifest:
    """A shard directory's contents. `num_samples` and `num_classes` are derived, never stored apart."""

    prefix: str
    shards: list[ShardRecord]
    classes: dict[str, int]
    source: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedInput] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: str = FORMAT

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        # Indices are 0..n-1; a label map with gaps still needs a head of max+1 outputs.
        return max(self.classes.values(), default=-1) + 1

    def shard_paths(self, directory: str | os.PathLike) -> list[Path]:
        return [Path(directory) / s.name for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "prefix": self.prefix,
            "shards": [dataclasses.asdict(s) for s in self.shards],
            "num_samples": self.num_samples, "num_classes": self.num_classes,
            "classes": dict(self.classes), "source": dict(self.source), "options": dict(self.options),
            "skipped": [dataclasses.asdict(s) for s in self.skipped], "created": self.created,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/manifest.json` atomically; returns its path."""
        path = Path(directory) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, dir_or_path: str | os.PathLike) -> "Manifest":
        """Read a shard directory's manifest, or a manifest file at a local path or URL, checking
        its structure."""
        path = os.fspath(dir_or_path)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        if not exists(path):
            raise VitcError(f"shard manifest not found: {path} (build shards with `vitc shards build`, "
                            f"or write a manifest for existing shards with `vitc shards index`)")
        try:
            with open_text(path) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VitcError(f"shard manifest {path} is not valid JSON: {e}") from None
        except OSError as e:
            raise VitcError(f"shard manifest {path} cannot be read: {e}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise VitcError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise VitcError(f"{origin}: format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            manifest = cls(
                prefix=_typed(data, "prefix", str, origin),
                shards=[ShardRecord(**s) for s in _typed(data, "shards", list, origin)],
                classes={str(k): int(v) for k, v in _typed(data, "classes", dict, origin).items()},
                source=_typed(data, "source", dict, origin),
                options=data.get("options", {}),
                skipped=[SkippedInput(**s) for s in data.get("skipped", [])],
                created=data.get("created", ""),
            )
        except (TypeError, ValueError) as e:
            raise VitcError(f"{origin}: malformed shard or class entry ({e})") from None
        _check_consistent(manifest, data, origin)
        return manifest


def _typed(data: dict, key: str, kind: type, origin: str) -> Any:
    if key not in data:
        raise VitcError(f"{origin}: missing key '{key}'")
    if not isinstance(data[key], kind):
        raise VitcError(f"{origin}: '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}")
    return data[key]


def _check_consistent(manifest: Manifest, data: dict, origin: str) -> None:
    # The stored totals are for humans and other tools; they must agree with the shard list.
    for key in ("num_samples", "num_classes"):
        if key in data and data[key] != getattr(manifest, key):
            raise VitcError(f"{origin}: '{key}' is {data[key]} but the shards/classes give "
                            f"{getattr(manifest, key)}")
    if manifest.source.get("kind") not in SOURCE_KINDS:
        raise VitcError(f"{origin}: source.kind is {manifest.source.get('kind')!r}, "
                        f"expected one of {', '.join(SOURCE_KINDS)}")
    if any(v < 0 for v in manifest.classes.values()):
        raise VitcError(f"{origin}: class indices must be >= 0")


@dataclass(frozen=True)
class Shard:
    """One shard as the loader sees it: manifest name, where to read it from, sample count, and
    its size in bytes as the manifest records it (None: unknown)."""

    name: str
    url: str
    samples: int
    bytes: int | None = None
    index: tuple = ()  # the record's sample index, (sample, byte offset, key) entries

    def seek_point(self, start: int) -> tuple[int, int, str] | None:
        """The last indexed sample at or before sample `start`: (sample, byte offset, key); None
        when there is none (the shard is read from its start)."""
        below = [entry for entry in self.index if entry[0] <= start]
        return tuple(below[-1]) if below else None


def resolve_shards(spec: str | list[str] | None, manifest_path: str | None,
                   key: str) -> tuple[list[Shard], Manifest]:
    """The shards named by `data.<key>` (a directory, brace pattern, list or URLs) and their manifest."""
    if spec is None or spec == [] or spec == "":
        raise VitcError(f"data.{key} is not set: expected a shard directory (with {MANIFEST_NAME}), "
                        f"a brace pattern like 'dir/train-{{000000..000099}}.tar', or a list of paths/URLs")
    if isinstance(spec, str) and not manifest_path and os.path.isdir(spec):
        manifest = Manifest.load(spec)
        paths = manifest.shard_paths(spec)
        return [Shard(r.name, str(p), r.samples, r.bytes, tuple(map(tuple, r.index)))
                for r, p in zip(manifest.shards, paths)], manifest
    urls = [u for item in ([spec] if isinstance(spec, str) else spec) for u in expand_urls(item)]
    manifest = Manifest.load(manifest_path or _manifest_beside(urls[0], key))
    records = {r.name: r for r in manifest.shards}
    shards = []
    for url in urls:
        names = [n for n in re.findall(r"[^/\s]+\.tar\b", url) if n in records]
        if not names:
            raise VitcError(f"data.{key}: shard '{url}' is not in the manifest "
                            f"({len(records)} shards, e.g. {next(iter(records), '-')})")
        record = records[names[-1]]
        shards.append(Shard(record.name, url, record.samples, record.bytes, tuple(map(tuple, record.index))))
    return shards, manifest


def expand_urls(item: str) -> list[str]:
    """'a::b' lists and brace patterns ('train-{000000..000099}.tar'), as webdataset expands them."""
    return [url for part in item.split("::") for url in braceexpand.braceexpand(part)]


def _manifest_beside(url: str, key: str) -> Path:
    directory = Path(url).parent
    local = "://" not in url and not url.startswith("pipe:")
    if local and not Path(url).exists() and not directory.is_dir():
        raise VitcError(f"data.{key}: '{url}' does not exist (expected a shard directory with "
                        f"{MANIFEST_NAME}, a brace pattern of shard files, or a list of paths/URLs)")
    if "://" in url or url.startswith("pipe:") or not (directory / MANIFEST_NAME).is_file():
        manifest_key = key.replace("_shards", "_manifest")
        raise VitcError(f"data.{key} names shards without a local {MANIFEST_NAME} beside them "
                        f"('{url}'): set data.{manifest_key} to the manifest's path")
    return directory / MANIFEST_NAME

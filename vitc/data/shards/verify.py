"""`vitc shards verify` (a shard directory against its manifest) and `vitc shards index` (a manifest
for shards another tool wrote: webdataset's ShardWriter, img2dataset).

Both read each shard once as a tar stream through webdataset's tar iterator, hashing the bytes as
they pass, so a 1 GB shard costs one sequential read.
"""

import hashlib
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm
from webdataset.tariterators import group_by_keys, tar_file_iterator

from vitc.data.samples import (
    JSON_LABEL_FIELDS,
    BadSample,
    gpu_decode_refusal,
    sample_image,
    sample_label,
)
from vitc.data.shards.build import check_workers, imap_workers
from vitc.data.shards.encode import BadInput, check_image
from vitc.data.shards.manifest import MANIFEST_NAME, Manifest, ShardRecord, SkippedInput
from vitc.data.shards.sample_index import sample_index
from vitc.errors import VitcError

log = logging.getLogger(__name__)


@dataclass
class ShardScan:
    """One pass over a shard: checksum, valid samples, and what is wrong with the rest."""

    name: str
    bytes: int = 0
    sha256: str = ""
    samples: int = 0
    max_label: int = -1
    image_keys: set[str] = field(default_factory=set)
    label_keys: set[str] = field(default_factory=set)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (sample key, reason)
    not_for_gpu: list[tuple[str, str]] = field(default_factory=list)  # (sample key, why nvJPEG cannot take it)
    error: str | None = None  # the tar itself could not be read to its end


@dataclass(frozen=True)
class ShardProblem:
    shard: str
    problem: str
    sample: str | None = None

    def describe(self) -> str:
        where = f"{self.shard}: sample '{self.sample}'" if self.sample else self.shard
        return f"{where}: {self.problem}"


@dataclass
class VerifyReport:
    directory: str
    shards: int
    samples: int
    problems: list[ShardProblem]
    # valid samples that `data.decode_device: cuda` decodes on the CPU instead (not problems)
    not_for_gpu: list[ShardProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        head = (f"{self.directory}: {self.shards} shards, {self.samples} samples verified "
                f"({'ok' if self.ok else f'{len(self.problems)} problems'})")
        gpu = ([f"{len(self.not_for_gpu)} samples the GPU decoder (nvJPEG, data.decode_device: cuda) cannot "
                "take; the loader decodes them on the CPU:"] if self.not_for_gpu else [])
        return "\n".join([head] + [p.describe() for p in self.problems] + gpu
                         + [f"  {p.describe()}" for p in self.not_for_gpu])


class _HashingReader:
    """A read-only stream that feeds every byte it returns into sha256."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self._f, self.name, self.digest, self.bytes = f, name, hashlib.sha256(), 0

    def __str__(self) -> str:  # webdataset appends the stream to its error messages
        return self.name

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data


def scan_shard(path: str | os.PathLike, decode: bool, num_classes: int | None = None) -> ShardScan:
    """Read `path` once: sha256, and every sample checked for an image, a label and (if `decode`)
    an image that decodes, with a label below `num_classes` when given."""
    scan = ShardScan(Path(path).name)
    with open(path, "rb") as f:
        reader = _HashingReader(f, str(path))
        last = None
        try:
            files = ({**entry, "__url__": str(path)} for entry in tar_file_iterator(reader))
            for sample in group_by_keys(files):
                last = sample["__key__"]
                _check_sample(sample, scan, decode, num_classes)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # a damaged tar, a duplicate name
            after = f" after sample '{last}'" if last else ""
            scan.error = f"unreadable tar{after} ({type(e).__name__}: {e})"
        while reader.read(1 << 20):  # the checksum covers the whole file, end padding included
            pass
    scan.bytes, scan.sha256 = reader.bytes, reader.digest.hexdigest()
    return scan


def _check_sample(sample: dict, scan: ShardScan, decode: bool, num_classes: int | None) -> None:
    key = sample["__key__"]
    try:
        image_key, image = sample_image(sample)
        label, label_key = sample_label(sample, num_classes)
        if decode:
            check_image(image)
    except (BadSample, BadInput) as e:
        scan.bad.append((key, str(e)))
        return
    refusal = gpu_decode_refusal(image) if decode else None
    if refusal is not None:
        scan.not_for_gpu.append((key, refusal))
    scan.samples += 1
    scan.max_label = max(scan.max_label, label)
    scan.image_keys.add(image_key)
    scan.label_keys.add(label_key)


def _verify_task(args: tuple[str, int]) -> ShardScan:
    return scan_shard(args[0], decode=True, num_classes=args[1])


def _index_task(path: str) -> ShardScan:
    return scan_shard(path, decode=False)


def verify_shards(directory: str | os.PathLike, workers: int = 1, progress: bool = True) -> VerifyReport:
    """Check every shard of `directory` against its manifest: file present, bytes and sha256,
    sample count, sample index, and every sample's image decodes and label is a class index in range."""
    check_workers(workers)
    manifest = Manifest.load(directory)
    paths = manifest.shard_paths(directory)
    missing = [p for p in paths if not p.is_file()]
    problems = [ShardProblem(p.name, "missing: the manifest lists it but the file does not exist")
                for p in missing]
    tasks = [(str(p), manifest.num_classes) for p in paths if p not in missing]
    records = {s.name: s for s in manifest.shards}
    expected_bad = {s.input for s in manifest.skipped}
    samples, not_for_gpu = 0, []
    with tqdm(total=len(tasks), unit="shard", desc="verify", disable=not progress) as bar:
        for scan in imap_workers(_verify_task, tasks, workers):
            problems += _compare(scan, records[scan.name], expected_bad)
            problems += _compare_index(Path(directory) / scan.name, records[scan.name])
            not_for_gpu += [ShardProblem(scan.name, reason, key) for key, reason in scan.not_for_gpu]
            samples += scan.samples
            bar.update()
    problems.sort(key=lambda p: p.shard)
    not_for_gpu.sort(key=lambda p: (p.shard, p.sample))
    return VerifyReport(str(directory), len(paths), samples, problems, not_for_gpu)


def _compare_index(path: Path, record: ShardRecord) -> list[ShardProblem]:
    """The manifest's sample index against the file's headers (read alone: tarfile seeks over the data)."""
    if not record.index or record.index == sample_index(path, record.samples, record.index[0][0]):
        return []
    return [ShardProblem(path.name, "the manifest's sample index does not match the file (write the manifest "
                                    "again: `vitc shards index DIR`)")]


def _compare(scan: ShardScan, record: ShardRecord, expected_bad: set[str]) -> list[ShardProblem]:
    problems = [ShardProblem(scan.name, reason, key) for key, reason in scan.bad
                if f"{scan.name}:{key}" not in expected_bad]
    if scan.error:
        problems.append(ShardProblem(scan.name, scan.error))
    if scan.bytes != record.bytes:
        problems.append(ShardProblem(scan.name, f"size {scan.bytes} bytes, manifest says {record.bytes}"))
    if scan.sha256 != record.sha256:
        problems.append(ShardProblem(scan.name, "sha256 differs from the manifest: the file changed "
                                                "or is corrupted"))
    if scan.samples != record.samples:
        problems.append(ShardProblem(scan.name, f"{scan.samples} valid samples, manifest says "
                                                f"{record.samples}"))
    return problems


def index_shards(directory: str | os.PathLike, prefix: str | None = None, workers: int = 1,
                 progress: bool = True) -> Manifest:
    """Write a manifest for the `<prefix>*.tar` shards in `directory` (made by another tool).

    Class names are unknown there, so class `i` is named `str(i)`; samples without an image or a
    label are listed as skipped (`<shard>:<key>`), and the loader skips them too.
    """
    check_workers(workers)
    directory = Path(directory)
    paths = _tars_to_index(directory, prefix)
    scans: dict[str, ShardScan] = {}
    with tqdm(total=len(paths), unit="shard", desc="index", disable=not progress) as bar:
        for scan in imap_workers(_index_task, [str(p) for p in paths], workers):
            if scan.error:
                raise VitcError(f"cannot index {directory / scan.name}: {scan.error}")
            scans[scan.name] = scan
            bar.update()
    ordered = [scans[p.name] for p in paths]
    max_label = max(s.max_label for s in ordered)
    if max_label < 0:
        raise VitcError(f"no labelled samples in the shards of {directory}: expected .cls files or "
                        f".json files with a {' or '.join(JSON_LABEL_FIELDS)} field")
    manifest = Manifest(
        prefix=prefix if prefix is not None else _common_prefix([p.name for p in paths]),
        shards=[ShardRecord(s.name, s.samples, s.bytes, s.sha256, sample_index(directory / s.name, s.samples))
                for s in ordered],
        classes={str(i): i for i in range(max_label + 1)},
        source={"kind": "indexed", "path": str(directory.resolve())},
        options={"image_keys": sorted(set().union(*(s.image_keys for s in ordered))),
                 "label_keys": sorted(set().union(*(s.label_keys for s in ordered)))},
        skipped=[SkippedInput(f"{s.name}:{key}", reason) for s in ordered for key, reason in s.bad])
    manifest.save(directory)
    return manifest


def _tars_to_index(directory: Path, prefix: str | None) -> list[Path]:
    if not directory.is_dir():
        raise VitcError(f"shard directory not found: {directory}")
    if (directory / MANIFEST_NAME).is_file():
        kind = Manifest.load(directory).source.get("kind")
        if kind != "indexed":
            raise VitcError(f"{directory} already has a manifest written by `vitc shards build` "
                            f"(source kind '{kind}'); indexing would replace its class names")
    paths = sorted(p for p in directory.glob(f"{prefix or ''}*.tar") if p.is_file())
    if not paths:
        raise VitcError(f"no {prefix or ''}*.tar shards in {directory}")
    return paths


def _common_prefix(names: list[str]) -> str:
    """'shard-000000.tar', 'shard-000001.tar' -> 'shard'."""
    return re.sub(r"[-_.]*\d*$", "", os.path.commonprefix([n.removesuffix(".tar") for n in names]))

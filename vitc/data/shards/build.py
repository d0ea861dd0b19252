"""`vitc shards build`: an ImageFolder tree or per-synset tars -> `<prefix>-%06d.tar` WebDataset shards.

The run is planned whole before any image is decoded: the source is listed, shuffled with a seed
and cut into shards, so the shards' contents depend on the listing and the options only (never on
the number of workers, which each write whole shards). Re-run after an interruption, a build keeps
every finished shard that matches the plan and writes the rest; a shard is written under a temp
name and renamed, and the manifest is written last, so a directory with a manifest is complete.
"""

import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import re
import signal
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import webdataset as wds
from tqdm import tqdm

from vitc.data.processes import imap_unordered
from vitc.data.shards.encode import BadInput, prepare_jpeg
from vitc.data.shards.manifest import MANIFEST_NAME, Manifest, ShardRecord, SkippedInput
from vitc.data.shards.sources import SourceItem, SourceListing, list_source
from vitc.errors import VitcError
from vitc.fileio import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

# Two 512-byte tar headers per sample, plus the padding of both members to 512-byte blocks.
TAR_BYTES_PER_SAMPLE = 4 * 512
# Records the plan of a build in progress, so a re-run with other options cannot mix two plans.
BUILD_STATE_NAME = ".vitc-build.json"
T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class BuildOptions:
    """How shards are cut and images stored (`vitc shards build --help` documents each)."""

    samples_per_shard: int = 10_000
    max_shard_bytes: int = 1_000_000_000  # ~10k ImageNet JPEGs of ~110 kB
    max_side: int | None = None
    quality: int = 90
    shuffle_seed: int = 0

    def check(self) -> None:
        for name in ("samples_per_shard", "max_shard_bytes"):
            if getattr(self, name) < 1:
                raise VitcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_side is not None and self.max_side < 1:
            raise VitcError(f"--max-side must be >= 1, got {self.max_side}")
        if not 1 <= self.quality <= 100:
            raise VitcError(f"--quality must be in 1..100 (JPEG quality), got {self.quality}")


@dataclass(frozen=True)
class ShardPlan:
    """The inputs of one shard, in their order inside it."""

    name: str
    items: tuple[SourceItem, ...]


@dataclass(frozen=True)
class ShardOutcome:
    record: ShardRecord
    skipped: tuple[SkippedInput, ...]
    kept: bool  # an existing file matched the plan and was left as it was


@dataclass(frozen=True)
class BuildSummary:
    manifest: Manifest
    written: int
    kept: int
    written_samples: int
    seconds: float

    def describe(self) -> str:
        m = self.manifest
        rate = self.written_samples / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(m.shards)} '{m.prefix}' shards ({self.written} written, {self.kept} kept), "
                f"{m.num_samples} samples of {m.num_classes} classes, {len(m.skipped)} inputs skipped, "
                f"{sum(s.bytes for s in m.shards) / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"({rate:.0f} images/s written)")


def plan_shards(items: list[SourceItem], prefix: str, options: BuildOptions) -> list[ShardPlan]:
    """Shuffle the listing with the seed, then cut it into shards by count and by bytes.

    The byte cap uses the inputs' sizes (known from the listing): downscaling only shrinks them,
    so a shard stays under the cap without decoding anything to plan it.
    """
    order = list(items)
    random.Random(options.shuffle_seed).shuffle(order)
    plans, current, current_bytes = [], [], 0
    for item in order:
        cost = item.size + TAR_BYTES_PER_SAMPLE
        if current and (len(current) == options.samples_per_shard
                        or current_bytes + cost > options.max_shard_bytes):
            plans.append(ShardPlan(f"{prefix}-{len(plans):06d}.tar", tuple(current)))
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += cost
    if current:
        plans.append(ShardPlan(f"{prefix}-{len(plans):06d}.tar", tuple(current)))
    return plans


def plan_fingerprint(listing: SourceListing, plans: list[ShardPlan], options: BuildOptions) -> str:
    """sha256 of what decides the shards' bytes: options, classes and every shard's inputs.

    Inputs are named by key, label and size, not by path, so a moved source still resumes.
    """
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(options), listing.kind, listing.classes],
                                       sort_keys=True).encode())
    for plan in plans:
        digest.update(plan.name.encode())
        for item in plan.items:
            digest.update(f"\0{item.key}\0{item.label}\0{item.size}".encode())
    return digest.hexdigest()


def run_shard(plan: ShardPlan, out_dir: str, max_side: int | None, quality: int) -> ShardOutcome:
    """Keep `out_dir/plan.name` when it matches the plan, else write it. Runs in a worker process."""
    final = Path(out_dir) / plan.name
    if final.exists():
        kept = _match_existing(plan, final, max_side, quality)
        if kept is not None:
            return kept
        log.info("rewriting %s: its samples differ from the plan", final)
    return _write_shard(plan, final, max_side, quality)


def _write_shard(plan: ShardPlan, final: Path, max_side: int | None, quality: int) -> ShardOutcome:
    # webdataset's ShardWriter opens its final file names directly and decides shard boundaries
    # while writing; our boundaries are planned up front and a file must only get its final name
    # when complete, so each shard is one TarWriter on a temp file that is renamed at the end.
    skipped, samples = [], 0
    with atomic_output(final) as tmp:
        with open(tmp, "wb") as f:
            # mtime fixed: the same plan gives the same bytes (and sha256) on any day, any worker.
            with wds.TarWriter(f, encoder=False, mtime=0) as sink:
                for item in plan.items:
                    try:
                        jpeg = prepare_jpeg(_read(item), max_side, quality)
                    except BadInput as e:
                        skipped.append(SkippedInput(item.name, str(e)))
                        continue
                    sink.write({"__key__": item.key, "jpg": jpeg, "cls": str(item.label).encode()})
                    samples += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # whatever the umask: shards are read by every rank's user
        record = dataclasses.replace(ShardRecord.of_file(tmp, samples), name=final.name)
    return ShardOutcome(record, tuple(skipped), kept=False)


def _read(item: SourceItem) -> bytes:
    try:
        return item.read()
    except OSError as e:
        raise BadInput(f"unreadable ({e})") from None


def _match_existing(plan: ShardPlan, final: Path, max_side: int | None,
                    quality: int) -> ShardOutcome | None:
    """The outcome of an existing shard holding the planned samples in order, the missing ones
    being exactly the inputs that still fail to decode (their reasons are found again)."""
    try:
        # Member names only: tarfile's random-access mode seeks over the data, where webdataset's
        # iterators would read every byte of the shard.
        with tarfile.open(final, "r:") as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError):
        return None
    present = {name.rsplit(".", 1)[0] for name in names}
    if names != [f"{i.key}.{ext}" for i in plan.items if i.key in present for ext in ("cls", "jpg")]:
        return None
    skipped = []
    for item in plan.items:
        if item.key in present:
            continue
        try:
            prepare_jpeg(_read(item), max_side, quality)
            return None  # an input that failed before now decodes: the shard is stale
        except BadInput as e:
            skipped.append(SkippedInput(item.name, str(e)))
    return ShardOutcome(ShardRecord.of_file(final, len(names) // 2), tuple(skipped), kept=True)


def _run_shard_args(args: tuple) -> ShardOutcome:
    return run_shard(*args)


def check_workers(workers: int) -> None:
    if workers < 1:
        raise VitcError(f"--workers must be >= 1, got {workers}")


def imap_workers(fn: Callable[[T], R], tasks: list[T], workers: int) -> Iterator[R]:
    """`fn` over `tasks` in `workers` processes (in this one when 1), results as they finish.
    The workers leave signals to this process and end with it (vitc.data.processes)."""
    if workers == 1:
        yield from map(fn, tasks)
        return
    yield from imap_unordered(fn, tasks, workers)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a build: it stops as on Ctrl-C (finished shards kept), exit status 143."""


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` where the build is (in the main thread: Python's signal rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum, _frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_all(plans: list[ShardPlan], out: Path, options: BuildOptions, workers: int,
             progress: bool) -> Iterator[ShardOutcome]:
    tasks = [(plan, str(out), options.max_side, options.quality) for plan in plans]
    with tqdm(total=sum(len(p.items) for p in plans), unit="img", desc=f"shards {out.name}",
              disable=not progress, smoothing=0.1) as bar:
        yield from _track(imap_workers(_run_shard_args, tasks, workers), bar)


def _track(results: Iterable[ShardOutcome], bar: tqdm) -> Iterator[ShardOutcome]:
    kept = skipped = 0
    for outcome in results:
        kept += outcome.kept
        skipped += len(outcome.skipped)
        bar.update(outcome.record.samples + len(outcome.skipped))
        bar.set_postfix(kept=kept, skipped=skipped, refresh=False)
        yield outcome


def build_shards(src: str | os.PathLike, out: str | os.PathLike, prefix: str = "train",
                 options: BuildOptions = BuildOptions(), workers: int = 1,
                 progress: bool = True) -> BuildSummary:
    """Convert `src` into shards in `out` (resuming a build there), then write the manifest."""
    start = time.perf_counter()
    options.check()
    src, out = Path(src).resolve(), Path(out).resolve()
    _check_paths(src, out, prefix, workers)
    listing = list_source(src, progress)
    if not listing.items:
        raise VitcError(f"shard source {src} holds no input files")
    plans = plan_shards(listing.items, prefix, options)
    fingerprint = plan_fingerprint(listing, plans, options)
    out.mkdir(parents=True, exist_ok=True)
    _check_previous_build(out, prefix, plans, fingerprint)
    complete = _complete_build(out, plans, fingerprint)
    if complete is not None:
        log.info("%s already holds this plan's shards and manifest: nothing to write "
                 "(`vitc shards verify` checks their checksums)", out)
        return BuildSummary(complete, 0, len(plans), 0, time.perf_counter() - start)
    _remove_stray_temps(out, prefix)
    atomic_write_text(out / BUILD_STATE_NAME, json.dumps({"prefix": prefix, "plan_sha256": fingerprint}))
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # a manifest only ever describes finished shards
    log.info("%d inputs of %d classes from %s -> %d shards in %s", len(listing.items),
             len(listing.classes), src, len(plans), out)
    with _stop_on_sigterm():
        try:
            outcomes = {o.record.name: o for o in _run_all(plans, out, options, workers, progress)}
        except OSError as e:  # each shard is written under a temp name, removed when its write fails
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            done = [p.stat().st_size for p in _shard_files(out, prefix)]
            left = max(len(plans) - len(done), 1)  # the shard that failed at least
            # a finished shard's mean size, else the inputs' (re-encoding changes it by a factor near 1)
            per_shard = sum(done) / len(done) if done else sum(i.size for i in listing.items) / max(len(plans), 1)
            raise VitcError(f"no space left on the device of {out} for the shards: about {left * per_shard / 2**20:.1f} "
                            f"MiB more needed for {left} of {len(plans)} shards, {shutil.disk_usage(out).free / 2**20:.1f} "
                            "MiB free; free some space and run the same command again (finished shards are kept)") from None
    ordered = [outcomes[plan.name] for plan in plans]
    manifest = _write_manifest(out, prefix, listing, ordered,
                               {**dataclasses.asdict(options), "plan_sha256": fingerprint})
    written = [o for o in ordered if not o.kept]
    return BuildSummary(manifest, len(written), len(ordered) - len(written),
                        sum(o.record.samples + len(o.skipped) for o in written),
                        time.perf_counter() - start)


def _write_manifest(out: Path, prefix: str, listing: SourceListing, ordered: list[ShardOutcome],
                    options: dict) -> Manifest:
    """Save the manifest (last, atomically) and end the build-in-progress record."""
    manifest = Manifest(prefix=prefix, shards=[o.record for o in ordered], classes=listing.classes,
                        source={"kind": listing.kind, "path": listing.path}, options=options,
                        skipped=listing.skipped + [s for o in ordered for s in o.skipped])
    manifest.save(out)
    (out / BUILD_STATE_NAME).unlink()
    for s in manifest.skipped[:10]:
        log.warning("skipped %s: %s", s.input, s.reason)
    if len(manifest.skipped) > 10:
        log.warning("... and %d more skipped inputs, listed in %s", len(manifest.skipped) - 10,
                    out / MANIFEST_NAME)
    return manifest


def _check_paths(src: Path, out: Path, prefix: str, workers: int) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
        raise VitcError(f"--prefix must be letters, digits, '_' or '-' (it names the shard files), "
                        f"got '{prefix}'")
    check_workers(workers)
    if out == src or src in out.parents:
        raise VitcError(f"shard output {out} is inside the source {src}; write shards elsewhere")


def _shard_files(out: Path, prefix: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar")
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def _check_previous_build(out: Path, prefix: str, plans: list[ShardPlan], fingerprint: str) -> None:
    """Refuse to mix this plan with shards of another one (other source, options or prefix)."""
    previous = None
    if (out / BUILD_STATE_NAME).is_file():
        previous = json.loads((out / BUILD_STATE_NAME).read_text())
    elif (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        previous = {"prefix": manifest.prefix, "plan_sha256": manifest.options.get("plan_sha256")}
    if previous is not None and previous["prefix"] != prefix:
        raise VitcError(f"{out} holds the '{previous['prefix']}' shards; a directory holds one prefix "
                        f"(one manifest): write the '{prefix}' shards to their own directory")
    existing = _shard_files(out, prefix)
    if existing and previous is not None and previous["plan_sha256"] != fingerprint:
        raise VitcError(f"{out} holds '{prefix}' shards planned from another source listing or other "
                        f"options; write to a new directory, or delete them to rebuild")
    extra = sorted({p.name for p in existing} - {plan.name for plan in plans})
    if extra:
        raise VitcError(f"{out} holds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}, which "
                        f"this build does not plan (another source or options); write to a new "
                        f"directory, or delete them to rebuild")


def _complete_build(out: Path, plans: list[ShardPlan], fingerprint: str) -> Manifest | None:
    """The manifest of a finished build of this very plan whose shard files are all there, at
    their recorded sizes (re-hashing a terabyte to find nothing to do is verify's job, not build's)."""
    if not (out / MANIFEST_NAME).is_file() or (out / BUILD_STATE_NAME).exists():
        return None
    manifest = Manifest.load(out)
    if manifest.options.get("plan_sha256") != fingerprint:
        return None
    on_disk = all(p.is_file() and p.stat().st_size == r.bytes
                  for p, r in zip(manifest.shard_paths(out), manifest.shards))
    return manifest if on_disk and len(manifest.shards) == len(plans) else None


def _remove_stray_temps(out: Path, prefix: str) -> None:
    """Temp files of an interrupted build (`.<prefix>-NNNNNN.tar.<random>.tmp`) are never complete."""
    pattern = re.compile(rf"\.{re.escape(prefix)}-\d{{6}}\.tar\..+\.tmp")
    for path in out.iterdir():
        if pattern.fullmatch(path.name):
            log.info("removing %s, left by an interrupted build", path)
            path.unlink()

"""What `vitc shards build` reads: an ImageFolder tree or a folder of per-synset tars, listed up front.

The whole listing is made before any image is decoded, so the assignment of samples to shards
(and the seeded shuffle) is fixed by the listing alone, whatever the number of workers.
"""

import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from vitc.data.shards.manifest import SkippedInput
from vitc.errors import VitcError

log = logging.getLogger(__name__)

# Characters that would change how webdataset splits a tar member name into key and extension.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One input image: a file (`member` None) or a member of an uncompressed tar at `offset`."""

    key: str
    label: int
    path: str
    size: int
    member: str | None = None
    offset: int = 0

    @property
    def name(self) -> str:
        """How an error or the manifest names this input."""
        return f"{self.path}:{self.member}" if self.member is not None else self.path

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.member is None:
                return f.read()
            # A positioned read of the member's bytes: no extraction to disk, and no pass over
            # the rest of the tar (tarfile's stream mode would read every byte before it).
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class SourceListing:
    """Classes (sorted names -> index), inputs in a fixed order, and what could not be listed."""

    kind: str
    path: str
    classes: dict[str, int]
    items: list[SourceItem]
    skipped: list[SkippedInput] = field(default_factory=list)


def list_source(src: str | os.PathLike, progress: bool = False) -> SourceListing:
    """List an ImageFolder tree (class sub-folders) or a folder of `<synset>.tar` files."""
    src = Path(src)
    if not src.is_dir():
        raise VitcError(f"shard source not found or not a directory: {src}")
    entries = sorted(src.iterdir())
    has_dirs = any(p.is_dir() for p in entries)
    has_tars = any(p.is_file() and p.suffix == ".tar" for p in entries)
    if has_dirs and has_tars:
        raise VitcError(f"shard source {src} holds both class folders and .tar files; expected an "
                        f"ImageFolder tree (class folders of images) or a folder of per-synset tars")
    if has_dirs:
        return _list_imagefolder(src, entries, progress)
    if has_tars:
        return _list_synset_tars(src, entries, progress)
    raise VitcError(f"shard source {src} holds neither class folders (ImageFolder) nor "
                    f"per-synset .tar files (e.g. n01440764.tar)")


def _list_imagefolder(src: Path, entries: list[Path], progress: bool) -> SourceListing:
    class_dirs = [p for p in entries if p.is_dir()]
    classes = {p.name: i for i, p in enumerate(class_dirs)}
    items, skipped, keys = [], [], _KeyMaker()
    skipped += [SkippedInput(str(p), "not a class folder (a file at the top of an ImageFolder)")
                for p in entries if not p.is_dir()]
    for class_dir in tqdm(class_dirs, desc="listing", unit="class", disable=not progress):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file())
        if not files:
            log.warning("class folder %s holds no files; class '%s' keeps index %d with no samples",
                        class_dir, class_dir.name, classes[class_dir.name])
        for path in files:
            stem = path.relative_to(class_dir).with_suffix("").as_posix()
            items.append(SourceItem(keys(class_dir.name, stem), classes[class_dir.name], str(path),
                                    path.stat().st_size))
    return SourceListing("imagefolder", str(src), classes, items, skipped)


def _list_synset_tars(src: Path, entries: list[Path], progress: bool) -> SourceListing:
    tars = [p for p in entries if p.is_file() and p.suffix == ".tar"]
    classes = {p.stem: i for i, p in enumerate(tars)}
    items, keys = [], _KeyMaker()
    skipped = [SkippedInput(str(p), "not a per-synset .tar file") for p in entries if p not in tars]
    for tar_path in tqdm(tars, desc="listing", unit="tar", disable=not progress):
        try:
            # Random-access mode reads only the 512-byte headers and seeks over the data, so
            # listing 1 TB of tars costs a few GB of reads; member bytes are read later by offset.
            with tarfile.open(tar_path, "r:") as tar:
                members = [m for m in tar.getmembers() if m.isreg()]
        except (tarfile.TarError, OSError) as e:
            skipped.append(SkippedInput(str(tar_path), f"unreadable tar ({e})"))
            continue
        for m in members:
            stem = PurePosixPath(m.name).with_suffix("").as_posix()
            items.append(SourceItem(keys(tar_path.stem, stem), classes[tar_path.stem], str(tar_path),
                                    m.size, m.name, m.offset_data))
    return SourceListing("synset_tars", str(src), classes, items, skipped)


class _KeyMaker:
    """Unique webdataset keys `<class>/<stem>`: no dots (webdataset splits the extension at the
    first dot of the basename), and a `_<n>` suffix when two inputs would get the same key."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, class_name: str, stem: str) -> str:
        base = f"{_UNSAFE_KEY_CHARS.sub('_', class_name)}/{_UNSAFE_KEY_CHARS.sub('_', stem)}"
        key, n = base, 0
        while key in self._seen:
            n += 1
            key = f"{base}_{n}"
        self._seen.add(key)
        return key

"""What a checkpoint's completeness marker promises: every file's size and CRC-32, checked on use.

A marker alone says a save finished; it cannot say the files are still what was written (a
truncated copy, a disk that lost a block). The marker therefore lists every file of the tag with
its size and CRC-32 (zlib's, faster than a cryptographic hash, docs/engine.md; it guards against
damage, not against an adversary), and resume, export
and pruning check them before trusting the tag.

Also here: the one-line report of a save that ran out of disk space.
"""

import errno
import os
import shutil
import zlib
from pathlib import Path

CHUNK = 1 << 22


def crc32(path: Path) -> int:
    value = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            value = zlib.crc32(block, value)
    return value


def tag_files(tag_dir: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under `tag_dir` as a sorted relative path (names in `skip` left out)."""
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
                  if p.is_file() and p.name not in skip)


def describe_files(tag_dir: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """{name: {"size": bytes, "crc32": value}} of the given files of `tag_dir`."""
    return {n: {"size": (tag_dir / n).stat().st_size, "crc32": crc32(tag_dir / n)} for n in names}


def damage(tag_dir: Path, files: dict[str, dict[str, int]]) -> str | None:
    """What is wrong with `tag_dir` against the sizes and checksums recorded for it; None if intact."""
    for name, want in sorted(files.items()):
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path} has {size} bytes, {want['size']} were saved"
        if crc32(path) != want["crc32"]:
            return f"{path} does not match the CRC-32 recorded when it was saved"
    return None


def out_of_space(error: BaseException) -> bool:
    """Whether `error` is a write that found the disk full. torch.save reports ENOSPC as a
    RuntimeError from its zip writer ("unexpected pos ..."), so the message is read too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left" in text or "unexpected pos" in text or "Disk quota" in text


def space_line(what: str, path: Path, needed: int | None) -> str:
    """One line: `what` at `path` ran out of space, how much it needs and how much is free."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = f"about {_mb(needed)} needed, " if needed else ""
    return (f"no space left on the device of {path} for {what}: {need}{_mb(free)} free; "
            "free some space (or point the path elsewhere) and run the command again")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove(path: Path) -> None:
    """A temporary file or directory, gone (what a failed write leaves)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

"""Reading paths through iopath's handlers, and writing files so that a reader never sees half of one.

Reads go through `pathmgr`, an iopath PathManager, as the authors' code reads configs and
checkpoints (pycls `pycls/core/io.py`, branch vitconfigs, commit 206d0db): a local path, or a URL
of a registered handler. Local writes go to a temp name in the same directory, then a rename.
"""

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from iopath.common.file_io import HTTPURLHandler, PathManager

# Our own manager rather than iopath's global one: fvcore registers handlers on its own manager
# and other libraries may on the global, and a prefix registered twice is refused.
# HTTPURLHandler downloads http/https/ftp files once into iopath's cache ($FVCORE_CACHE, else
# ~/.torch/iopath_cache) and serves that copy afterwards, also to later processes.
pathmgr = PathManager()
pathmgr.register_handler(HTTPURLHandler())


def open_text(path: str | os.PathLike) -> IO[str]:
    """`path` opened for reading as UTF-8 text, through whichever iopath handler serves it."""
    return io.TextIOWrapper(pathmgr.open(os.fspath(path), "rb"), encoding="utf-8")


def exists(path: str | os.PathLike) -> bool:
    """Whether `path` exists. A handler that cannot tell without reading (HTTP) answers True:
    opening the path then reports what is wrong."""
    try:
        return pathmgr.exists(os.fspath(path))
    except NotImplementedError:
        return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path beside `path` for a writer that needs a file name (safetensors, matplotlib,
    tar): renamed to `path` when the block ends normally, removed when it raises. `suffix` keeps
    the extension a writer infers the format from (".tmp.png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates 0600; a shared run directory needs the mode open() would give
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (POSIX rename within one directory), synced to disk."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))

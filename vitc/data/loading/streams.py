"""Reading one shard as samples without ever hanging (which shards: vitc.data.shards.manifest).

Opening (local path, `pipe:` command, http) and tar parsing are webdataset's (`gopen`,
`tar_file_expander`, `group_by_keys`). What it does not do is bound a read in time: a `pipe:`
command or a network stream that stops sending blocks its reader forever. `TimedStream` reads in
a thread and gives up after `timeout` seconds with an error naming the shard.
"""

import os
import queue
import re
import threading
from collections.abc import Iterator

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from vitc.data.shards.manifest import Shard
from vitc.errors import VitcError

CHUNK = 1 << 18


class TimedStream:
    """A readable stream over `raw` whose every wait for data is bounded by `timeout` seconds."""

    def __init__(self, raw, name: str, timeout: float, expected_bytes: int | None = None, start: int = 0):
        self.raw, self.name, self.timeout = raw, name, timeout
        # a tar cut at a member boundary parses as a shorter valid stream: its size tells (`start`:
        # the byte `raw` was opened at)
        self.expected_bytes, self.read_bytes = expected_bytes, start
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._buffer = bytearray()
        self._eof = self._closed = False
        self.failure: str | None = None  # why reading stopped, kept intact for the error message
        threading.Thread(target=self._pump, daemon=True, name=f"read {name}").start()

    def _pump(self) -> None:
        try:
            while not self._closed:
                block = self.raw.read(CHUNK)
                if not block:
                    self.raw.close()  # a `pipe:` command's exit status is checked here
                self._put(block)
                if not block:
                    return
        except Exception as e:
            self._put(e)

    def _put(self, item) -> None:
        while not self._closed:
            try:
                return self._queue.put(item, timeout=1.0)
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buffer) < n):
            try:
                item = self._queue.get(timeout=self.timeout)
            except queue.Empty:
                self._fail(f"no data for {self.timeout:g} s (stalled read; data.read_timeout_s)")
            if isinstance(item, Exception):
                self._fail(f"read failed: {describe_read_error(item)}")
            self._eof = not item
            self.read_bytes += len(item)
            if self._eof and self.expected_bytes is not None and self.read_bytes < self.expected_bytes:
                self._fail(f"truncated: it ends after {self.read_bytes:,} of the {self.expected_bytes:,} bytes "
                           "its manifest records (rebuild it; `vitc shards verify` checks every shard)")
            self._buffer += item
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def _fail(self, reason: str):
        self.close()
        self.failure = f"shard {self.name}: {reason}"
        raise VitcError(self.failure)

    def close(self) -> None:
        """Stop reading; a stalled `pipe:` command is killed so its reader thread ends too."""
        self._closed = True
        proc = getattr(self.raw, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    def __repr__(self) -> str:
        return f"shard {self.name}"


def shard_samples(shard: Shard, timeout: float, start: int = 0) -> Iterator[dict]:
    """The samples of one shard from sample `start` on (in tar order), as dicts {'__key__', 'jpg',
    'cls', ...}; a failed read raises VitcError. A local shard with a sample index in its manifest
    is opened at the last indexed sample at or before `start`, so the samples before it are not
    read (vitc.data.shards.sample_index); a stream (`pipe:`, URLs) reads and skips them."""
    point = shard.seek_point(start) if os.path.isfile(shard.url) else None
    first, offset, key = point if point else (0, 0, None)
    try:
        raw = wds.gopen(shard.url, "rb")
        if offset:
            raw.seek(offset)
            offset = min(offset, os.fstat(raw.fileno()).st_size)  # a file cut short before it: it ends there
    except Exception as e:
        raise VitcError(f"shard {shard.name}: cannot open '{shard.url}': {e}") from None
    stream = TimedStream(raw, shard.name, timeout, shard.bytes, offset)
    stale = (f"shard {shard.name}: its manifest's sample index puts sample {first} ('{key}') at byte {offset:,}, "
             "which this file does not: the manifest does not describe it (rebuild it: `vitc shards index DIR`)")
    verified = key is None  # a seek is checked by the key of the sample it lands on
    try:
        for position, sample in enumerate(group_by_keys(tar_file_expander([{"url": shard.name, "stream": stream}])),
                                          first):
            if not verified and sample["__key__"] != key:
                raise VitcError(stale)
            verified = True
            if position >= start:
                yield sample
    except Exception as e:  # tarfile.ReadError, webdataset's duplicate-key ValueError, a stalled read, ...
        # webdataset appends context to an exception's args; the stream keeps the clean reason
        if stream.failure:
            raise VitcError(stream.failure) from None
        if not verified:  # the seek landed on another sample, or on no tar header
            raise VitcError(stale) from None
        raise VitcError(f"shard {shard.name}: not a readable tar stream ({e.args[0] if e.args else e})") from None
    finally:
        stream.close()


# webdataset's `pipe:` reader reports a failed command as its Popen arguments and status:
# "(('cat x.tar',), {'shell': True, 'bufsize': 8192}): exit 1 (read) {}"
_PIPE_EXIT = re.compile(r"^\(\('(?P<cmd>.*)',\), \{.*?\}\): exit (?P<status>-?\d+)")


def describe_read_error(error: Exception) -> str:
    """One readable reason: a `pipe:` command and its exit status rather than webdataset's tuple."""
    found = _PIPE_EXIT.match(str(error))
    if found:
        return f"the command `{found['cmd']}` exited with status {found['status']}"
    return str(error)

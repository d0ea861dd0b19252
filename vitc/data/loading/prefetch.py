"""An iterator run on its own thread, a fixed number of items ahead of its consumer.

`data.decode_device: cuda` decodes and augments each batch here, off the training thread: the
thread enqueues a batch's GPU work on a side stream and records an event; the training thread
only waits on that event (vitc.data.loading.gpu_decode). torch's DataLoader has no such stage
(its pin-memory thread copies, it does not run user code), hence this small class.

The thread owns its source: it alone advances it and closes it (a generator cannot be closed
from another thread while it runs). An exception in the source reaches the consumer at the
item where it happened; `close()` stops the thread at the next item boundary.
"""

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

POLL_S = 0.1  # how often a thread waiting for room in a full queue looks whether it should stop


class Prefetch:
    """`iter(self)` yields `source`'s items, produced on a thread up to `depth` items ahead."""

    def __init__(self, source: Iterator, depth: int, context: Callable[[], contextlib.AbstractContextManager] | None = None,
                 name: str = "vitc-prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, context), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterator, context) -> None:
        try:
            with context() if context is not None else contextlib.nullcontext():
                for item in source:
                    if not self._put(("item", item)):
                        break
        except BaseException as e:  # noqa: BLE001  (carried to the consumer, raised there)
            self._put(("error", e))
        else:
            self._put(("end", None))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the thread and drop what it made; True once it has ended (a thread blocked inside
        its source, waiting for a worker's batch, ends when that batch arrives: it is a daemon)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)
        return not self._thread.is_alive()

"""Logging setup: one call at the program's edge; every module uses `logging.getLogger(__name__)`."""

import logging
import sys
import warnings


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, not at setup time.

    A handler bound to the stderr object of its setup outlives it when the stream is swapped
    (pytest's capture, a redirected CLI call) and then fails on a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings and errors."""
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=_CurrentStderr(),
        force=True,
    )
    # fvcore traces with TorchScript, which torch now marks deprecated on every call.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")

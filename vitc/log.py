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


class _DropExpected(logging.Filter):
    """Drops the records whose message contains one of `fragments`, and nothing else."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


_DEEPSPEED_START = _DropExpected("Setting accelerator to CPU")
_NO_CUDA = _DropExpected("No CUDA runtime is found")


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings and errors."""
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=_CurrentStderr(),
        force=True,
    )
    # Start-up lines that every CPU run printed and that say nothing the run's own first line does
    # not ("... 1 rank(s), cpu, ..."): DeepSpeed's "Setting accelerator to CPU" at import (its
    # logger "DeepSpeed", deepspeed/utils/logging.py) and torch's "No CUDA runtime is found" when a
    # CUDA toolkit is installed without a GPU (torch/utils/cpp_extension.py, imported by DeepSpeed's
    # op builder). Filters on those two messages alone: every other warning of both loggers shows.
    # Called before DeepSpeed is imported: logging.getLogger returns the logger it will use.
    logging.getLogger("DeepSpeed").addFilter(_DEEPSPEED_START)
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA)
    # fvcore traces with TorchScript, which torch now marks deprecated on every call.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")

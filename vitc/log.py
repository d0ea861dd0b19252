"""Logging setup: one call at the program's edge; every module uses `logging.getLogger(__name__)`."""

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path


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


FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"
RUN_LOG = "vitc.log"  # RUN_DIR/vitc.log: every line of the run, the libraries' too (`run_log`)
# vitc's modules whose INFO lines are details (the loader's sizes and buffers, values the config
# derives): in the run's log file, on the terminal only with --verbose
DETAIL_LOGGERS = ("vitc.data.loading", "vitc.config")


class _Terminal(logging.Filter):
    """What the terminal shows by default: vitc's lines at INFO (one per log interval from the
    trainer) except DETAIL_LOGGERS' INFO, and other libraries' errors; `--verbose` shows all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "vitc" or record.name.startswith("vitc."):
            return record.levelno >= logging.WARNING or not record.name.startswith(DETAIL_LOGGERS)
        return record.levelno >= logging.ERROR


class _PropagatingLogger(logging.Logger):
    """DeepSpeed's logger, created before DeepSpeed creates it: DeepSpeed adds its own handler on
    stdout and stops propagation (deepspeed/utils/logging.py `create_logger`), which put its lines
    on `vitc export`'s stdout, where only results belong. This one keeps no handler of its own and
    always propagates, so its lines reach vitc's handlers (the run's log file; errors on stderr)."""

    def addHandler(self, handler: logging.Handler) -> None:
        pass

    @property
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, _value: bool) -> None:
        pass


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings and errors. At INFO the terminal shows
    what `_Terminal` lets through; at DEBUG (`--verbose`) everything."""
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format=FORMAT,
        datefmt="%H:%M:%S",
        stream=_CurrentStderr(),
        force=True,
    )
    if level > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_Terminal())
    if "DeepSpeed" not in logging.Logger.manager.loggerDict:
        logging.setLoggerClass(_PropagatingLogger)
        try:
            logging.getLogger("DeepSpeed")
        finally:
            logging.setLoggerClass(logging.Logger)
    # Two start-up lines every CPU run printed that say nothing the run's own first line does not;
    # only those two messages are filtered (docs/engine.md, "Running"). Called before DeepSpeed is
    # imported: logging.getLogger returns the logger it will use.
    logging.getLogger("DeepSpeed").addFilter(_DEEPSPEED_START)
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA)
    # fvcore traces with TorchScript, which torch now marks deprecated on every call.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")


@contextmanager
def run_log(run_dir: str | Path, is_main: bool = True) -> Iterator[None]:
    """Every log line of the block (the libraries' too) appended to RUN_DIR/vitc.log, rank 0's."""
    if not is_main:
        yield
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(run_dir) / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class _LinesToLog:
    """A stdout stand-in that logs each printed line at INFO to `logger`."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def prints_to_log(logger_name: str) -> Iterator[None]:
    """What a library `print`s inside the block (DeepSpeed's zero_to_fp32 reports its progress that
    way) goes to the log as `logger_name`'s INFO lines, not to stdout, which carries only results."""
    writer = _LinesToLog(logging.getLogger(logger_name))
    with redirect_stdout(writer):
        yield
    writer.write("\n")

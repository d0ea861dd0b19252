"""The training engine: DeepSpeed ZeRO wrapped once around a plain model (the only DeepSpeed user)."""

import logging


class _DropExpected(logging.Filter):
    """Drops the records whose message contains one of `fragments`, and nothing else."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# Start-up lines that every CPU run printed and that say nothing the run's own first line does
# not ("... 1 rank(s), cpu, ..."): DeepSpeed's "Setting accelerator to CPU" at import (its
# logger "DeepSpeed", deepspeed/utils/logging.py) and torch's "No CUDA runtime is found" when a
# CUDA toolkit is installed without a GPU (torch/utils/cpp_extension.py, imported by DeepSpeed's
# op builder). Filters on those two messages alone: every other warning of both loggers shows.
# Added before DeepSpeed creates its logger: logging.getLogger returns the same object then.
logging.getLogger("DeepSpeed").addFilter(_DropExpected("Setting accelerator to CPU"))
logging.getLogger("torch.utils.cpp_extension").addFilter(_DropExpected("No CUDA runtime is found"))

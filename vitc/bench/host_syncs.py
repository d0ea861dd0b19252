"""Counting device -> host reads and host -> device tensor constructions by whose code made them.

A TorchFunctionMode sees every torch function and Tensor method called while it is on. Reads
(`.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `bool()`, `float()`, `int()` of a tensor) wait for
the device on a GPU; `torch.tensor`/`torch.as_tensor` copy host data to it. Each call is charged
to the first caller outside torch: vitc's own code, vitc's data loader (host-side data, apart),
DeepSpeed or other. On a CPU the same calls cost nothing, but they are the same calls: counting
them there proves the GPU step free of them (tests/test_host_syncs.py, vitc.bench.gpu_smoke).
"""

import collections
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
         torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__}
CONSTRUCTIONS = {torch.tensor, torch.as_tensor}
VITC = str(Path(__file__).resolve().parents[1])
LOADER = str(Path(VITC) / "data")
HERE = str(Path(__file__).resolve())


def caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and name != HERE:
            if name.startswith(LOADER):
                return "loader"
            if name.startswith(VITC):
                return "vitc"
            return "deepspeed" if "/deepspeed/" in name else "other"
        frame = frame.f_back
    return "other"


class CountHostSyncs(TorchFunctionMode):
    """counts[(whose, function name)] of the reads and constructions made while on."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS or func in CONSTRUCTIONS:
            self.counts[(caller(), getattr(func, "__name__", str(func)))] += 1
        return func(*args, **(kwargs or {}))

    def vitc_total(self) -> int:
        return sum(n for (whose, _), n in self.counts.items() if whose == "vitc")

"""Resident memory of this process, to check `vitc plan`'s memory figures against a real step.

A `RssProbe` started just before the model is built records the process's resident memory then
and resets the kernel's peak (VmHWM); `added()` after a step is the peak above that baseline:
the memory the model, DeepSpeed and the step added. Linux only (/proc/self).
"""

from dataclasses import dataclass
from pathlib import Path

from vitc.errors import VitcError

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    try:
        text = _STATUS.read_text()
    except OSError:
        raise VitcError("resident memory is read from /proc/self/status, which this system lacks")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise VitcError(f"/proc/self/status has no {field} line")


def current_rss() -> int:
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    return _status_bytes("VmHWM")


def reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (writing 5 to clear_refs; Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class RssProbe:
    """Peak resident memory above a baseline taken at `start()`."""

    baseline: int

    @classmethod
    def start(cls) -> "RssProbe":
        reset_peak_rss()
        return cls(current_rss())

    def added(self) -> int:
        return peak_rss() - self.baseline

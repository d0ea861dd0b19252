"""The accelerator table (`vitc/resources/gpus.yaml`): peak flops, memory and bandwidth of each GPU type."""

from dataclasses import dataclass
from pathlib import Path

from vitc.config import read_yaml
from vitc.errors import VitcError, did_you_mean
from vitc.resources import resource

DEFAULT_GPUS_FILE = resource("gpus.yaml")
PRECISIONS = ("bf16", "fp16", "fp32")
_KEYS = ("description", "kind", "peak_tflops", "memory_gib", "runtime_gib", "intra_node_gbps",
         "inter_node_gbps")
KINDS = ("gpu", "cpu")


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator. Flops count a fused multiply-add as 2 (datasheet convention)."""

    name: str
    description: str
    kind: str  # gpu | cpu: `train.precision: auto` (vitc.run) and DeepSpeed's overlap_comm follow it
    peak_tflops: dict[str, float | None]
    memory_gib: float
    runtime_gib: float  # taken before the model: CUDA context, NCCL and DeepSpeed's own buffers
    intra_node_gbps: float
    inter_node_gbps: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s (2 per multiply-add) in `precision`, or a VitcError if the GPU lacks it."""
        tflops = self.peak_tflops.get(precision)
        if tflops is None:
            raise VitcError(f"GPU '{self.name}' has no {precision} peak in the GPU table "
                            f"(it cannot run {precision}); choose another precision or GPU")
        return tflops * 1e12


def load_gpus(path: str | Path = DEFAULT_GPUS_FILE) -> dict[str, GpuSpec]:
    path = Path(path)
    data = read_yaml(path, "GPU table")
    entries = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise VitcError(f"{path}: expected a mapping 'gpus:' of GPU name -> {', '.join(_KEYS)}")
    return {name: _gpu(name, entry, path) for name, entry in entries.items()}


def _gpu(name: str, entry: object, path: Path) -> GpuSpec:
    where = f"{path}: gpus.{name}"
    if not isinstance(entry, dict):
        raise VitcError(f"{where}: expected a mapping with keys {', '.join(_KEYS)}")
    unknown = set(entry) - set(_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise VitcError(f"{where}: unknown key '{key}'{did_you_mean(key, _KEYS)}")
    missing = [k for k in _KEYS if k not in entry]
    if missing:
        raise VitcError(f"{where}: missing key(s) {', '.join(missing)}")
    peaks = entry["peak_tflops"]
    if not isinstance(peaks, dict) or set(peaks) - set(PRECISIONS):
        raise VitcError(f"{where}.peak_tflops: expected a mapping with keys among {', '.join(PRECISIONS)}")
    if entry["kind"] not in KINDS:
        raise VitcError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {entry['kind']!r}")
    for key in ("memory_gib", "intra_node_gbps", "inter_node_gbps"):
        _positive(entry[key], f"{where}.{key}")
    if isinstance(entry["runtime_gib"], bool) or not isinstance(entry["runtime_gib"], (int, float)) \
            or entry["runtime_gib"] < 0:
        raise VitcError(f"{where}.runtime_gib: expected a number >= 0, got {entry['runtime_gib']!r}")
    for precision, value in peaks.items():
        if value is not None:
            _positive(value, f"{where}.peak_tflops.{precision}")
    return GpuSpec(name, str(entry["description"]), entry["kind"],
                   {p: peaks.get(p) for p in PRECISIONS}, float(entry["memory_gib"]),
                   float(entry["runtime_gib"]), float(entry["intra_node_gbps"]),
                   float(entry["inter_node_gbps"]))


def _positive(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise VitcError(f"{where}: expected a positive number, got {value!r}")


def get_gpu(name: str, path: str | Path = DEFAULT_GPUS_FILE) -> GpuSpec:
    gpus = load_gpus(path)
    if name not in gpus:
        raise VitcError(f"unknown GPU '{name}'{did_you_mean(name, gpus)}; known GPUs in {path}: "
                        f"{', '.join(gpus)}")
    return gpus[name]

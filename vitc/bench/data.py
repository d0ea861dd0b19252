"""`vitc bench data`: images/s of the train loader against torchvision's ImageFolder and bare decode.

All candidates read the same JPEG bytes, taken from the shards given: (a) our loader over shards
rebuilt from them, (b) torchvision ImageFolder + DataLoader with the same recipe (PIL transforms,
MixUp/CutMix in the workers' collate, as torchvision's reference trainer does), (c) a bare
full-size PIL decode of every image, split over as many processes as the loaders have workers.
Rounds take turns so a shared machine's drift hits all alike; medians are reported. Per core =
images per CPU-second of the main process and its workers, which a shared machine's load does not
distort; wall-clock rates are printed too.
"""

import io
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import torchvision.transforms.v2 as v2
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from vitc.config import load_config
from vitc.data.loading.loader import build_train_loader
from vitc.data.loading.streams import shard_samples
from vitc.data.loading.transforms import MEAN, RATIO, STD, Recipe
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.data.shards.manifest import Manifest, resolve_shards
from vitc.errors import VitcError
from vitc.launch.env import DistEnv


@dataclass
class DataBench:
    images: int
    image_size: tuple[int, int]  # (height, width) of the first image
    batch: int
    workers: int
    auto_augment: str
    rates: dict[str, float]  # images per CPU-second: what one core delivers, whatever else runs
    wall_rates: dict[str, float]  # images per wall-clock second, on this (possibly shared) machine
    shard_build: dict[int, float] | None  # images/s by worker count

    def describe(self) -> str:
        a, b, c = (self.rates[k] for k in ("loader", "imagefolder", "decode"))
        wa, wb, wc = (self.wall_rates[k] for k in ("loader", "imagefolder", "decode"))
        lines = [f"data bench: {self.images} images ({self.image_size[1]}x{self.image_size[0]} JPEG), batch "
                 f"{self.batch}, {self.workers} workers, {self.auto_augment}, 224 px, median of rounds",
                 "                                  img/s/core (CPU time)   img/s (wall clock)",
                 f"  (a) vitc train loader          {a:8.0f}                {wa:8.0f}",
                 f"  (b) ImageFolder + DataLoader   {b:8.0f}                {wb:8.0f}",
                 f"  (c) bare PIL decode, full size {c:8.0f}                {wc:8.0f}",
                 f"  (a)/(b) = {a / b:.2f}  (target >= 1.25)    (a)/(c) = {a / c:.2f}  (target >= 0.45)"]
        if self.shard_build:
            lines.append("  shard build: " + ", ".join(f"{n} worker{'s' * (n > 1)} {r:.0f} img/s"
                                                       for n, r in self.shard_build.items()))
        return "\n".join(lines)


def _export_imagefolder(shards_dir: str, limit: int | None, root: Path) -> list[bytes]:
    """The first `limit` samples of the shards as root/<class>/<key>.jpg (bytes unchanged)."""
    shards, _ = resolve_shards(shards_dir, None, "train_shards")
    datas: list[bytes] = []
    for sample in (s for shard in shards for s in shard_samples(shard, 60.0)):
        if "jpg" not in sample or "cls" not in sample:
            continue
        path = root / f"class{int(sample['cls']):05d}" / f"{sample['__key__'].replace('/', '_')}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample["jpg"])
        datas.append(sample["jpg"])
        if limit is not None and len(datas) == limit:
            break
    if len(datas) < 2:
        raise VitcError(f"{shards_dir}: need at least 2 images with labels to benchmark, found {len(datas)}")
    return datas


def _reference_loader(folder: Path, recipe: Recipe, batch: int, workers: int) -> DataLoader:
    """torchvision's way: PIL transforms per sample, MixUp/CutMix in collate (its reference trainer)."""
    augment = {"autoaugment": [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
               "randaugment": [v2.RandAugment(recipe.randaugment_num_ops, recipe.randaugment_magnitude)],
               "none": []}[recipe.auto_augment]
    erase = [v2.RandomErasing(recipe.random_erasing)] if recipe.random_erasing > 0 else []
    transform = v2.Compose([v2.RandomResizedCrop(recipe.image_size, recipe.crop_scale, RATIO, antialias=True),
                            v2.RandomHorizontalFlip(recipe.hflip), *augment, v2.PILToTensor(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD]), *erase])
    mix = v2.RandomChoice([v2.MixUp(alpha=recipe.mixup_alpha, num_classes=recipe.num_classes),
                           v2.CutMix(alpha=recipe.cutmix_alpha, num_classes=recipe.num_classes)])

    def collate(samples):
        return mix(*torch.utils.data.default_collate(samples))

    return DataLoader(ImageFolder(str(folder), transform=transform), batch_size=batch, shuffle=True,
                      num_workers=workers, collate_fn=collate, multiprocessing_context="fork")


def _decode_all(datas: list[bytes]) -> int:
    for data in datas:
        Image.open(io.BytesIO(data)).convert("RGB").load()
    return len(datas)


def _decode_in_processes(datas: list[bytes], processes: int) -> int:
    """(c) at the loaders' parallelism, so per-core figures share the machine's conditions."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.map(_decode_all, [datas[i::processes] for i in range(processes)]))


def _cpu_seconds() -> float:
    """CPU time of this process and all its children: the finished ones (reaped) and the live ones
    (persistent DataLoader workers), whose time the kernel adds to RUSAGE_CHILDREN only once reaped."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:  # ended between listing and reading
            continue
        total += times.user + times.system
    return total


@dataclass
class Rate:
    """One timed pass: images per CPU-second (per core) and per wall-clock second."""

    per_core: float
    wall: float


def _timed(run) -> Rate:
    """`run()` returns how many images it produced; worker start-up is included, as in training."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    count = run()
    return Rate(count / (_cpu_seconds() - cpu), count / (time.perf_counter() - wall))


def _epoch(loader) -> int:
    return sum(images.shape[0] for images, _ in loader)


def bench_data(shards_dir: str, images: int | None = None, batch: int = 32, workers: int = 2, rounds: int = 5,
               auto_augment: str = "autoaugment", random_erasing: float = 0.25,
               shard_build: bool = True) -> DataBench:
    """Run all candidates `rounds` times, round-robin; see the module docstring."""
    # One intra-op thread here: idle OpenMP threads spin while the main process waits for batches,
    # and CPU-time accounting would bill that spinning to whichever candidate was running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(shards_dir, images, batch, workers, rounds, auto_augment, random_erasing, shard_build)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process keeps its own setting


def _bench(shards_dir: str, images: int | None, batch: int, workers: int, rounds: int,
           auto_augment: str, random_erasing: float, shard_build: bool) -> DataBench:
    with tempfile.TemporaryDirectory(prefix="vitc-bench-data-") as tmp:
        folder, shards = Path(tmp) / "imagefolder", Path(tmp) / "shards"
        datas = _export_imagefolder(shards_dir, images, folder)
        per_shard = math.ceil(len(datas) / (4 * workers))  # several shards per worker
        build_shards(folder, shards, "train", BuildOptions(samples_per_shard=per_shard), workers=1, progress=False)
        num_classes = Manifest.load(shards).num_classes
        cfg = load_config(None, [f"data.train_shards={shards}", f"data.workers={workers}",
                                 f"train.micro_batch={batch}", f"data.auto_augment={auto_augment}",
                                 f"data.random_erasing={random_erasing}", "data.shuffle_buffer=1000",
                                 "model.image_size=224"])
        ours = build_train_loader(cfg, DistEnv(), num_classes)
        reference = _reference_loader(folder, Recipe.from_config(cfg, num_classes), batch, workers)
        runs = {"loader": lambda: _epoch(ours), "imagefolder": lambda: _epoch(reference),
                "decode": lambda: _decode_in_processes(datas, workers)}
        rates: dict[str, list[Rate]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                rates[name].append(_timed(run))
        build_rates = None
        if shard_build:
            from vitc.bench.shards import bench_shard_build

            build_rates = bench_shard_build(folder, tmp, (1, 2), rounds=rounds)
    first = Image.open(io.BytesIO(datas[0]))
    return DataBench(len(datas), (first.height, first.width), batch, workers, auto_augment,
                     {k: statistics.median(r.per_core for r in v) for k, v in rates.items()},
                     {k: statistics.median(r.wall for r in v) for k, v in rates.items()}, build_rates)

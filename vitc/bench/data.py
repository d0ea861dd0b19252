"""`vitc bench data`: images/s of the train loader against torchvision's ImageFolder and bare decode.

All candidates read the same JPEG bytes, taken from the shards given: (a) our loader over shards
rebuilt from them, (b) torchvision ImageFolder + DataLoader with the same recipe (PIL transforms,
MixUp/CutMix in the workers' collate, as torchvision's reference trainer does), (c) a bare
full-size PIL decode of every image in one process. Each candidate runs in its own fresh process
with vitc's heap settings and one intra-op thread, warmed up alike (`vitc.bench.timing`); rounds
take turns so a shared machine's drift hits all alike; medians are reported. Per core = images per
CPU-second of the candidate's process and its workers, which a shared machine's load does not
distort; wall-clock rates are printed too ((c) runs in one process, the loaders in 1 + workers).
An earlier (c) forked a pool every round and shipped it the JPEG bytes: the fork, the pickling and
a heap without vitc's settings made it 30 % slower per core, and (a)/(c) looked 0.56, not 0.40.

(c) stays Pillow so that (a)/(c) compares across versions; (e) is the decoder vitc's loader runs
(libjpeg-turbo through simplejpeg, its fast IDCT and upsampling, full size), bare. When NVIDIA DALI
is installed (`pip install vitc[dali-bench]`), (d) is DALI's own CPU pipeline doing (a)'s work —
its webdataset reader over the same shards, `decoders.image_random_crop` (region-of-interest
decode of the RandomResizedCrop window), antialiased resize to the output size, flip, [DALI's
AutoAugment ImageNet policy,] normalize to float CHW — with `workers` threads, timed as (a).
"""

import importlib.util
import io
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import simplejpeg
import torch
import torchvision.transforms.v2 as v2
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from vitc.bench.timing import Contender, paired_ratio, time_in_processes
from vitc.config import load_config
from vitc.data.loading.gpu_decode import GpuDecode
from vitc.data.loading.loader import build_train_loader
from vitc.data.loading.streams import shard_samples
from vitc.data.loading.transforms import MEAN, RATIO, STD, Recipe
from vitc.data.shards.build import BuildOptions, build_shards
from vitc.data.shards.manifest import Manifest, resolve_shards
from vitc.distributed.env import DistEnv
from vitc.errors import VitcError
from vitc.run import resolve_run

ROWS = {"loader": "(a) vitc train loader", "imagefolder": "(b) ImageFolder + DataLoader",
        "decode": "(c) bare PIL decode, in-process", "dali": "(d) DALI's CPU pipeline",
        "turbo_decode": "(e) bare vitc decoder (simplejpeg)",
        "gpu_decode_cpu_share": "(f) (a)'s CPU share, decode on GPU"}


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


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
    ratios: tuple[float, float]  # (a)/(b) and (a)/(c) per core, paired group by group (vitc.bench.timing)
    spreads: dict[str, float] | None = None  # per candidate, its processes' per-core spread
    dali_ratio: float | None = None  # (a)/(d) per core, when DALI is installed
    random_erasing: float = 0.0

    def describe(self) -> str:
        title = (f"data bench: {self.images} images ({self.image_size[1]}x{self.image_size[0]} JPEG), batch "
                 f"{self.batch}, {self.workers} workers, {self.auto_augment}, random erasing "
                 f"{self.random_erasing:g}, 224 px, median of rounds")
        lines = [title, "                                   img/s/core (CPU time)   img/s (wall clock)"]
        lines += [f"  {ROWS[k]:33s}{self.rates[k]:8.0f}                {self.wall_rates[k]:8.0f}"
                  for k in ROWS if k in self.rates]
        lines.append(f"  (a)/(b) = {self.ratios[0]:.2f}  (target >= 1.25)    (a)/(c) = {self.ratios[1]:.2f}  "
                     "(target >= 0.6)")
        if self.dali_ratio is not None:
            lines.append(f"  (a)/(d) = {self.dali_ratio:.2f}  (target >= 1.5)")
        else:
            lines.append("  (d) DALI's CPU pipeline: not run (NVIDIA DALI is not installed: pip install vitc[dali-bench])")
        if self.spreads:
            lines.append("  each candidate is its median process; their spread per core: "
                         + ", ".join(f"{ROWS[k][:3]} {v:+.1%}" for k, v in self.spreads.items()))
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


def _decode(paths: list[Path]) -> int:
    for path in paths:
        Image.open(io.BytesIO(path.read_bytes())).convert("RGB").load()
    return len(paths)


def _turbo_decode(datas: list[bytes]) -> int:
    for data in datas:
        simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
    return len(datas)


def _images(folder: str) -> list[Path]:
    return sorted(Path(folder).rglob("*.jpg"))


def _single_threaded() -> None:
    # One intra-op thread in every contender: idle OpenMP threads spin while a main process waits
    # for batches, and CPU-time accounting would bill that spinning to the contender.
    torch.set_num_threads(1)


def _train_loader(overrides: list[str], num_classes: int, gpu=None):
    """The train loader the trainer builds for these overrides, on one rank."""
    cfg = load_config(None, [*overrides, f"model.num_classes={num_classes}"])
    return build_train_loader(cfg, resolve_run(cfg, 1, shards=("train",)), DistEnv(), gpu)


def loader_epoch(overrides: list[str], num_classes: int):
    """(a): one epoch of vitc's train loader per call."""
    _single_threaded()
    loader = _train_loader(overrides, num_classes)
    return lambda: sum(images.shape[0] for images, _ in loader)


def imagefolder_epoch(folder: str, overrides: list[str], num_classes: int, batch: int, workers: int):
    """(b): one epoch of torchvision's ImageFolder + DataLoader with the same recipe per call."""
    _single_threaded()
    recipe = Recipe.from_config(load_config(None, overrides), num_classes)
    loader = _reference_loader(Path(folder), recipe, batch, workers)
    return lambda: sum(images.shape[0] for images, _ in loader)


def decode_pass(folder: str):
    """(c): every image's bytes decoded full size in this process (file reads are in the page cache)."""
    _single_threaded()
    paths = _images(folder)
    return lambda: _decode(paths)


class _CpuShareOfGpuDecode(GpuDecode):
    """What `data.decode_device: cuda` leaves on the CPU's workers: read, shuffle, parse each JPEG
    header, plan each crop box. Batches come out as placeholders (1x1 px): no decode at all."""

    def batches(self, items, finish):
        for worker, (datas, _boxes, labels, seeds), slot in items:
            yield worker, (torch.zeros(len(datas), 3, 1, 1, dtype=torch.uint8), labels, seeds), slot


def gpu_decode_cpu_share_epoch(overrides: list[str], num_classes: int):
    """(f): one epoch of the train loader's CPU work under `data.decode_device: cuda`, per call."""
    _single_threaded()
    loader = _train_loader(overrides, num_classes, _CpuShareOfGpuDecode(1, torch.device("cpu")))
    return lambda: sum(labels.shape[0] for _, labels in loader)


def turbo_decode_pass(folder: str):
    """(e): every image decoded full size by vitc's own decoder (libjpeg-turbo, fast IDCT and upsampling)."""
    _single_threaded()
    datas = [path.read_bytes() for path in _images(folder)]
    return lambda: _turbo_decode(datas)


def dali_epoch(shards_dir: str, batch: int, threads: int, auto_augment: bool, image_size: int = 224):
    """(d): one epoch of DALI's own CPU pipeline over the shards, the work (a) does, per call."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import auto_augment as dali_auto_augment

    _single_threaded()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="nvidia.dali")  # its own aliases
    shards, _ = resolve_shards(shards_dir, None, "train_shards")
    samples = sum(s.samples for s in shards)

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=0, enable_conditionals=True)
    def pipeline():
        jpegs, labels = fn.readers.webdataset(paths=[s.url for s in shards], ext=["jpg", "cls"],
                                              random_shuffle=True, initial_fill=1000, name="reader")
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
        images = fn.resize(images, size=[image_size, image_size], antialias=True)
        if auto_augment:
            images = dali_auto_augment.auto_augment_image_net(images, shape=[image_size, image_size])
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(probability=0.5),
                                          mean=list(MEAN), std=list(STD), dtype=types.FLOAT, output_layout="CHW")
        return images, labels

    pipe = pipeline()
    pipe.build()
    iterations = samples // batch

    def epoch() -> int:
        for _ in range(iterations):
            pipe.run()
        return iterations * batch

    return epoch


def bench_data(shards_dir: str, images: int | None = None, batch: int = 32, workers: int = 2, rounds: int = 5,
               auto_augment: str = "autoaugment", random_erasing: float = 0.25,
               shard_build: bool = True, warmup: int = 1, processes: int = 1) -> DataBench:
    """Time all candidates, each in its own process, `rounds` rounds interleaved; see the module
    docstring."""
    with tempfile.TemporaryDirectory(prefix="vitc-bench-data-") as tmp:
        folder, shards = Path(tmp) / "imagefolder", Path(tmp) / "shards"
        datas = _export_imagefolder(shards_dir, images, folder)
        per_shard = math.ceil(len(datas) / (4 * workers))  # several shards per worker
        build_shards(folder, shards, "train", BuildOptions(samples_per_shard=per_shard), workers=1, progress=False)
        num_classes = Manifest.load(shards).num_classes
        overrides = [f"data.train_shards={shards}", f"data.workers={workers}", f"train.micro_batch={batch}",
                     f"data.auto_augment={auto_augment}", f"data.random_erasing={random_erasing}",
                     "data.shuffle_buffer=1000", "model.image_size=224"]
        contenders = [
            Contender("loader", f"{__name__}:loader_epoch", {"overrides": overrides, "num_classes": num_classes}),
            Contender("imagefolder", f"{__name__}:imagefolder_epoch",
                      {"folder": str(folder), "overrides": overrides, "num_classes": num_classes,
                       "batch": batch, "workers": workers}),
            Contender("decode", f"{__name__}:decode_pass", {"folder": str(folder)}),
            Contender("turbo_decode", f"{__name__}:turbo_decode_pass", {"folder": str(folder)}),
            Contender("gpu_decode_cpu_share", f"{__name__}:gpu_decode_cpu_share_epoch",
                      {"overrides": overrides, "num_classes": num_classes})]
        if dali_installed():
            contenders.append(Contender("dali", f"{__name__}:dali_epoch",
                                        {"shards_dir": str(shards), "batch": batch, "threads": workers,
                                         "auto_augment": auto_augment == "autoaugment"}))
        timings = time_in_processes(contenders, warmup, 1, rounds, processes)
        build_rates = None
        if shard_build:
            from vitc.bench.shards import bench_shard_build

            build_rates = bench_shard_build(folder, tmp, (1, 2), rounds=rounds)
    first, loader = Image.open(io.BytesIO(datas[0])), timings["loader"]
    return DataBench(len(datas), (first.height, first.width), batch, workers, auto_augment,
                     {k: t.per_core for k, t in timings.items()}, {k: t.rate for k, t in timings.items()},
                     build_rates, (paired_ratio(loader, timings["imagefolder"], per_core=True),
                                   paired_ratio(loader, timings["decode"], per_core=True)),
                     {k: t.per_core_spread for k, t in timings.items()} if processes > 1 else None,
                     paired_ratio(loader, timings["dali"], per_core=True) if "dali" in timings else None,
                     random_erasing)

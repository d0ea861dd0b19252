"""The streaming loader: equal batches on every rank, each sample once, resumable, never hangs.

Shards are written here with webdataset's TarWriter and a `vitc-shards/1` manifest. Sample k has
class k, so labels identify samples (augmentation and mixing are off where identity matters).
"""

import functools
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import webdataset as wds
from loaders import eval_loader, train_loader
from PIL import Image

from vitc.config import load_config
from vitc.data.loading.epoch_plan import (
    EpochPlanner,
    even_quotas,
    train_batches_per_rank,
)
from vitc.data.loading.slots import PER_WORKER, BatchSlots
from vitc.data.loading.streams import shard_samples
from vitc.data.shards.manifest import Manifest, Shard, ShardRecord, resolve_shards
from vitc.data.shards.sample_index import sample_index
from vitc.distributed.env import DistEnv
from vitc.errors import VitcError
from vitc.run import class_count

SIZES = (9, 3, 14, 6, 11, 2, 8)  # 7 shards of unequal sizes, 53 samples
BATCH = 4


def jpeg_bytes(index: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(index)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(root, sizes=SIZES, bad: dict | None = None, images: dict | None = None):
    """Shards `train-%06d.tar` + manifest; `bad` maps sample index -> 'truncated' | 'no_label';
    `images` maps sample index -> (extension, encoded bytes) in place of its JPEG."""
    root.mkdir(parents=True, exist_ok=True)
    bad, images, records, k = bad or {}, images or {}, [], 0
    for i, n in enumerate(sizes):
        path = root / f"train-{i:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for _ in range(n):
                sample = {"__key__": f"s{k:05d}", "jpg": jpeg_bytes(k), "cls": str(k).encode()}
                if bad.get(k) == "truncated":
                    sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2]
                if bad.get(k) == "no_label":
                    del sample["cls"]
                if k in images:
                    del sample["jpg"]
                    sample[images[k][0]] = images[k][1]
                writer.write(sample)
                k += 1
        records.append(ShardRecord.of_file(path, n))
    Manifest("train", records, {f"c{j}": j for j in range(k)}, {"kind": "imagefolder", "path": "test"}).save(root)
    return root


def plain_config(shards, *overrides):
    """Identity-preserving recipe: no auto-augment, no mixing, no smoothing -> int64 labels."""
    return load_config(None, [f"data.train_shards={shards}", f"data.val_shards={shards}", "model.image_size=16",
                              f"train.micro_batch={BATCH}", "data.auto_augment=none", "data.mixup_alpha=0",
                              "data.cutmix_alpha=0", "data.label_smoothing=0", "data.shuffle_buffer=8",
                              "data.workers=2", *overrides])


def labels_of(batches) -> list[int]:
    return [int(v) for _, labels in batches for v in labels]


def _rank_main(rank: int, shards: str, init_file: str, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg = plain_config(shards)
    dist = DistEnv(rank=rank, world_size=2)
    loader = train_loader(cfg, dist, num_classes=sum(SIZES))
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        epochs.append(labels_of(loader))
    # interrupted after 3 batches of epoch 0, then a new loader resumes from the saved state
    first = train_loader(cfg, dist, num_classes=sum(SIZES))
    head = []
    for images, labels in first:
        head += labels.tolist()
        if len(head) == 3 * BATCH:
            break
    resumed = train_loader(cfg, dist, num_classes=sum(SIZES))
    resumed.load_state_dict(first.state_dict())
    tail = labels_of(resumed)
    evaluated = list(eval_loader(cfg, dist))
    result = {"len": len(loader), "remainder": loader.remainder, "epochs": epochs, "head": head, "tail": tail,
              "eval_batches": len(evaluated), "eval_labels": labels_of(evaluated),
              "shapes": [list(evaluated[0][0].shape), str(evaluated[0][0].dtype)]}
    gathered = [None, None]
    torch_dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    # two ranks of loaders, started once for the tests below: in the fast tier or out of it together
    root = tmp_path_factory.mktemp("loader")
    shards = write_shards(root / "shards")
    mp.spawn(_rank_main, args=(str(shards), str(root / "init"), str(root / "out.json")), nprocs=2)
    return json.loads((root / "out.json").read_text())


def test_every_rank_yields_the_same_number_of_batches(two_rank_run):
    rank0, rank1 = two_rank_run
    assert rank0["len"] == rank1["len"] > 0
    for rank in two_rank_run:
        assert [len(e) for e in rank["epochs"]] == [rank["len"] * BATCH] * 2


def test_no_sample_twice_and_union_is_dataset_less_remainder(two_rank_run):
    for epoch in (0, 1):
        seen = two_rank_run[0]["epochs"][epoch] + two_rank_run[1]["epochs"][epoch]
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(range(sum(SIZES)))
        assert len(seen) == sum(SIZES) - two_rank_run[0]["remainder"]


def test_the_samples_an_epoch_leaves_out_are_read_in_the_next(two_rank_run):
    rank0, rank1 = two_rank_run
    assert 0 < rank0["remainder"] < 2 * BATCH  # less than a batch on every rank
    left_out = set(range(sum(SIZES))) - set(rank0["epochs"][0] + rank1["epochs"][0])
    assert len(left_out) == rank0["remainder"]
    assert left_out <= set(rank0["epochs"][1] + rank1["epochs"][1])


def test_a_new_epoch_is_a_new_order(two_rank_run):
    for rank in two_rank_run:
        assert rank["epochs"][0] != rank["epochs"][1]


def test_resume_continues_the_epoch(two_rank_run):
    for rank in two_rank_run:
        full = rank["epochs"][0]
        assert rank["head"] == full[: len(rank["head"])]  # same seed + epoch -> same order
        assert sorted(rank["head"] + rank["tail"]) == sorted(full)  # the rest, nothing replayed
        assert not set(rank["head"]) & set(rank["tail"])


def test_eval_sees_every_sample_exactly_once_across_ranks(two_rank_run):
    rank0, rank1 = two_rank_run
    assert rank0["eval_batches"] == rank1["eval_batches"]
    labels = [v for v in rank0["eval_labels"] + rank1["eval_labels"] if v >= 0]  # -1 = padding
    assert sorted(labels) == list(range(sum(SIZES)))
    assert rank0["shapes"] == [[BATCH, 3, 16, 16], "torch.float32"]


def test_a_rank_with_one_shard_keeps_every_worker_reading(tmp_path):
    shards = write_shards(tmp_path, sizes=(32,))
    loader = train_loader(plain_config(shards, "data.workers=4"), DistEnv(), num_classes=32)
    labels = labels_of(loader)
    assert loader.state_dict()["worker_batches"] == [2, 2, 2, 2]  # batches each worker delivered
    assert sorted(labels) == list(range(32)) and loader.remainder == 0


@pytest.mark.parametrize("sizes", [SIZES, (50,), (7, 7)])
@pytest.mark.parametrize("world_size,workers", [(1, 4), (2, 4), (3, 2), (4, 1)])
def test_every_worker_of_every_rank_reads_an_equal_share_once(sizes, world_size, workers):
    shards = tuple(Shard(f"train-{i:06d}.tar", f"/s/train-{i:06d}.tar", n) for i, n in enumerate(sizes))
    batch, everything = 2, {(f"train-{i:06d}.tar", k) for i, n in enumerate(sizes) for k in range(n)}
    batches = train_batches_per_rank(sum(sizes), batch, world_size)
    left_out = set()
    for epoch in range(3):
        read = []
        for rank in range(world_size):
            plans = EpochPlanner(shards, workers, batch, batches, 7, rank, world_size).plans(epoch, None, 0.0)
            assert [p.samples for p in plans] == [q * batch for q in even_quotas(batches, workers)]
            assert all(p.samples > 0 for p in plans) or batches < workers  # no idle worker
            read += [(p.shard.name, k) for plan in plans for p in plan.pieces for k in range(p.start, p.stop)]
        assert len(read) == len(set(read)) == world_size * batches * batch  # each sample at most once
        assert left_out <= set(read)  # what the last epoch left out is read in this one
        left_out = everything - set(read)
        assert len(left_out) < world_size * batch


def test_bad_samples_are_skipped_and_counted(tmp_path):
    shards = write_shards(tmp_path, sizes=(10, 6), bad={2: "truncated", 12: "no_label"})
    loader = train_loader(plain_config(shards, "data.workers=0", "data.max_bad_fraction=0.5"),
                                DistEnv(), num_classes=16)
    labels = labels_of(loader)
    assert loader.bad_samples == 2
    assert 2 not in labels and 12 not in labels
    assert len(labels) == len(loader) * BATCH


def test_bad_samples_above_the_threshold_stop_the_run_naming_the_shard(tmp_path):
    shards = write_shards(tmp_path, sizes=(8,), bad={5: "truncated"})
    loader = train_loader(plain_config(shards, "data.workers=0", "data.max_bad_fraction=0"), DistEnv(),
                                num_classes=8)
    with pytest.raises(VitcError, match=r"train-000000\.tar.*max_bad_fraction"):
        list(loader)


def test_missing_shard_file_is_an_error_naming_it(tmp_path):
    shards = write_shards(tmp_path, sizes=(8, 8))
    (shards / "train-000001.tar").unlink()
    loader = train_loader(plain_config(shards), DistEnv(), num_classes=16)
    with pytest.raises(VitcError, match=r"train-000001\.tar"):
        list(loader)


def test_a_stalled_pipe_is_an_error_within_the_timeout(tmp_path):
    shards = write_shards(tmp_path, sizes=(8,))
    url = f"pipe:sleep 60; cat {shards}/train-000000.tar"
    cfg = plain_config(shards, "data.workers=0", "data.read_timeout_s=1")
    cfg.data.train_shards, cfg.data.train_manifest = [url], str(shards / "manifest.json")
    with pytest.raises(VitcError, match=r"shard train-000000\.tar: no data for 1 s"):
        list(train_loader(cfg, DistEnv(), num_classes=8))


def test_a_failing_pipe_command_is_an_error_naming_the_shard(tmp_path):
    shards = write_shards(tmp_path, sizes=(8,))
    cfg = plain_config(shards, "data.workers=0")
    cfg.data.train_shards = f"pipe:cat {tmp_path}/nowhere/train-000000.tar"
    cfg.data.train_manifest = str(shards / "manifest.json")
    with pytest.raises(VitcError, match=r"shard train-000000\.tar: read failed: the command `cat .*/nowhere/"
                                         r"train-000000\.tar` exited with status 1$"):
        list(train_loader(cfg, DistEnv(), num_classes=8))


def test_brace_pattern_needs_and_uses_a_manifest(tmp_path):
    shards = write_shards(tmp_path / "s", sizes=(8, 8))
    cfg = plain_config(f"{shards}/train-{{000000..000001}}.tar", "data.workers=0", "model.num_classes=auto")
    assert class_count(cfg) == 16
    assert len(labels_of(train_loader(cfg, DistEnv(), num_classes=16))) == 4 * BATCH
    cfg.data.train_shards = f"pipe:cat {shards}/train-000000.tar"
    with pytest.raises(VitcError, match="data.train_manifest"):
        train_loader(cfg, DistEnv(), num_classes=16)


def serve(directory) -> http.server.ThreadingHTTPServer:
    """An HTTP server on localhost for the files of `directory`."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_manifest_at_an_http_url_is_read_through_iopath(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath_cache"))  # where iopath downloads to
    shards = write_shards(tmp_path / "s", sizes=(8, 8))
    server = serve(shards)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        cfg = plain_config(f"{shards}/train-{{000000..000001}}.tar", "data.workers=0",
                           f"data.train_manifest={url}/manifest.json", "model.num_classes=auto")
        assert class_count(cfg) == 16
        assert len(labels_of(train_loader(cfg, DistEnv(), num_classes=16))) == 4 * BATCH
        cfg.data.train_manifest = f"{url}/elsewhere/manifest.json"
        with pytest.raises(VitcError, match=r"shard manifest .*/elsewhere/manifest\.json cannot be read"):
            class_count(cfg)
    finally:
        server.shutdown()


def test_paper_recipe_gives_soft_targets(tmp_path):
    shards = write_shards(tmp_path, sizes=(8, 8))
    cfg = load_config(None, [f"data.train_shards={shards}", "model.image_size=16", f"train.micro_batch={BATCH}",
                             "data.workers=0", "data.random_erasing=0.25"])
    images, targets = next(iter(train_loader(cfg, DistEnv(), num_classes=16)))
    assert images.shape == (BATCH, 3, 16, 16) and images.dtype == torch.float32
    assert targets.shape == (BATCH, 16) and torch.allclose(targets.sum(1), torch.ones(BATCH))


@pytest.mark.parametrize("key", ["decode_device", "batch_device"])
def test_cuda_options_fall_back_to_cpu_with_a_warning(tmp_path, caplog, key):
    shards = write_shards(tmp_path, sizes=(8,))
    cfg = plain_config(shards, "data.workers=0", f"data.{key}=cuda")
    with caplog.at_level(logging.WARNING):
        loader = train_loader(cfg, DistEnv(), num_classes=8)
    assert f"data.{key} is 'cuda' but CUDA is not available" in caplog.text
    assert len(labels_of(loader)) == 2 * BATCH


def test_resampled_mode_yields_num_samples_over_batch(tmp_path):
    shards = write_shards(tmp_path, sizes=(5, 3))
    loader = train_loader(plain_config(shards, "data.resampled=true"), DistEnv(), num_classes=8)
    assert len(loader) == 8 // BATCH
    assert len(labels_of(loader)) == len(loader) * BATCH


def test_resume_on_another_worker_count_continues_at_the_same_fraction(tmp_path, caplog):
    shards = write_shards(tmp_path, sizes=(9, 7, 8, 8))
    first = train_loader(plain_config(shards), DistEnv(), num_classes=32)
    for done, _ in enumerate(first, start=1):
        if done == 3:
            break
    resumed = train_loader(plain_config(shards, "data.workers=0"), DistEnv(), num_classes=32)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(first.state_dict())
    assert "same fraction" in caplog.text
    rest = labels_of(resumed)
    skipped = int(len(resumed) * 3 / len(first))  # the same fraction of the new epoch length
    assert len(rest) == (len(resumed) - skipped) * BATCH and resumed.batches_consumed == len(resumed)


def test_persistent_workers_serve_each_epoch_in_its_own_order(tmp_path):
    shards = write_shards(tmp_path, sizes=(9, 7, 8, 8))
    loader = train_loader(plain_config(shards), DistEnv(), num_classes=32)
    seen, workers = [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen.append(labels_of(loader))
        workers.append({p.pid for p in psutil.Process().children()})
    assert workers[0] and workers[0] == workers[1] == workers[2]  # forked once, kept
    for epoch, labels in enumerate(seen):  # the same order a loader forking workers for that epoch gives
        fresh = train_loader(plain_config(shards, "data.persistent_workers=false"), DistEnv(), 32)
        fresh.set_epoch(epoch)
        assert labels_of(fresh) == labels
    assert seen[0] != seen[1] != seen[2]


def test_an_epoch_left_part_way_continues_when_iterated_again(tmp_path):
    shards = write_shards(tmp_path, sizes=(9, 7, 8, 8))
    whole = labels_of(train_loader(plain_config(shards), DistEnv(), num_classes=32))
    loader = train_loader(plain_config(shards), DistEnv(), num_classes=32)
    head = []
    for images, labels in loader:
        head += labels.tolist()
        if len(head) == 3 * BATCH:
            break
    rest = labels_of(loader)  # the same workers, told to skip what was consumed
    assert sorted(head + rest) == sorted(whole) and len(head + rest) == len(whole)
    assert head == whole[: len(head)]


def test_batch_buffers_are_reused_and_a_new_pass_takes_over_those_left_unread():
    slots = BatchSlots(workers=1, batch=3, size=2)
    images = [torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (7, 8)]
    refs = [slots.fill(0, 1, images) for _ in range(PER_WORKER)]  # pass 1 fills every buffer
    assert sorted(r.slot for r in refs) == list(range(PER_WORKER)) and refs[0].count == 2
    assert torch.equal(slots.take(0, refs[0]), torch.stack(images))
    slots.release(0, refs[0])
    assert slots.fill(0, 1, images[:1]).slot == refs[0].slot  # the one released
    # pass 2: the batches pass 1 left (abandoned, never to be released) do not block it
    again = [slots.fill(0, 2, images[1:]) for _ in range(PER_WORKER)]
    assert sorted(r.slot for r in again) == list(range(PER_WORKER))
    assert all(torch.equal(slots.take(0, r), torch.stack(images[1:])) for r in again)


def test_too_little_shared_memory_for_the_batch_buffers_is_one_clear_error(monkeypatch):
    def full(self):
        raise RuntimeError("unable to write to file </torch_1_2>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    with pytest.raises(VitcError, match=r"74 MB of batch buffers .*/dev/shm.*data.workers"):
        BatchSlots(workers=4, batch=32, size=224)


def test_a_loader_state_of_another_version_is_refused(tmp_path):
    loader = train_loader(plain_config(write_shards(tmp_path, sizes=(8,)), "data.workers=0"), DistEnv(), 8)
    with pytest.raises(VitcError, match="loader state"):
        loader.load_state_dict({"version": 99})


@pytest.mark.slow
def test_bench_data_prints_rates_and_ratios(tmp_path, capsys):
    from vitc.cli import main

    shards = write_shards(tmp_path / "shards", sizes=(6, 6))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # not the bench's 1 (tests/conftest.py runs torch on one thread)
    try:
        assert main(["bench", "data", "--shards", str(shards), "--images", "8", "--batch", "2", "--rounds", "1",
                     "--no-shard-build", "--processes", "2"]) == 0
        assert torch.get_num_threads() == threads + 1  # the bench runs single-threaded, then restores
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "(a) vitc train loader" in out and "(a)/(b) = " in out and "(a)/(c) = " in out
    assert "each candidate is its median process; their spread per core: (a) +" in out


# tests/ on the path for loaders.py, the repository for vitc (as pytest runs it)
TESTS_PATH = os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
_SCRIPT = """
import sys
from vitc.config import load_config
from loaders import train_loader
from vitc.distributed.env import DistEnv
loader = train_loader(load_config(None, sys.argv[2:]), DistEnv(), num_classes=32)
if sys.argv[1] == "whole pass":
    sum(len(labels) for _, labels in loader)
elif sys.argv[1] == "part of a pass":
    batches = iter(loader)
    next(batches)  # suspended part-way and still referenced at exit
else:
    loader.start_workers()  # forked, never given a pass
print("end of script", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("use", ["whole pass", "part of a pass", "workers started, never used"])
def test_a_script_using_the_loader_exits_without_closing_it(tmp_path, use):
    # Loader workers ignore SIGTERM, which is how multiprocessing's exit handler stops DataLoader's
    # workers before joining them: a script that never calls loader.close() hung at exit.
    shards = write_shards(tmp_path / "shards", sizes=(9, 7, 8, 8))
    overrides = [f"data.train_shards={shards}", "model.image_size=16", f"train.micro_batch={BATCH}",
                 "data.workers=2", "data.shuffle_buffer=8"]  # persistent workers and the default recipe
    try:
        done = subprocess.run([sys.executable, "-c", _SCRIPT, use, *overrides], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": TESTS_PATH})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script hung at exit ({use}); its output: {e.stdout!r}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "end of script"


@pytest.mark.parametrize("kept", [0.3, 0.5, 0.9])
def test_a_truncated_shard_is_named_as_truncated_wherever_it_was_cut(tmp_path, kept):
    shards = write_shards(tmp_path, sizes=(8,))
    tar = shards / "train-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:int(len(data) * kept) // 512 * 512])  # at a tar block: parses as a shorter tar
    with pytest.raises(VitcError, match=r"shard train-000000\.tar: truncated: it ends after [\d,]+ of the "
                                        rf"{len(data):,} bytes its manifest records"):
        list(train_loader(plain_config(shards, "data.workers=0", "data.max_bad_fraction=0"), num_classes=8))


def with_sample_index(shards: Path, stride: int) -> Path:
    """The shards' manifest rewritten with a sample index every `stride` samples (vitc writes one
    every INDEX_STRIDE = 256, more than these test shards hold)."""
    manifest = Manifest.load(shards)
    manifest.shards = [replace(r, index=sample_index(shards / r.name, r.samples, stride)) for r in manifest.shards]
    manifest.save(shards)
    assert all(r.index for r in manifest.shards if r.samples > stride)
    return shards


def keys_from(shard: Shard, start: int = 0) -> list[str]:
    return [sample["__key__"] for sample in shard_samples(shard, 10.0, start)]


def test_a_shard_read_from_any_sample_gives_what_a_full_read_gives_from_there(tmp_path):
    shards = with_sample_index(write_shards(tmp_path, sizes=(20,)), 5)
    shard = resolve_shards(str(shards), None, "train_shards")[0][0]
    full = keys_from(shard)
    assert len(full) == 20 and [e[0] for e in shard.index] == [5, 10, 15]
    assert all(keys_from(shard, start) == full[start:] for start in range(21))


def test_a_reader_opened_at_an_indexed_sample_reads_none_of_the_bytes_before_it(tmp_path):
    shards = with_sample_index(write_shards(tmp_path, sizes=(20,)), 5)
    shard = resolve_shards(str(shards), None, "train_shards")[0][0]
    full = keys_from(shard)
    tar = shards / shard.name
    offset = shard.index[-1][1]  # where sample 15 starts
    data = bytearray(tar.read_bytes())
    data[:offset] = b"\xff" * offset  # everything before it unreadable
    tar.write_bytes(bytes(data))
    assert keys_from(shard, 15) == full[15:] and keys_from(shard, 17) == full[17:]
    with pytest.raises(VitcError, match=r"shard train-000000\.tar"):
        keys_from(shard, 14)  # opened at sample 10: it reads the damaged bytes


@pytest.mark.parametrize("rewrite", ["other samples", "another layout"])
def test_a_sample_index_that_does_not_match_its_shard_is_one_error_naming_the_fix(tmp_path, rewrite):
    shards = with_sample_index(write_shards(tmp_path / "a", sizes=(12,)), 4)
    shard = resolve_shards(str(shards), None, "train_shards")[0][0]
    # the shard file replaced and its manifest not rebuilt
    other = write_shards(tmp_path / "b", sizes=(5, 12) if rewrite == "other samples" else (12,),
                         images={3: ("png", b"\x89PNG" + b"x" * 3000)})
    (shards / shard.name).write_bytes(max(other.glob("*.tar")).read_bytes())
    with pytest.raises(VitcError, match=r"shard train-000000\.tar: its manifest's sample index puts sample 4 "
                                        r"\('s00004'\) at byte [\d,]+, which this file does not: .*vitc shards index"):
        keys_from(shard, 6)


def test_workers_whose_pieces_start_mid_shard_seek_and_give_the_batches_a_full_read_gives(tmp_path):
    # the default recipe (crops, flips, AutoAugment, mixing) with 2 workers: pixels, targets and order
    shards = write_shards(tmp_path, sizes=(23, 17, 31))
    cfg = load_config(None, [f"data.train_shards={shards}", "model.image_size=16", f"train.micro_batch={BATCH}",
                             "data.workers=2", "data.shuffle_buffer=8"])

    def epoch(number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = train_loader(cfg)
        loader.set_epoch(number)
        planned = [p.start for w in loader.stream.planner.plans(number, None, 0.0) for p in w.pieces]
        assert any(start >= 3 for start in planned)  # pieces that begin past an indexed sample
        return [(x.clone(), y.clone()) for x, y in loader]

    read = {number: epoch(number) for number in (0, 1)}
    with_sample_index(shards, 3)
    for number, batches in read.items():
        seeked = epoch(number)
        assert len(seeked) == len(batches) and all(
            torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(batches, seeked))



@pytest.mark.parametrize("kept", [0.3, 0.5, 0.9])  # cut before, near and after where sample 4 starts
def test_a_truncated_shard_opened_at_an_indexed_sample_is_named_as_truncated(tmp_path, kept):
    shards = with_sample_index(write_shards(tmp_path, sizes=(8,)), 4)
    shard = resolve_shards(str(shards), None, "train_shards")[0][0]
    tar = shards / shard.name
    data = tar.read_bytes()
    cut = int(len(data) * kept) // 512 * 512
    tar.write_bytes(data[:cut])
    with pytest.raises(VitcError, match=rf"shard train-000000\.tar: truncated: it ends after {cut:,} of the "
                                        rf"{len(data):,} bytes its manifest records"):
        keys_from(shard, 5)

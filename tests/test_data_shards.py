"""`vitc shards build|verify|index`: WebDataset shards from an ImageFolder or per-synset tars."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from vitc.cli import main
from vitc.data.shards.manifest import Manifest, file_sha256
from vitc.data.shards.synsets import map_classes, read_class_map
from vitc.errors import VitcError


def shard_samples(path: Path) -> list[tuple[str, bytes, int]]:
    """(key, jpg bytes, label from .cls or .json) of every sample in a shard, in order."""
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = [name.removesuffix(".jpg") for name in files if name.endswith(".jpg")]
    return [(k, files[f"{k}.jpg"], int(files[f"{k}.cls"]) if f"{k}.cls" in files
             else json.loads(files[f"{k}.json"])["label"]) for k in keys]


def all_samples(out: Path) -> list[tuple[str, bytes, int]]:
    return [s for path in Manifest.load(out).shard_paths(out) for s in shard_samples(path)]


def copy_with_bad_inputs(folder: Path, dest: Path) -> Path:
    """`folder` plus a truncated JPEG and a text file, which the build must skip and list."""
    shutil.copytree(folder, dest)
    first_class = sorted(p for p in dest.iterdir())[0]
    good = sorted(first_class.glob("*.jpg"))[0].read_bytes()
    (first_class / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (first_class / "notes.txt").write_text("not an image")
    return dest


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def file_identity(path: Path) -> tuple[int, int]:
    """(inode, mtime): a file replaced by a rename, or rewritten, gets a new one."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def build(src: Path, out: Path, *options: str) -> int:
    return main(["shards", "build", str(src), str(out), "--prefix", "train", *options])


def test_build_from_imagefolder_writes_shards_and_manifest(photo_folder, tmp_path):
    src = copy_with_bad_inputs(photo_folder, tmp_path / "src")

    assert build(src, tmp_path / "out", "--samples-per-shard", "5") == 0

    manifest = Manifest.load(tmp_path / "out")
    class_names = sorted(p.name for p in photo_folder.iterdir())
    assert manifest.classes == {name: i for i, name in enumerate(class_names)}
    assert manifest.num_classes == len(class_names)
    # 26 inputs planned 5 a shard; the 2 bad ones leave a gap in theirs
    assert manifest.num_samples == 24 and all(s.samples <= 5 for s in manifest.shards)
    assert [s.name for s in manifest.shards] == [f"train-{i:06d}.tar" for i in range(6)]
    assert manifest.source == {"kind": "imagefolder", "path": str(src.resolve())}
    for record, path in zip(manifest.shards, manifest.shard_paths(tmp_path / "out")):
        assert record.bytes == path.stat().st_size and record.sha256 == file_sha256(path)
    reasons = {Path(s.input).name: s.reason for s in manifest.skipped}
    assert reasons.keys() == {"truncated.jpg", "notes.txt"}
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["notes.txt"]
    for key, _, label in all_samples(tmp_path / "out"):
        assert class_names[label] == key.split("/")[0]


def make_synset_tars(folder: Path, dest: Path) -> dict[str, list[bytes]]:
    """One `n0000000i.tar` per class folder of `folder`; returns each synset's JPEG bytes."""
    dest.mkdir()
    contents = {}
    for i, class_dir in enumerate(sorted(folder.iterdir())):
        synset = f"n{i:08d}"
        with tarfile.open(dest / f"{synset}.tar", "w") as tar:
            for image in sorted(class_dir.glob("*.jpg")):
                tar.add(image, arcname=f"{synset}_{image.stem}.JPEG")
        contents[synset] = [p.read_bytes() for p in sorted(class_dir.glob("*.jpg"))]
    return contents


def test_build_from_synset_tars_stores_their_jpegs_unchanged(photo_folder, tmp_path):
    contents = make_synset_tars(photo_folder, tmp_path / "tars")
    with tarfile.open(tmp_path / "tars" / "n00000000.tar", "a") as tar:
        info = tarfile.TarInfo("n00000000_readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))

    assert build(tmp_path / "tars", tmp_path / "out", "--samples-per-shard", "10", "--workers", "2") == 0

    manifest = Manifest.load(tmp_path / "out")
    assert manifest.source["kind"] == "synset_tars"
    assert manifest.classes == {synset: i for i, synset in enumerate(sorted(contents))}
    assert manifest.num_samples == 24
    assert [s.input.rsplit(":", 1)[1] for s in manifest.skipped] == ["n00000000_readme.txt"]
    stored = {}
    for key, jpg, label in all_samples(tmp_path / "out"):
        stored.setdefault(sorted(contents)[label], []).append(jpg)
    assert {k: sorted(v) for k, v in stored.items()} == {k: sorted(v) for k, v in contents.items()}


def test_capped_side_is_respected_and_small_images_keep_their_bytes(photo_folder, digits_folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(photo_folder / sorted(p.name for p in photo_folder.iterdir())[0], src / "photo")
    shutil.copytree(digits_folder / "3", src / "digit")
    Image.open(next((src / "digit").glob("*.jpg"))).save(src / "digit" / "as_png.png")

    assert build(src, tmp_path / "out", "--max-side", "64", "--quality", "80") == 0

    originals = {f"{p.parent.name}/{p.stem}": p.read_bytes() for p in src.rglob("*.jpg")}
    for key, jpg, _ in all_samples(tmp_path / "out"):
        if key.startswith("photo/"):
            assert jpeg_size(jpg) == (85, 64)  # 500×375 with the shorter side at 64
        elif key == "digit/as_png":
            assert jpeg_size(jpg) == (32, 32)  # re-encoded to JPEG, not upscaled
        else:
            assert jpg == originals[key]


def test_shuffle_is_deterministic_by_seed_and_independent_of_worker_count(digits_folder, tmp_path):
    def shard_checksums(seed: str, workers: str) -> list[str]:
        out = tmp_path / f"seed{seed}-w{workers}"
        assert build(digits_folder, out, "--samples-per-shard", "40", "--shuffle-seed", seed,
                     "--workers", workers) == 0
        return [s.sha256 for s in Manifest.load(out).shards]

    assert shard_checksums("1", "1") == shard_checksums("1", "2")
    assert shard_checksums("2", "1") != shard_checksums("1", "1")
    first_shard_labels = [label for _, _, label in shard_samples(tmp_path / "seed1-w1" / "train-000000.tar")]
    assert len(set(first_shard_labels)) > 5  # classes mixed across shards, not one class per shard


def test_interrupted_build_resumes_writing_only_the_missing_shard(digits_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert build(digits_folder, out, "--samples-per-shard", "50") == 0
    before = Manifest.load(out)
    identities = {p.name: file_identity(p) for p in before.shard_paths(out)}
    (out / "train-000002.tar").unlink()
    (out / "manifest.json").unlink()
    (out / ".train-000003.tar.x1y2z3.tmp").write_bytes(b"half a shard")
    capsys.readouterr()

    assert build(digits_folder, out, "--samples-per-shard", "50") == 0

    after = Manifest.load(out)
    assert "1 written, 3 kept" in capsys.readouterr().out
    assert after.shards == before.shards  # the rewritten shard is byte-identical
    untouched = {name for name in identities if name != "train-000002.tar"}
    assert {name: file_identity(out / name) for name in untouched} == {n: identities[n] for n in untouched}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + sorted(identities)


def test_rerun_of_a_finished_build_writes_nothing(digits_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert build(digits_folder, out, "--samples-per-shard", "50") == 0
    identities = {p.name: file_identity(p) for p in out.iterdir()}
    capsys.readouterr()

    assert build(digits_folder, out, "--samples-per-shard", "50") == 0

    assert "0 written, 4 kept" in capsys.readouterr().out
    assert {p.name: file_identity(p) for p in out.iterdir()} == identities


def test_rebuild_with_other_options_into_the_same_directory_is_refused(digits_folder, tmp_path, capsys):
    assert build(digits_folder, tmp_path / "out", "--samples-per-shard", "50") == 0
    capsys.readouterr()

    assert build(digits_folder, tmp_path / "out", "--samples-per-shard", "50", "--max-side", "16") == 2

    assert "planned from another source listing or other options" in capsys.readouterr().err


def test_build_of_a_missing_source_names_it(tmp_path, capsys):
    assert build(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "nowhere" in capsys.readouterr().err


def test_verify_passes_a_fresh_build_and_names_a_corrupted_shard(digits_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert build(digits_folder, out, "--samples-per-shard", "50") == 0
    assert main(["shards", "verify", str(out)]) == 0
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    shard.write_bytes(bytes(data))
    capsys.readouterr()

    assert main(["shards", "verify", str(out)]) == 1

    err = capsys.readouterr().err
    assert "train-000001.tar" in err and "sha256" in err
    assert "train-000000.tar" not in err and "train-000002.tar" not in err


RESOLVE_AND_LIST_IMPORTS = """
import sys
from vitc.data.shards.manifest import resolve_shards
shards, manifest = resolve_shards(sys.argv[1], None, "train_shards")
print(len(shards), manifest.num_samples, "torch" in sys.modules, "webdataset" in sys.modules)
"""


def test_shard_lists_resolve_without_torch_or_webdataset(digits_folder, tmp_path):
    # the planner and the run resolver resolve shards on a login node, where torch is not wanted
    out = tmp_path / "out"
    assert build(digits_folder, out, "--samples-per-shard", "50") == 0
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", RESOLVE_AND_LIST_IMPORTS, f"{out}/train-{{000000..000002}}.tar"],
                            capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "200", "False", "False"]


def write_webdataset_shards(digits_folder: Path, out: Path, image_format: str) -> list[int]:
    """Shards written by webdataset's own ShardWriter: `<key>.<png|jpg>` + `<key>.json` labels,
    the first sample without a label; returns the labels written."""
    out.mkdir()
    labels = []
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=30, verbose=0) as sink:
        for i, path in enumerate(sorted(digits_folder.rglob("*.jpg"))[::4]):
            buf = io.BytesIO()
            Image.open(path).save(buf, format=image_format)
            sample = {"__key__": f"s{i:04d}", "png" if image_format == "PNG" else "jpg": buf.getvalue()}
            if i > 0:
                sample["json"] = {"label": int(path.parent.name), "source": path.name}
                labels.append(int(path.parent.name))
            sink.write(sample)
    return labels


def test_index_of_webdataset_shardwriter_shards_with_png_and_json_labels(digits_folder, tmp_path):
    labels = write_webdataset_shards(digits_folder, tmp_path / "wds", "PNG")

    assert main(["shards", "index", str(tmp_path / "wds")]) == 0

    manifest = Manifest.load(tmp_path / "wds")
    assert manifest.prefix == "shard" and manifest.source["kind"] == "indexed"
    assert [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert manifest.num_samples == len(labels) == 49
    assert manifest.classes == {str(i): i for i in range(10)}
    assert manifest.options == {"image_keys": ["png"], "label_keys": ["json"]}
    assert [(s.input, s.reason.startswith("no label")) for s in manifest.skipped] == [("shard-000000.tar:s0000", True)]
    assert main(["shards", "verify", str(tmp_path / "wds")]) == 0


def test_verify_names_the_sample_that_does_not_decode(digits_folder, tmp_path, capsys):
    out = tmp_path / "wds"
    write_webdataset_shards(digits_folder, out, "JPEG")
    assert main(["shards", "index", str(out)]) == 0
    manifest = Manifest.load(out)
    samples = shard_samples(out / "shard-000001.tar")
    with wds.TarWriter(str(out / "shard-000001.tar")) as sink:  # same keys, one JPEG truncated
        for key, jpg, label in samples:
            sink.write({"__key__": key, "jpg": jpg[:-200] if key == "s0035" else jpg, "json": {"label": label}})
    capsys.readouterr()

    assert main(["shards", "verify", str(out)]) == 1

    err = capsys.readouterr().err
    assert "shard-000001.tar: sample 's0035'" in err and "truncated" in err
    assert manifest.shards[0].name not in err


def test_map_classes_puts_imagenet_1k_synsets_at_their_21k_indices(tmp_path):
    in21k = {f"n{i:08d}": i for i in range(50)}
    in1k = {"n00000007": 0, "n00000003": 1, "n00000042": 2}

    assert map_classes(in1k, in21k) == [7, 3, 42]
    (tmp_path / "synsets.txt").write_text("n00000007 tench, Tinca tinca\nn00000003 goldfish\n")
    assert map_classes(read_class_map(tmp_path / "synsets.txt"), in21k) == [7, 3]


def test_map_classes_names_the_synsets_missing_from_the_target():
    with pytest.raises(VitcError, match=r"2 of 3 source classes.*n09999998, n09999999"):
        map_classes({"n00000001": 0, "n09999998": 1, "n09999999": 2}, {"n00000001": 5})


def test_bench_shard_build_reports_images_per_second_per_worker_count(digits_folder, tmp_path):
    from vitc.bench.shards import bench_shard_build

    rates = bench_shard_build(digits_folder, tmp_path, workers=(1, 2), rounds=1)

    assert sorted(rates) == [1, 2] and all(rate > 0 for rate in rates.values())
    assert list(tmp_path.iterdir()) == []  # the timed builds are removed


def test_a_built_shard_records_where_every_256th_sample_starts_and_index_finds_the_same(tmp_path):
    folder = tmp_path / "folder"
    for i in range(300):  # one shard of 300 samples: one index entry, at sample 256
        (folder / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / f"c{i % 3}" / f"{i:04d}.jpg")
    assert main(["shards", "build", str(folder), str(tmp_path / "built"), "--samples-per-shard", "400"]) == 0
    record = Manifest.load(tmp_path / "built").shards[0]
    assert record.samples == 300 and [entry[0] for entry in record.index] == [256]
    _, offset, key = record.index[0]
    with tarfile.open(tmp_path / "built" / record.name) as tar:  # the 257th sample's first member starts there
        members = [m for m in tar.getmembers() if m.isreg()]
    first = next(m for m in members if m.name.startswith(key + "."))
    assert first.offset == offset and len({m.name.split(".")[0] for m in members[:members.index(first)]}) == 256
    # `vitc shards index` (shards made elsewhere) records the same index
    shutil.copytree(tmp_path / "built", tmp_path / "again", ignore=shutil.ignore_patterns("manifest.json"))
    assert main(["shards", "index", str(tmp_path / "again")]) == 0
    assert Manifest.load(tmp_path / "again").shards[0].index == record.index
    # a manifest whose index points elsewhere is found by `vitc shards verify`
    manifest = Manifest.load(tmp_path / "again")
    manifest.shards[0].index[0][1] += 512
    manifest.save(tmp_path / "again")
    assert main(["shards", "verify", str(tmp_path / "again")]) == 1

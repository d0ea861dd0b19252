"""`vitc shards build|verify|index` and `vitc data ledger`."""

import argparse
import json
import sys


def cmd_shards_build(args: argparse.Namespace) -> int:
    from vitc.data.shards.build import BuildOptions, Terminated, build_shards

    options = BuildOptions(args.samples_per_shard, args.max_shard_bytes, args.max_side, args.quality,
                           args.shuffle_seed)
    try:
        print(build_shards(args.src, args.out, args.prefix, options, args.workers).describe())
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (scancel) as `Terminated`
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"vitc: {how}; finished shards are kept: re-run the same command to write the "
              f"rest into {args.out}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


def cmd_shards_verify(args: argparse.Namespace) -> int:
    from vitc.data.shards.verify import verify_shards

    report = verify_shards(args.dir, args.workers)
    print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def cmd_shards_index(args: argparse.Namespace) -> int:
    from vitc.data.shards.verify import index_shards

    m = index_shards(args.dir, args.prefix, args.workers)
    print(f"{args.dir}: indexed {len(m.shards)} shards, {m.num_samples} samples, {m.num_classes} "
          f"classes, {len(m.skipped)} samples without image or label")
    return 0


def cmd_data_ledger(args: argparse.Namespace) -> int:
    from vitc.data.ledger import build_ledger

    ledger = build_ledger(args.run_dir)
    print(json.dumps(ledger.to_json(), indent=1) if args.json else ledger.describe())
    return 0


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="what a run's loader delivered")
    data_sub = data.add_subparsers(dest="data", required=True, metavar="ACTION")
    ledger = data_sub.add_parser(
        "ledger", help="per epoch, which samples a run trained on: once, never, twice (docs/loader.md)",
        description="Reconstruct which samples each epoch of the run in RUN_DIR delivered to training, "
                    "across restarts and world-size changes, from its config, its metrics.jsonl data "
                    "positions (one at every start and checkpoint) and its newest checkpoint; print per "
                    "epoch how many samples were seen once, never, twice or more, and a digest of the "
                    "per-sample counts (equal digests: the same samples, as often). Reads no images.")
    ledger.add_argument("run_dir", metavar="RUN_DIR")
    ledger.add_argument("--json", action="store_true", help="print the ledger as JSON")
    ledger.set_defaults(func=cmd_data_ledger)


def _add_shards_parser(sub: argparse._SubParsersAction) -> None:
    shards = sub.add_parser("shards", help="write, verify and index WebDataset shards")
    shards_sub = shards.add_subparsers(dest="shards", required=True, metavar="ACTION")
    build = shards_sub.add_parser(
        "build", help="ImageFolder tree or per-synset tars -> <prefix>-%%06d.tar shards + manifest",
        description="Convert SRC (an ImageFolder tree of class folders, or a folder of per-synset "
                    "tars such as n01440764.tar) into OUT/<prefix>-%06d.tar shards of <key>.jpg + "
                    "<key>.cls and OUT/manifest.json. Re-run after an interruption, it keeps the "
                    "finished shards and writes the rest. Corrupt and non-image inputs are skipped "
                    "and listed in the manifest.")
    build.add_argument("src")
    build.add_argument("out")
    build.add_argument("--prefix", default="train", help="shard name prefix (default: train)")
    build.add_argument("--samples-per-shard", type=int, default=10_000, metavar="N")
    build.add_argument("--max-shard-bytes", type=int, default=1_000_000_000, metavar="B",
                       help="cap on a shard's planned size, from its inputs' sizes (default 1e9)")
    build.add_argument("--max-side", type=int, metavar="S",
                       help="downscale so the shorter side is at most S (never upscaled); "
                            "JPEGs already within it keep their bytes")
    build.add_argument("--quality", type=int, default=90, metavar="Q",
                       help="JPEG quality of re-encoded images (default 90)")
    build.add_argument("--shuffle-seed", type=int, default=0, metavar="SEED",
                       help="seed of the global shuffle of samples across shards (default 0)")
    build.add_argument("--workers", type=int, default=1, metavar="W",
                       help="processes, each writing whole shards (the result does not depend on W)")
    build.set_defaults(func=cmd_shards_build)
    verify = shards_sub.add_parser(
        "verify", help="check shards against their manifest (exit 1 naming the bad shard/sample)",
        description="Check every shard in DIR against DIR/manifest.json: present, bytes, sha256, "
                    "sample count, every image decodes and every label is a class index in range.")
    verify.add_argument("dir")
    verify.add_argument("--workers", type=int, default=1, metavar="W")
    verify.set_defaults(func=cmd_shards_verify)
    index = shards_sub.add_parser(
        "index", help="write a manifest for shards made by another tool",
        description="Write DIR/manifest.json for <prefix>*.tar shards written by another tool "
                    "(webdataset's ShardWriter, img2dataset): images in .jpg/.jpeg/.png/.webp, "
                    "labels in .cls or in a 'label'/'cls' field of .json; class i is named 'i'.")
    index.add_argument("dir")
    index.add_argument("--prefix", help="index only DIR/<prefix>*.tar (default: every .tar)")
    index.add_argument("--workers", type=int, default=1, metavar="W")
    index.set_defaults(func=cmd_shards_index)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_shards_parser(sub)
    _add_data_parser(sub)

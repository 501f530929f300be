"""Pack Kaggle's Dogs vs Cats zips small enough to copy to a GPU machine with the code: every image
resized and re-encoded into a train.zip / test1.zip pair in Kaggle's layout, which prepare_data.py
and bench/accuracy.py read as they read the originals.

    # bench/accuracy.py --preset gpu: every image at 64 px
    python bench/pack_data.py --data-src train.zip --unlabeled-src test1.zip --out packed
    # bench/accuracy.py --preset gpu-224: 2,100 labeled + 12,000 unlabeled images at 80 px
    python bench/pack_data.py --data-src train.zip --unlabeled-src test1.zip --out packed224 \\
        --size 80 --train-per-class 1050 --unlabeled 12000
    # BENCHMARKS.md's subset: cat.0-5999, dog.0-5999 and test1.zip's images 1-5000, at 200 px
    python bench/pack_data.py --data-src train.zip --unlabeled-src test1.zip --out dogs-vs-cats-17k \\
        --size 200 --train-per-class 6000 --unlabeled 5000 --max-mib 250
    # bench/gpu_article.py (the article's notebook at 224 px): that subset's 17,000 images at 128 px,
    # up-scaled on the GPU box; quality in steps of 5, Huffman tables optimised
    python bench/pack_data.py --data-src train.zip --unlabeled-src test1.zip --out packed_article \\
        --size 128 --quality-step 5 --optimize --max-mib 56
    # what a pack would take at each quality, written nowhere
    python bench/pack_data.py --data-src train.zip --unlabeled-src test1.zip --size 112 --estimate

Unlabeled: test1.zip's images in number order, then train.zip's beyond --train-per-class, renumbered
so that no name gives a label away. Both zips stay under --max-mib (54 leaves room for the code on a
GPU box that receives at most 64 MiB): the JPEG quality goes down from --quality in steps of 10 (or
--quality-step) to 50 as a 200-image sample and the written zips require (Kaggle's 37,500 images at
64 px take about 85 MiB at quality 90), or the script stops naming the flags to lower. pack.json
beside the zips records what they hold (image counts, size, quality). packed*/ is ignored by git.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

KAGGLE_TRAIN = re.compile(r"(?:^|/)(cat|dog)\.(\d+)\.jpg$")
KAGGLE_TEST = re.compile(r"(?:^|/)(\d+)\.jpg$")
LOWEST_QUALITY, SAMPLE = 50, 200
ZIP_ENTRY_BYTES = 30 + 46  # a stored member's local + central headers, besides its name twice


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pack_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-src", metavar="PATH", help="Kaggle's train.zip (cat.N.jpg, dog.N.jpg)")
    p.add_argument("--unlabeled-src", metavar="PATH", help="optional: Kaggle's test1.zip (N.jpg)")
    p.add_argument("--out", help="folder to write train.zip and test1.zip into (required unless --estimate)")
    p.add_argument("--size", type=int, default=64, help="side of the re-encoded images, px (default: %(default)s)")
    p.add_argument("--quality", type=int, default=90, help="highest JPEG quality to use (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, help="keep cat.0..cat.N-1 and dog.0..dog.N-1 (default: all)")
    p.add_argument("--unlabeled", type=int, help="unlabeled images in all (default: all of test1.zip)")
    p.add_argument("--max-mib", type=float, default=54.0, help="the most both zips may hold (default: %(default)s)")
    p.add_argument("--quality-step", type=int, default=10,
                   help="how far the JPEG quality goes down per try (default: %(default)s)")
    p.add_argument("--optimize", action="store_true",
                   help="optimised Huffman tables: the same pixels in about 5-10 %% fewer bytes, more "
                        "images or a higher quality in --max-mib (default: off, as the packs before it)")
    p.add_argument("--estimate", action="store_true",
                   help="print the size the pack would take at each quality tried (from the 200-image "
                        "sample) and write nothing")
    return p


def resized(data: bytes, size: int) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)


def jpeg(img: Image.Image, quality: int, optimize: bool = False) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=optimize)
    return buf.getvalue()


def select(zips: dict, per_class: int | None, n_unlabeled: int | None) -> tuple[list, list]:
    """(labeled, unlabeled) lists of (zip name, member, name in the packed zip)."""
    train = sorted((m for m in zips["train.zip"].namelist() if KAGGLE_TRAIN.search(m)),
                   key=lambda m: (int(KAGGLE_TRAIN.search(m)[2]), m))
    keep = [m for m in train if per_class is None or int(KAGGLE_TRAIN.search(m)[2]) < per_class]
    labeled = [("train.zip", m, "train/{}.{}.jpg".format(*KAGGLE_TRAIN.search(m).groups())) for m in keep]
    tests = sorted((m for m in zips["test1.zip"].namelist() if KAGGLE_TEST.search(m)),
                   key=lambda m: int(KAGGLE_TEST.search(m)[1])) if "test1.zip" in zips else []
    kept = set(keep)
    pool = [("test1.zip", m) for m in tests] + [("train.zip", m) for m in train if m not in kept]
    pool = pool[:n_unlabeled] if n_unlabeled is not None else pool[:len(tests)]
    return labeled, [(src, m, f"test1/{k + 1}.jpg") for k, (src, m) in enumerate(pool)]


def estimate_bytes(zips: dict, images: list, size: int, quality: int, step: int = 10,
                   optimize: bool = False) -> dict[int, float]:
    """quality -> the bytes both zips would take, from a sample of SAMPLE images, for the qualities
    from `quality` down in steps of `step` to 50, highest first."""
    sample = [resized(zips[src].read(m), size) for src, m, _ in images[::max(1, len(images) // SAMPLE)]]
    overhead = sum(ZIP_ENTRY_BYTES + 2 * len(name) for _, _, name in images) + 2 * 22
    qualities = [quality, *range(step * ((quality - 1) // step), LOWEST_QUALITY - 1, -step)]
    return {q: overhead + len(images) * sum(len(jpeg(i, q, optimize)) for i in sample) / max(len(sample), 1)
            for q in qualities}


def pick_quality(zips: dict, images: list, size: int, quality: int, budget: int, step: int = 10,
                 optimize: bool = False) -> list[int]:
    """The qualities worth trying, highest first: from `quality` down in steps of `step` to 50,
    less those that a sample of the images says would exceed `budget` bytes."""
    return [q for q, n in estimate_bytes(zips, images, size, quality, step, optimize).items() if n <= budget]


def write_zips(zips: dict, parts: dict, tmp: dict, size: int, quality: int, budget: int,
               optimize: bool = False) -> bool:
    """Both zips at `quality` into the `tmp` paths; False as soon as they outgrow `budget` bytes."""
    written = 0
    for name, images in parts.items():
        with zipfile.ZipFile(tmp[name], "w", zipfile.ZIP_STORED) as zf:
            for src, member, packed_name in tqdm(images, desc=f"{name} q{quality}", unit="img", disable=None):
                data = jpeg(resized(zips[src].read(member), size), quality, optimize)
                zf.writestr(packed_name, data)
                written += len(data) + ZIP_ENTRY_BYTES + 2 * len(packed_name)
                if written > budget:
                    return False
    return sum(path.stat().st_size for path in tmp.values()) <= budget


def pack(sources: dict, out: Path, size: int, quality: int, per_class: int | None,
         n_unlabeled: int | None, max_mib: float, step: int = 10, optimize: bool = False) -> dict:
    budget = int(max_mib * 2 ** 20)
    zips = {name: zipfile.ZipFile(path) for name, path in sources.items()}
    out.mkdir(parents=True, exist_ok=True)
    labeled, unlabeled = select(zips, per_class, n_unlabeled)
    parts = {"train.zip": labeled, **({"test1.zip": unlabeled} if unlabeled else {})}
    tmp = {name: out / f".{name}.tmp" for name in parts}
    try:
        for q in pick_quality(zips, labeled + unlabeled, size, quality, budget, step, optimize):
            if write_zips(zips, parts, tmp, size, q, budget, optimize):
                for name, path in tmp.items():
                    os.replace(path, out / name)
                if "test1.zip" not in parts:  # an earlier pack's must not pass for this one's
                    (out / "test1.zip").unlink(missing_ok=True)
                mib = sum((out / name).stat().st_size for name in parts) / 2 ** 20
                print(f"wrote {out}/train.zip ({len(labeled)} labeled) and test1.zip ({len(unlabeled)} "
                      f"unlabeled): {mib:.1f} MiB at {size} px, JPEG quality {q}")
                info = {"labeled_images": len(labeled), "unlabeled_images": len(unlabeled), "size": size,
                        "quality": q, "optimize": optimize, "mib": round(mib, 1),
                        "sources": {name: Path(path).name for name, path in sources.items()}}
                # What the zips hold, for the results that train on them (bench/gpu_article.py)
                (out / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
                return info
    finally:
        for zf in zips.values():
            zf.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    raise SystemExit(f"pack_data.py: error: {len(labeled) + len(unlabeled)} images at {size} px exceed "
                     f"--max-mib {max_mib:g} even at JPEG quality {min(quality, LOWEST_QUALITY)}; lower "
                     "--size, --train-per-class or --unlabeled")


def estimate(sources: dict, args) -> None:
    """--estimate: one line per quality, the pack's estimated size against --max-mib."""
    zips = {name: zipfile.ZipFile(path) for name, path in sources.items()}
    try:
        labeled, unlabeled = select(zips, args.train_per_class, args.unlabeled)
        sizes = estimate_bytes(zips, labeled + unlabeled, args.size, args.quality, args.quality_step, args.optimize)
    finally:
        for zf in zips.values():
            zf.close()
    print(f"{len(labeled)} labeled + {len(unlabeled)} unlabeled images at {args.size} px "
          f"({'optimised' if args.optimize else 'standard'} Huffman tables), estimated from "
          f"{min(SAMPLE, len(labeled + unlabeled))} of them:")
    for q, n in sizes.items():
        print(f"  quality {q}: {n / 2 ** 20:.1f} MiB{'' if n <= args.max_mib * 2 ** 20 else ' (over --max-mib)'}")


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    sources = {"train.zip": args.data_src, "test1.zip": args.unlabeled_src}
    problems = [f"{flag} {path}: not found or not a zip file" for flag, path in
                zip(("--data-src", "--unlabeled-src"), sources.values()) if path and not zipfile.is_zipfile(path)]
    problems += [] if args.data_src else ["--data-src PATH is required: Kaggle's train.zip"]
    problems += [] if args.out or args.estimate else ["--out FOLDER is required: where the zips go"]
    if min(args.size, args.quality, args.max_mib, args.quality_step) <= 0:
        problems.append("--size, --quality, --quality-step and --max-mib must be positive")
    if problems:
        print(f"pack_data.py: error: {problems[-1]}", file=sys.stderr)
        return 2
    sources = {name: Path(path) for name, path in sources.items() if path}
    if args.estimate:
        estimate(sources, args)
        return 0
    pack(sources, Path(args.out), args.size, args.quality, args.train_per_class, args.unlabeled, args.max_mib,
         args.quality_step, args.optimize)
    return 0


if __name__ == "__main__":
    sys.exit(main())

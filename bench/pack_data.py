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

Unlabeled: test1.zip's images in number order, then train.zip's beyond --train-per-class, renumbered
so that no name gives a label away. Both zips stay under --max-mib (54 leaves room for the code on a
GPU box that receives at most 64 MiB): the JPEG quality goes down from --quality in steps of 10 to
50 as a 200-image sample and the written zips require (Kaggle's 37,500 images at 64 px take about
85 MiB at quality 90), or the script stops naming the flags to lower. packed*/ is ignored by git.
"""
from __future__ import annotations

import argparse
import io
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
    p.add_argument("--out", required=True, help="folder to write train.zip and test1.zip into")
    p.add_argument("--size", type=int, default=64, help="side of the re-encoded images, px (default: %(default)s)")
    p.add_argument("--quality", type=int, default=90, help="highest JPEG quality to use (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, help="keep cat.0..cat.N-1 and dog.0..dog.N-1 (default: all)")
    p.add_argument("--unlabeled", type=int, help="unlabeled images in all (default: all of test1.zip)")
    p.add_argument("--max-mib", type=float, default=54.0, help="the most both zips may hold (default: %(default)s)")
    return p


def resized(data: bytes, size: int) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
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


def pick_quality(zips: dict, images: list, size: int, quality: int, budget: int) -> list[int]:
    """The qualities worth trying, highest first: from `quality` down in steps of 10 to 50, less
    those that a sample of the images says would exceed `budget` bytes."""
    sample = [resized(zips[src].read(m), size) for src, m, _ in images[::max(1, len(images) // SAMPLE)]]
    overhead = sum(ZIP_ENTRY_BYTES + 2 * len(name) for _, _, name in images) + 2 * 22
    qualities = [quality, *range(10 * ((quality - 1) // 10), LOWEST_QUALITY - 1, -10)]
    return [q for q in qualities if overhead + len(images) * sum(map(len, (jpeg(i, q) for i in sample)))
            / max(len(sample), 1) <= budget]


def write_zips(zips: dict, parts: dict, tmp: dict, size: int, quality: int, budget: int) -> bool:
    """Both zips at `quality` into the `tmp` paths; False as soon as they outgrow `budget` bytes."""
    written = 0
    for name, images in parts.items():
        with zipfile.ZipFile(tmp[name], "w", zipfile.ZIP_STORED) as zf:
            for src, member, packed_name in tqdm(images, desc=f"{name} q{quality}", unit="img", disable=None):
                data = jpeg(resized(zips[src].read(member), size), quality)
                zf.writestr(packed_name, data)
                written += len(data) + ZIP_ENTRY_BYTES + 2 * len(packed_name)
                if written > budget:
                    return False
    return sum(path.stat().st_size for path in tmp.values()) <= budget


def pack(sources: dict, out: Path, size: int, quality: int, per_class: int | None,
         n_unlabeled: int | None, max_mib: float) -> dict:
    budget = int(max_mib * 2 ** 20)
    zips = {name: zipfile.ZipFile(path) for name, path in sources.items()}
    out.mkdir(parents=True, exist_ok=True)
    labeled, unlabeled = select(zips, per_class, n_unlabeled)
    parts = {"train.zip": labeled, **({"test1.zip": unlabeled} if unlabeled else {})}
    tmp = {name: out / f".{name}.tmp" for name in parts}
    try:
        for q in pick_quality(zips, labeled + unlabeled, size, quality, budget):
            if write_zips(zips, parts, tmp, size, q, budget):
                for name, path in tmp.items():
                    os.replace(path, out / name)
                if "test1.zip" not in parts:  # an earlier pack's must not pass for this one's
                    (out / "test1.zip").unlink(missing_ok=True)
                mib = sum((out / name).stat().st_size for name in parts) / 2 ** 20
                print(f"wrote {out}/train.zip ({len(labeled)} labeled) and test1.zip ({len(unlabeled)} "
                      f"unlabeled): {mib:.1f} MiB at {size} px, JPEG quality {q}")
                return {"labeled_images": len(labeled), "unlabeled_images": len(unlabeled), "size": size,
                        "quality": q, "mib": round(mib, 1)}
    finally:
        for zf in zips.values():
            zf.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    raise SystemExit(f"pack_data.py: error: {len(labeled) + len(unlabeled)} images at {size} px exceed "
                     f"--max-mib {max_mib:g} even at JPEG quality {min(quality, LOWEST_QUALITY)}; lower "
                     "--size, --train-per-class or --unlabeled")


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    sources = {"train.zip": args.data_src, "test1.zip": args.unlabeled_src}
    problems = [f"{flag} {path}: not found or not a zip file" for flag, path in
                zip(("--data-src", "--unlabeled-src"), sources.values()) if path and not zipfile.is_zipfile(path)]
    problems += [] if args.data_src else ["--data-src PATH is required: Kaggle's train.zip"]
    if min(args.size, args.quality, args.max_mib) <= 0:
        problems.append("--size, --quality and --max-mib must be positive")
    if problems:
        print(f"pack_data.py: error: {problems[-1]}", file=sys.stderr)
        return 2
    pack({name: Path(path) for name, path in sources.items() if path}, Path(args.out), args.size, args.quality,
         args.train_per_class, args.unlabeled, args.max_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())

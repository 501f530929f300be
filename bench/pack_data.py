"""Pack Kaggle's Dogs vs Cats zips small enough to travel with the code to a GPU machine: every
image resized and re-encoded, written as a train.zip / test1.zip pair in Kaggle's layout, so
prepare_data.py and bench/accuracy.py read the packed folder exactly as they read the originals.

    # the 32 px experiment (bench/accuracy.py --preset gpu): all 17,000 images at 64 px, ~40 MB
    python bench/pack_data.py --out packed
    # the 224 px run: 2,100 labeled + 12,000 unlabeled images at 80 px (the loader up-scales)
    python bench/pack_data.py --out packed224 --size 80 --train-per-class 1050 --unlabeled 12000

The packed folder must be ignored by git (`packed*/` is in .gitignore) and named in the device
call's `carry`. The total is checked against --max-mib before anything is kept: a device call
carries at most 64 MiB, code included.
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

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_TRAIN = re.compile(r"(?:^|/)(cat|dog)\.(\d+)\.jpg$")
KAGGLE_TEST = re.compile(r"(?:^|/)(\d+)\.jpg$")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pack_data.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"),
                   help="folder holding Kaggle's train.zip and test1.zip")
    p.add_argument("--out", required=True, help="folder to write train.zip and test1.zip into")
    p.add_argument("--size", type=int, default=64, help="square side of the re-encoded images, pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="keep cat.0..cat.N-1 and dog.0..dog.N-1 of train.zip (default: all)")
    p.add_argument("--unlabeled", type=int, default=None,
                   help="unlabeled images in all: the rest of train.zip's images, then test1.zip's, "
                        "go in test1.zip with their labels withheld (default: all of test1.zip)")
    p.add_argument("--max-mib", type=float, default=54.0,
                   help="refuse to write more than this (a device call carries 64 MiB with the code)")
    return p


def reencode(data: bytes, size: int, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def members(path: Path, pattern: re.Pattern) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if pattern.search(n)]


def pack(args) -> dict:
    shared, out = Path(args.shared), Path(args.out)
    for name in ("train.zip", "test1.zip"):
        if not (shared / name).is_file():
            raise SystemExit(f"pack_data.py: error: {shared / name} not found; pass --shared with "
                             "Kaggle's train.zip and test1.zip")
    train_names = members(shared / "train.zip", KAGGLE_TRAIN)
    by_index = sorted(train_names, key=lambda n: (int(KAGGLE_TRAIN.search(n)[2]), n))
    n = args.train_per_class
    labeled = [m for m in by_index if n is None or int(KAGGLE_TRAIN.search(m)[2]) < n]
    kept = set(labeled)
    rest = [("train.zip", m) for m in by_index if m not in kept]
    tests = [("test1.zip", m) for m in sorted(members(shared / "test1.zip", KAGGLE_TEST),
                                              key=lambda m: int(KAGGLE_TEST.search(m)[1]))]
    unlabeled = (rest + tests)[:args.unlabeled] if args.unlabeled is not None else tests
    budget = int(args.max_mib * 2 ** 20)
    written = 0
    out.mkdir(parents=True, exist_ok=True)
    tmp = {name: out / f".{name}.tmp" for name in ("train.zip", "test1.zip")}
    sources = {name: zipfile.ZipFile(shared / name) for name in ("train.zip", "test1.zip")}
    try:
        with zipfile.ZipFile(tmp["train.zip"], "w", zipfile.ZIP_STORED) as zf:
            for m in tqdm(labeled, desc="train.zip", unit="img", disable=None):
                data = reencode(sources["train.zip"].read(m), args.size, args.quality)
                cls, idx = KAGGLE_TRAIN.search(m).groups()
                zf.writestr(f"train/{cls}.{idx}.jpg", data)
                written += len(data)
                if written > budget:
                    break
        with zipfile.ZipFile(tmp["test1.zip"], "w", zipfile.ZIP_STORED) as zf:
            for k, (src, m) in enumerate(tqdm(unlabeled, desc="test1.zip", unit="img", disable=None)):
                if written > budget:
                    break
                data = reencode(sources[src].read(m), args.size, args.quality)
                zf.writestr(f"test1/{k + 1}.jpg", data)  # numbered anew: train names would give labels away
                written += len(data)
        if written > budget:
            raise SystemExit(f"pack_data.py: error: more than --max-mib {args.max_mib:g} MiB of images; "
                             "lower --size, --quality, --train-per-class or --unlabeled")
        for name, path in tmp.items():
            os.replace(path, out / name)
    finally:
        for zf in sources.values():
            zf.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    summary = {"labeled_images": len(labeled), "unlabeled_images": len(unlabeled), "size": args.size,
               "quality": args.quality, "mib": round(written / 2 ** 20, 1)}
    print(f"wrote {out}/train.zip ({len(labeled)} labeled) and test1.zip ({len(unlabeled)} unlabeled): "
          f"{summary['mib']} MiB at {args.size} px, JPEG quality {args.quality}")
    return summary


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for flag in ("size", "quality", "max_mib"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    pack(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

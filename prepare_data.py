"""Split labeled (and extra unlabeled) images into labeled / unlabeled / val / test folders.

Kaggle Dogs vs Cats, the article's setting (100 labels, 1,000 val, 1,000 test, the rest unlabeled):

    python prepare_data.py --src train.zip --unlabeled-src test1.zip --out data

Any class-folder set works too (one subfolder per class, K >= 2 classes):

    python prepare_data.py --src my_images/ --out data --n-labeled 30 --n-val 300 --n-test 300

Output under --out:
    labeled/<class>/*.jpg   val/<class>/*.jpg   test/<class>/*.jpg
    unlabeled/*.jpg         (named by content hash, so file names do not leak the withheld labels)
    manifest.csv            split, path, label (empty for unlabeled), source, sha256 of the source file
    summary.json            counts per split and class, seeds, arguments, skipped/duplicate counts
    skipped.csv             file, reason (broken, unsupported, duplicate, ...)

Every image is decoded once here, so training never meets a file that would kill a DALI pipeline
mid-epoch. Exact duplicates (same sha256) are dropped: the first copy (labeled sources before
unlabeled ones, then sorted by name) is kept and the others are listed in skipped.csv, so no image
can sit in two splits. The sources are only read; the output is built in a temporary folder beside
--out and renamed into place, so an interrupted run leaves no half-written dataset.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# `cat.123.jpg` -> class "cat" (Kaggle naming: the prefix before the first dot).
KAGGLE_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\.\d+\.[A-Za-z]+$")
JPEG_QUALITY = 95
SPLITS = ("labeled", "val", "test", "unlabeled")


class DataError(Exception):
    """A problem with the input that the user must fix; reported without a traceback."""


@dataclass
class Entry:
    """One file of a source: where it is and, once checked, what it holds."""
    source_index: int
    source: str          # the --src / --unlabeled-src argument as given
    member: str          # path inside the zip or folder, '/'-separated
    labeled: bool        # from --src (True) or --unlabeled-src (False)
    label: str | None = None
    sha256: str | None = None
    needs_reencode: bool = False
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.source}:{self.member}"


# ----------------------------------------------------------------------------------------------
# Reading sources (zips or folders)

def list_source(source: str) -> list[str]:
    """Return every regular file of a zip or folder as a sorted list of '/'-separated members."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"source {source!r} does not exist; pass a zip file or a folder of images")
    if path.is_dir():
        return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return sorted(i.filename for i in zf.infolist() if not i.is_dir())
    raise DataError(f"source {source!r} is neither a folder nor a zip file")


_open_zips: dict[str, zipfile.ZipFile] = {}


def read_member(source: str, member: str) -> bytes:
    path = Path(source)
    if path.is_dir():
        return (path / member).read_bytes()
    # One open ZipFile per process and source: reopening per file would re-read the central directory.
    zf = _open_zips.get(source)
    if zf is None:
        zf = _open_zips[source] = zipfile.ZipFile(path)
    return zf.read(member)


def infer_label(member: str) -> str | None:
    """Kaggle file name (`cat.12.jpg`) first, else the parent folder (ImageFolder layout)."""
    parts = member.split("/")
    match = KAGGLE_NAME.match(parts[-1])
    if match:
        return match.group(1)
    if len(parts) >= 2:
        return parts[-2]
    return None


def skip_reason_for_name(member: str) -> str | None:
    """Files we do not even try to decode, with the reason written to skipped.csv."""
    base = member.rsplit("/", 1)[-1]
    if member.startswith("__MACOSX/") or base.startswith("._"):
        return "macOS resource fork, not an image"
    if base.startswith("."):
        return "hidden file"
    if os.path.splitext(base)[1].lower() not in IMAGE_EXTENSIONS:
        return f"unsupported file type {os.path.splitext(base)[1] or '(no extension)'}"
    return None


# ----------------------------------------------------------------------------------------------
# Decoding and writing (run in worker processes)

def check_image(data: bytes) -> tuple[str | None, bool]:
    """Decode fully. Returns (error, needs_reencode). Anything but an upright RGB JPEG is re-encoded."""
    if not data:
        return "empty file (0 bytes)", False
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # full decode: catches truncated files that open() alone accepts
            orientation = img.getexif().get(0x0112, 1)
            mode = img.mode
            size = img.size
    except UnidentifiedImageError:
        return "not a readable image", False
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {exc}", False
    if size[0] < 1 or size[1] < 1:
        return "image has no pixels", False
    # DALI's decoders and torchvision.io read RGB baseline JPEGs the same way; other modes and
    # formats, and EXIF-rotated files (decoders disagree on orientation), are normalised once here.
    return None, (fmt != "JPEG" or mode != "RGB" or orientation != 1)


def check_member(job: tuple[str, str]) -> tuple[str | None, str | None, bool]:
    source, member = job
    try:
        data = read_member(source, member)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # RuntimeError: encrypted zip member
        return None, f"cannot read: {exc}", False
    error, reencode = check_image(data)
    return hashlib.sha256(data).hexdigest(), error, reencode


def write_member(job: tuple[str, str, str, bool, int | None]) -> None:
    source, member, dest, reencode, image_size = job
    data = read_member(source, member)
    if not reencode and image_size is None:
        with open(dest, "wb") as f:  # already a clean RGB JPEG: copy the bytes untouched
            f.write(data)
        return
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.BICUBIC)
        img.save(dest, "JPEG", quality=JPEG_QUALITY)


def parallel_map(fn, jobs: list, workers: int, desc: str) -> list:
    if workers <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit="img", disable=None)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=64), total=len(jobs), desc=desc, unit="img",
                         disable=None))


# ----------------------------------------------------------------------------------------------
# Splitting

def per_class_counts(total: int, classes: list[str]) -> dict[str, int]:
    """Spread `total` over the classes as evenly as possible (the first classes get the remainder)."""
    base, extra = divmod(total, len(classes))
    return {c: base + (1 if i < extra else 0) for i, c in enumerate(classes)}


def read_labeled_list(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read --labeled-list {path}: {exc}") from exc
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise DataError(f"--labeled-list {path} names no file")
    return names


def pick_listed(entries: list[Entry], labeled_list: str) -> set[int]:
    """Indices of the labeled entries named in --labeled-list (by member path or file name)."""
    wanted = read_labeled_list(labeled_list)
    lookup: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.labeled:
            lookup.setdefault(e.member, i)
            lookup.setdefault(e.member.rsplit("/", 1)[-1], i)
    missing = [w for w in wanted if w not in lookup]
    if missing:
        raise DataError(
            f"--labeled-list {labeled_list}: {len(missing)} name(s) not found among the "
            f"usable labeled images (first: {missing[:5]}); use file names as in the source, "
            "e.g. cat.12.jpg, and check skipped.csv reasons with a run without the list")
    return {lookup[w] for w in wanted}


def check_split_sizes(by_class: dict[str, list[int]], n_labeled: dict, n_val: dict, n_test: dict) -> None:
    short = []
    for c, pool in by_class.items():
        need = n_labeled[c] + n_val[c] + n_test[c]
        if len(pool) < need:
            short.append(f"class {c!r} has {len(pool)} usable images, needs {need} "
                         f"({n_labeled[c]} labeled + {n_val[c]} val + {n_test[c]} test)")
    if short:
        raise DataError("too few images for the requested split sizes: " + "; ".join(short)
                        + ". Lower --n-labeled/--n-val/--n-test or add images.")


def assign_splits(entries: list[Entry], classes: list[str], *, n_labeled: int, n_val: int, n_test: int,
                  seed: int, label_seed: int, labeled_list: str | None = None) -> dict[int, str]:
    """Map entry index -> split. Test and val are drawn with `seed`, then the labeled set with
    `label_seed`, so changing the labeled draw never changes val/test."""
    by_class: dict[str, list[int]] = {c: [] for c in classes}
    for i, e in enumerate(entries):
        if e.labeled:
            by_class[e.label].append(i)
    picked = pick_listed(entries, labeled_list) if labeled_list else set()
    per_class_labeled = ({c: sum(entries[i].label == c for i in picked) for c in classes} if labeled_list
                         else per_class_counts(n_labeled, classes))
    per_class_val, per_class_test = per_class_counts(n_val, classes), per_class_counts(n_test, classes)
    check_split_sizes(by_class, per_class_labeled, per_class_val, per_class_test)

    split_of: dict[int, str] = {i: "unlabeled" for i, e in enumerate(entries) if not e.labeled}
    split_rng, label_rng = np.random.default_rng(seed), np.random.default_rng(label_seed)
    for c in classes:
        pool = [i for i in by_class[c] if i not in picked]
        order = [pool[j] for j in split_rng.permutation(len(pool))]
        n_test_c, n_val_c = per_class_test[c], per_class_val[c]
        split_of.update({i: "test" for i in order[:n_test_c]})
        split_of.update({i: "val" for i in order[n_test_c:n_test_c + n_val_c]})
        rest = order[n_test_c + n_val_c:]
        if labeled_list:
            chosen = {i for i in picked if entries[i].label == c}
        else:
            rest = sorted(rest)  # the labeled draw depends on --label-seed only
            chosen = {rest[j] for j in label_rng.permutation(len(rest))[:per_class_labeled[c]]}
        split_of.update({i: "labeled" if i in chosen else "unlabeled" for i in rest})
        split_of.update({i: "labeled" for i in chosen})
    return split_of


def output_name(entry: Entry, split: str, taken: set[str]) -> str:
    """Relative output path. Unlabeled files are named by hash: `cat.12.jpg` would give the label away."""
    if split == "unlabeled":
        return f"unlabeled/{entry.sha256[:20]}.jpg"
    stem = os.path.splitext(entry.member.rsplit("/", 1)[-1])[0]
    rel = f"{split}/{entry.label}/{stem}.jpg"
    if rel in taken:  # same file name in two sources or two folders of one source
        rel = f"{split}/{entry.label}/{stem}.{entry.sha256[:8]}.jpg"
    return rel


# ----------------------------------------------------------------------------------------------
# A synthetic stand-in for Kaggle's zip (make demo, tests): same file names, same code path

SYNTHETIC_CLASSES = ("cat", "dog")


def synthetic_image(label: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A tinted grey picture: a large ellipse, wide for class 0 ('cat') and tall for class 1
    ('dog'), on a shaded background with one round distractor disc.

    The class is the ellipse's orientation (aspect ratio 2.4-3.4, tilt within 20 degrees), so the
    two classes are two well separated shape clusters. Everything else is nuisance drawn
    independently of the class: background level and shading, the ellipse's contrast and polarity,
    position, size, the disc, and a random per-channel gain and offset (the tint). The tint is
    what 20 labels cannot rule out: the small CNN on 20 labels stays at chance (51 % val at 32 px),
    while the same CNN on 200 labels reaches 99 %."""
    from PIL import ImageDraw, ImageFilter

    bg = rng.uniform(30, 225)
    fg = bg + rng.choice([-1, 1]) * rng.uniform(70, 120)
    if fg < 0 or fg > 255:  # flip the polarity rather than clip the contrast away
        fg = bg - (fg - bg)
    yy, xx = np.mgrid[0:size, 0:size] / size
    shade, angle = rng.uniform(-30, 30), rng.uniform(0, 2 * np.pi)
    background = bg + 2 * shade * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "L")
    r = rng.uniform(0.06, 0.14) * size
    x, y = rng.uniform(0, size), rng.uniform(0, size)
    ImageDraw.Draw(img).ellipse([x - r, y - r, x + r, y + r], fill=int(rng.uniform(0, 255)))
    long_axis, ratio = rng.uniform(0.34, 0.44) * size, rng.uniform(2.4, 3.4)
    a, b = (long_axis, long_axis / ratio) if label == 0 else (long_axis / ratio, long_axis)
    cx, cy = rng.uniform(0.4, 0.6) * size, rng.uniform(0.4, 0.6) * size
    shape = Image.new("L", (size, size), 0)
    ImageDraw.Draw(shape).ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
    shape = shape.rotate(rng.uniform(-20, 20), center=(cx, cy), resample=Image.BILINEAR)
    img.paste(int(fg), mask=shape)
    grey = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    grey = np.clip(grey + rng.normal(0, 5, grey.shape), 0, 255)
    gain = rng.uniform(0.3, 1.0, 3)  # the tint: per channel, keeps the grey picture's structure
    offset = rng.uniform(0, 1, 3) * 255 * (1 - gain)
    rgb = grey[..., None] * gain + offset
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def make_synthetic(folder: Path, n_per_class: int, seed: int = 0, size: int = 64) -> Path:
    """Write cat.0.jpg ... dog.{n-1}.jpg (Kaggle names) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in tqdm(range(n_per_class), desc="synthetic images", unit="pair"):
        for label, name in enumerate(SYNTHETIC_CLASSES):
            synthetic_image(label, rng, size).save(folder / f"{name}.{i}.jpg", "JPEG", quality=92)
    return folder


# ----------------------------------------------------------------------------------------------

def int_at_least(minimum: int):
    """argparse type: an integer >= minimum, so a bad value is a usage error before any file is read.
    (engine.py has the same for the trainers; this script stays free of torch.)"""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
        return value
    parse.__name__ = "int"
    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py", description="Split labeled images into labeled/unlabeled/val/test folders for SSGAN training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", action="append", default=[], metavar="PATH",
                   help="zip or folder of labeled images (repeatable). Class from Kaggle names "
                        "(cat.12.jpg -> cat) or from one subfolder per class")
    p.add_argument("--unlabeled-src", action="append", default=[], metavar="PATH",
                   help="zip or folder of images without labels, e.g. Kaggle's test1.zip (repeatable)")
    p.add_argument("--out", default="data", help="output folder (must be empty or absent, see --force)")
    p.add_argument("--n-labeled", type=int_at_least(0), default=100,
                   help="labeled training images, class-balanced")
    p.add_argument("--n-val", type=int_at_least(0), default=1000, help="validation images, class-balanced")
    p.add_argument("--n-test", type=int_at_least(0), default=1000, help="test images, class-balanced")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the val/test draw")
    p.add_argument("--label-seed", type=int_at_least(0), default=None,
                   help="seed of the labeled draw (default: --seed); vary it to repeat the experiment "
                        "with other labels and the same val/test")
    p.add_argument("--labeled-list", metavar="FILE",
                   help="hand-picked labeled set: one source file name per line (e.g. cat.12.jpg), "
                        "used instead of a random draw")
    p.add_argument("--image-size", type=int_at_least(8), default=None, metavar="N",
                   help="resize every image to N x N once here (the article used 224), so training "
                        "does not decode and resize large images every epoch")
    p.add_argument("--workers", type=int_at_least(1), default=os.cpu_count() or 1,
                   help="processes decoding images")
    p.add_argument("--synthetic", type=int_at_least(1), default=None, metavar="N",
                   help="no Kaggle data at hand: generate N images per class (cat.i.jpg / dog.i.jpg, "
                        "64 px tinted ellipses, wide vs tall) into <out>-synthetic-src/ and use it as --src")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p


def list_entries(labeled_sources: list[str], unlabeled_sources: list[str]
                 ) -> tuple[list[Entry], list[tuple[str, str]], int]:
    """Every file of the sources, with the ones that are not images by name sorted out and each
    labeled image's class. Returns (entries, (name, reason) skipped, files seen)."""
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    n_files = 0
    for k, source in enumerate(labeled_sources + unlabeled_sources):
        labeled = k < len(labeled_sources)
        members = list_source(source)
        n_files += len(members)
        n_images = 0
        for member in members:
            entry = Entry(k, source, member, labeled)
            reason = skip_reason_for_name(member)
            if reason:
                skipped.append((entry.name, reason))
                continue
            n_images += 1
            if labeled:
                entry.label = infer_label(member)
                if entry.label is None:
                    raise DataError(
                        f"cannot tell the class of {entry.name}: name files <class>.<number>.jpg "
                        "(Kaggle style) or put them in one subfolder per class; images without "
                        "labels go to --unlabeled-src")
            entries.append(entry)
        if n_images == 0:
            raise DataError(f"source {source!r} holds no image files ({len(members)} files in all)")
    return entries, skipped, n_files


def decode_and_dedupe(entries: list[Entry], workers: int) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Decode everything once: broken files are skipped, odd formats marked for re-encoding, exact
    duplicates (same sha256) keep their first copy. Returns (good entries, (name, reason) skipped)."""
    results = parallel_map(check_member, [(e.source, e.member) for e in entries], workers, "checking images")
    good: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    first_of_hash: dict[str, Entry] = {}
    for e, (sha, error, reencode) in zip(entries, results):
        e.sha256, e.error, e.needs_reencode = sha, error, reencode
        if error:
            skipped.append((e.name, error))
            continue
        # Labeled sources come first in `entries`, so a labeled copy wins over an unlabeled one.
        kept = first_of_hash.get(sha)
        if kept is not None:
            conflict = " with a different label" if (kept.labeled and e.labeled and kept.label != e.label) else ""
            skipped.append((e.name, f"duplicate of {kept.name}{conflict}"))
            continue
        first_of_hash[sha] = e
        good.append(e)
    return good, skipped


def write_images(folder: Path, good: list[Entry], split_of: dict[int, str], classes: list[str],
                 image_size: int | None, workers: int) -> list[tuple]:
    """The split folders under `folder`; returns the manifest rows (split, path, label, source, sha256)."""
    for split in SPLITS[:3]:
        for c in classes:
            (folder / split / c).mkdir(parents=True)
    (folder / "unlabeled").mkdir()
    rows, jobs, taken = [], [], set()
    for i, e in enumerate(good):
        split = split_of[i]
        rel = output_name(e, split, taken)
        taken.add(rel)
        rows.append((split, rel, e.label if split != "unlabeled" else "", e.name, e.sha256))
        jobs.append((e.source, e.member, str(folder / rel), e.needs_reencode, image_size))
    parallel_map(write_member, jobs, workers, "writing images")
    order = {s: n for n, s in enumerate(SPLITS)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def summarise(rows: list[tuple], classes: list[str], skipped: list[tuple[str, str]], good: list[Entry],
              n_files: int, arguments: dict) -> dict:
    """summary.json: counts per split and class, what was skipped, the arguments."""
    counts = {s: {c: 0 for c in classes} for s in SPLITS[:3]}
    for split, _, label, _, _ in rows:
        if split != "unlabeled":
            counts[split][label] += 1
    n_duplicates = sum(r.startswith("duplicate") for _, r in skipped)
    return {
        "classes": classes,
        "counts": {**{s: {"total": sum(v.values()), **v} for s, v in counts.items()},
                   "unlabeled": {"total": sum(r[0] == "unlabeled" for r in rows)}},
        "files_seen": n_files,
        "skipped": len(skipped) - n_duplicates,
        "duplicates_dropped": n_duplicates,
        "reencoded": sum(e.needs_reencode for e in good),
        "duplicate_policy": "exact duplicates (same sha256) keep their first copy only; the "
                            "others are listed in skipped.csv",
        "seed": arguments["seed"],
        "label_seed": arguments["label_seed"],
        "image_size": arguments["image_size"],
        "arguments": dict(arguments),
    }


def replace_folder(new: Path, out: Path) -> None:
    """Move `new` into place as `out`, replacing an old `out` (--force) only once `new` is complete."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(new, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, out)


def resolve_sources(args) -> None:
    """--label-seed defaults to --seed; --synthetic generates its --src. Refuses a non-empty --out."""
    if args.label_seed is None:
        args.label_seed = args.seed
    if args.synthetic is not None:
        if args.src:
            raise DataError("--synthetic replaces --src: pass one or the other")
        synthetic_src = Path(f"{Path(args.out).resolve()}-synthetic-src")
        if synthetic_src.exists():
            shutil.rmtree(synthetic_src)
        args.src = [str(make_synthetic(synthetic_src, args.synthetic, seed=args.seed))]
    if not args.src:
        raise DataError("no labeled source: pass --src train.zip (or a folder of class subfolders)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise DataError(f"--out {out} exists and is not empty; pass --force to replace it")


def prepare(args) -> dict:
    """Build the dataset described by parsed `args`; returns the summary dict."""
    start = time.time()
    resolve_sources(args)
    out = Path(args.out)
    # 1. List every file, 2. decode each once, 3. draw the splits.
    entries, skipped, n_files = list_entries(args.src, args.unlabeled_src)
    classes = sorted({e.label for e in entries if e.labeled})
    if len(classes) < 2:
        raise DataError(f"found {len(classes)} class(es) {classes} in --src; need at least 2 "
                        "(Kaggle names like cat.1.jpg/dog.1.jpg, or one subfolder per class)")
    good, unusable = decode_and_dedupe(entries, args.workers)
    skipped += unusable
    split_of = assign_splits(good, classes, n_labeled=args.n_labeled, n_val=args.n_val, n_test=args.n_test,
                             seed=args.seed, label_seed=args.label_seed, labeled_list=args.labeled_list)

    # 4. Write everything into a temporary folder, then rename it into place.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = write_images(tmp, good, split_of, classes, args.image_size, args.workers)
        write_csv(tmp / "manifest.csv", ["split", "path", "label", "source", "sha256"], rows)
        write_csv(tmp / "skipped.csv", ["file", "reason"], sorted(skipped))
        summary = summarise(rows, classes, skipped, good, n_files, vars(args))
        summary["seconds"] = round(time.time() - start, 1)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        summary = prepare(args)
    except DataError as exc:
        print(f"prepare_data.py: error: {exc}", file=sys.stderr)
        return 2
    c = summary["counts"]
    print(f"wrote {args.out}: labeled {c['labeled']['total']}, val {c['val']['total']}, "
          f"test {c['test']['total']}, unlabeled {c['unlabeled']['total']} | classes {summary['classes']} | "
          f"skipped {summary['skipped']}, duplicates dropped {summary['duplicates_dropped']}, "
          f"re-encoded {summary['reencoded']} (see skipped.csv) | {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

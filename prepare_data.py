"""Split labeled (and extra unlabeled) images into labeled / unlabeled / val / test folders.

Kaggle Dogs vs Cats, the article's setting (100 labels, 1,000 val, 1,000 test, the rest unlabeled):

    python prepare_data.py --src train.zip --unlabeled-src test1.zip --out data

Any class-folder set works too (one subfolder per class, K >= 2 classes):

    python prepare_data.py --src my_images/ --out data --n-labeled 30 --n-val 300 --n-test 300

MNIST (mnist_png.zip: train/<digit>/<n>.png, test/<digit>/<n>.png), its official test set as the
test split (val, labeled and unlabeled drawn from train/), every digit a one-channel PNG:

    python prepare_data.py --src mnist_png.zip --test-folder test --grayscale --out mnist --n-labeled 100 --n-val 1000

Output under --out:
    labeled/<class>/*.jpg   val/<class>/*.jpg   test/<class>/*.jpg
    unlabeled/*.jpg         (named by content hash, so file names do not leak the withheld labels)
                            (*.png, 8-bit one-channel, with --grayscale)
    manifest.csv            split, path, label (empty for unlabeled), source, sha256 of the source file
    summary.json            counts per split and class, seeds, arguments, skipped/duplicate counts
    skipped.csv             file, reason (broken, unsupported, duplicate, ...)

Every image is decoded once here, so training never meets a file that would kill a DALI pipeline
mid-epoch. Exact duplicates (same sha256) are dropped: the first copy (labeled sources before
unlabeled ones, then sorted by name; with --test-folder, a copy in the test folder before all) is
kept and the others are listed in skipped.csv, so no image can sit in two splits. The sources are
only read; the output is built in a temporary folder beside --out and renamed into place, so an
interrupted run leaves no half-written dataset.
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
    in_test_folder: bool = False  # under --test-folder: the test split, not drawn

    @property
    def name(self) -> str:
        return f"{self.source}:{self.member}"


# ----------------------------------------------------------------------------------------------
# Reading sources (zips or folders)

def list_source(source: str) -> list[str]:
    """Return every regular file of a zip or folder as a sorted list of '/'-separated members."""
    return list_source_tree(source)[0]


def list_source_tree(source: str) -> tuple[list[str], list[str]]:
    """(files, folders) of a zip or folder, sorted and '/'-separated, folders without the trailing
    '/'. Folders are the listed ones (zip directory entries, directories on disk), empty ones
    included, and every folder a file path passes through."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"source {source!r} does not exist; pass a zip file or a folder of images")
    if path.is_dir():
        files, folders = [], set()
        for p in path.rglob("*"):
            rel = p.relative_to(path).as_posix()
            if p.is_file():
                files.append(rel)
            elif p.is_dir():
                folders.add(rel)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        files = [i.filename for i in infos if not i.is_dir()]
        folders = {i.filename.rstrip("/") for i in infos if i.is_dir()}
    else:
        raise DataError(f"source {source!r} is neither a folder nor a zip file")
    for f in files:
        parts = f.split("/")[:-1]
        folders.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return sorted(files), sorted(folders)


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


def class_folder(member: str) -> str | None:
    """The folder that gives `member` its class ('train/3' for train/3/12.png); None when the
    class comes from a Kaggle file name or the file lies at the top of its source."""
    parts = member.split("/")
    if len(parts) < 2 or KAGGLE_NAME.match(parts[-1]):
        return None
    return "/".join(parts[:-1])


def parent_folder(folder: str) -> str:
    """'train/3' -> 'train', 'train' -> '' (the top of the source)."""
    return folder.rsplit("/", 1)[0] if "/" in folder else ""


def check_class_folders(source: str, images: list[str], folders: list[str]) -> None:
    """Refuse a folder that sits beside the class folders (train/3/ next to train/0/) and holds no
    image: a class without examples. Kaggle names (train/cat.0.jpg) have no class folders."""
    parents = {parent_folder(f) for f in map(class_folder, images) if f is not None}
    if not parents:
        return
    with_images = set()
    for m in images:
        parts = m.split("/")[:-1]
        with_images.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    empty = [f for f in folders if parent_folder(f) in parents and f not in with_images
             and not any(part.startswith(".") or part == "__MACOSX" for part in f.split("/"))]
    if empty:
        more = f" (nor do {', '.join(f + '/' for f in empty[1:4])}{', ...' if len(empty) > 4 else ''})"
        raise DataError(f"class folder {empty[0]}/ in {source} holds no images"
                        f"{more if len(empty) > 1 else ''}: add its images or remove the folder")


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

def grey_image(img: Image.Image) -> Image.Image | None:
    """`img` as one 8-bit channel (mode L), or None when it holds colour. One-channel modes are
    grey: 1 and F are converted, 16/32-bit integer ones (I;16, I) scaled from 0-65535 to 0-255,
    and LA loses its alpha. Any other mode is grey when R, G and B are equal after conversion to RGB."""
    if img.mode == "L":
        return img
    if img.mode in ("LA", "La"):
        return img.getchannel("L")
    if img.mode in ("1", "F"):
        return img.convert("L")
    if img.mode == "I" or img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.int64)
        return Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")
    rgb = np.asarray(img.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return Image.fromarray(np.ascontiguousarray(rgb[..., 0]), "L")
    return None


def is_plain_grey_png(data: bytes) -> bool:
    """PNG header says 8 bits per pixel, grey, no alpha (IHDR bit depth 8, colour type 0)."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[24:26] == b"\x08\x00"


def check_image(data: bytes, grayscale: bool = False) -> tuple[str | None, bool]:
    """Decode fully. Returns (error, needs_reencode). Anything but an upright RGB JPEG is re-encoded;
    with `grayscale`, anything but an upright 8-bit grey PNG, and a colour image is an error."""
    if not data:
        return "empty file (0 bytes)", False
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # full decode: catches truncated files that open() alone accepts
            orientation = img.getexif().get(0x0112, 1)
            mode = img.mode
            size = img.size
            colour = grayscale and size[0] >= 1 and size[1] >= 1 and grey_image(img) is None
    except UnidentifiedImageError:
        return "not a readable image", False
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {exc}", False
    if size[0] < 1 or size[1] < 1:
        return "image has no pixels", False
    if colour:
        return f"colour image (mode {mode}) in a --grayscale set: convert it to grayscale or leave it out", False
    if grayscale:  # the loaders read an upright 8-bit grey PNG as it is; the rest is re-encoded once
        return None, not (fmt == "PNG" and mode == "L" and orientation == 1 and is_plain_grey_png(data))
    # DALI's decoders and torchvision.io read RGB baseline JPEGs the same way; other modes and
    # formats, and EXIF-rotated files (decoders disagree on orientation), are normalised once here.
    return None, (fmt != "JPEG" or mode != "RGB" or orientation != 1)


def check_member(job: tuple) -> tuple[str | None, str | None, bool]:
    """job: (source, member) or (source, member, grayscale). Returns (sha256, error, needs_reencode)."""
    source, member, *grayscale = job
    try:
        data = read_member(source, member)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # RuntimeError: encrypted zip member
        return None, f"cannot read: {exc}", False
    error, reencode = check_image(data, grayscale=bool(grayscale and grayscale[0]))
    return hashlib.sha256(data).hexdigest(), error, reencode


def write_member(job: tuple) -> None:
    """job: (source, member, dest, reencode, image_size[, grayscale]). Writes an RGB JPEG, or with
    grayscale an 8-bit grey PNG; a clean file at its own size is copied byte for byte."""
    source, member, dest, reencode, image_size, *grayscale = job
    grayscale = bool(grayscale and grayscale[0])
    data = read_member(source, member)
    if not reencode and image_size is None:
        with open(dest, "wb") as f:  # already a clean RGB JPEG (grey PNG): copy the bytes untouched
            f.write(data)
        return
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        img = grey_image(img) if grayscale else img.convert("RGB")
        if img is None:
            raise ValueError(f"{source}:{member} holds colour; check_member refuses it with --grayscale")
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.BICUBIC)
        if grayscale:
            img.save(dest, "PNG")
        else:
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
        if e.labeled and not e.in_test_folder:
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
    `label_seed`, so changing the labeled draw never changes val/test. Entries in the test folder
    (--test-folder) are the test split as they are; pass n_test=0 then."""
    by_class: dict[str, list[int]] = {c: [] for c in classes}
    for i, e in enumerate(entries):
        if e.labeled and not e.in_test_folder:
            by_class[e.label].append(i)
    picked = pick_listed(entries, labeled_list) if labeled_list else set()
    per_class_labeled = ({c: sum(entries[i].label == c for i in picked) for c in classes} if labeled_list
                         else per_class_counts(n_labeled, classes))
    per_class_val, per_class_test = per_class_counts(n_val, classes), per_class_counts(n_test, classes)
    check_split_sizes(by_class, per_class_labeled, per_class_val, per_class_test)

    split_of: dict[int, str] = {i: "unlabeled" for i, e in enumerate(entries) if not e.labeled}
    split_of.update({i: "test" for i, e in enumerate(entries) if e.in_test_folder})
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


def output_name(entry: Entry, split: str, taken: set[str], ext: str = ".jpg") -> str:
    """Relative output path. Unlabeled files are named by hash: `cat.12.jpg` would give the label away."""
    if split == "unlabeled":
        return f"unlabeled/{entry.sha256[:20]}{ext}"
    stem = os.path.splitext(entry.member.rsplit("/", 1)[-1])[0]
    rel = f"{split}/{entry.label}/{stem}{ext}"
    if rel in taken:  # same file name in two sources or two folders of one source
        rel = f"{split}/{entry.label}/{stem}.{entry.sha256[:8]}{ext}"
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


class DefaultInt(int):
    """An integer default that stays distinguishable from the same number given on the command line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every flag's default, 0 and off included: ` (default: X)` after its help. A help
    text that already names its default (it holds the word "default", e.g. "default: --batch-size")
    is left as written; an unset default (None, an empty list) reads "none", a boolean "on" / "off"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is argparse.SUPPRESS or re.search(r"\bdefault\b", text, re.IGNORECASE)
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: {shown_default(action.default)})"


def shown_default(value) -> str:
    """A default as a user would type or read it, escaped for argparse's %-formatting of help."""
    if value is None or value == []:
        text = "none"
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, (list, tuple)):
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("%", "%%")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Split labeled images into labeled/unlabeled/val/test folders for SSGAN training.",
        formatter_class=HelpFormatter)
    p.add_argument("--src", action="append", default=[], metavar="PATH",
                   help="zip or folder of labeled images (repeatable). Class from Kaggle names "
                        "(cat.12.jpg -> cat) or from one subfolder per class")
    p.add_argument("--unlabeled-src", action="append", default=[], metavar="PATH",
                   help="zip or folder of images without labels, e.g. Kaggle's test1.zip (repeatable)")
    p.add_argument("--out", default="data", help="output folder (must be empty or absent, see --force)")
    p.add_argument("--n-labeled", type=int_at_least(0), default=100,
                   help="labeled training images, class-balanced")
    p.add_argument("--n-val", type=int_at_least(0), default=1000, help="validation images, class-balanced")
    p.add_argument("--n-test", type=int_at_least(0), default=DefaultInt(1000),
                   help="test images, class-balanced (not with --test-folder, which gives the test split)")
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
    p.add_argument("--test-folder", metavar="NAME", default=None,
                   help="top-level folder of --src holding the test split, e.g. test for "
                        "test/<class>/*.png: all its images are the test split, none drawn; val, "
                        "labeled and unlabeled come from the other images (e.g. train/<class>/)")
    p.add_argument("--grayscale", action="store_true",
                   help="write every split as 8-bit one-channel PNGs (e.g. MNIST); colour images "
                        "are skipped and listed in skipped.csv")
    return p


def check_flags(parser: argparse.ArgumentParser, test_folder: str | None, n_test: int) -> None:
    """Usage errors that need more than one flag (exit status 2, like argparse's own)."""
    if test_folder is None:
        return
    if not isinstance(n_test, DefaultInt):
        parser.error("--n-test draws a test split at random and --test-folder gives one: pass only one")
    if not test_folder.strip("/"):
        parser.error("--test-folder needs a folder name, e.g. --test-folder test")


def list_entries(labeled_sources: list[str], unlabeled_sources: list[str], test_folder: str | None = None
                 ) -> tuple[list[Entry], list[tuple[str, str]], int, list[str]]:
    """Every file of the sources, with the ones that are not images by name sorted out and each
    labeled image's class; with `test_folder`, the labeled images under it are marked as the test
    split. Returns (entries, (name, reason) skipped, files seen, the --src holding the test folder)."""
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    n_files, test_sources = 0, []
    for k, source in enumerate(labeled_sources + unlabeled_sources):
        labeled = k < len(labeled_sources)
        members, folders = list_source_tree(source)
        n_files += len(members)
        images = []
        for member in members:
            reason = skip_reason_for_name(member)
            if reason:
                skipped.append((f"{source}:{member}", reason))
            else:
                images.append(member)
        if not images:
            raise DataError(f"source {source!r} holds no image files ({len(members)} files in all)")
        if labeled:
            check_class_folders(source, images, folders)
            if test_folder is not None and test_folder in folders:
                test_sources.append(source)
        entries += [labeled_entry(Entry(k, source, m, labeled), test_folder) if labeled
                    else Entry(k, source, m, labeled) for m in images]
    if test_folder is not None and not test_sources:
        raise DataError(f"--test-folder {test_folder}: no folder {test_folder}/ at the top of "
                        f"{describe_tops(labeled_sources)}; name the folder holding the test images, "
                        "as a path inside the --src zip or folder")
    return entries, skipped, n_files, test_sources


def labeled_entry(entry: Entry, test_folder: str | None) -> Entry:
    """`entry` with its class, and whether it lies in the test folder."""
    entry.label = infer_label(entry.member)
    if entry.label is None:
        raise DataError(
            f"cannot tell the class of {entry.name}: name files <class>.<number>.jpg "
            "(Kaggle style) or put them in one subfolder per class; images without "
            "labels go to --unlabeled-src")
    entry.in_test_folder = test_folder is not None and entry.member.startswith(test_folder + "/")
    return entry


def describe_tops(sources: list[str]) -> str:
    """'a.zip (top-level folders: test1/, train/)' for each source, for error messages."""
    described = []
    for source in sources:
        tops = [f + "/" for f in list_source_tree(source)[1] if "/" not in f]
        described.append(f"{source} (top-level folders: {', '.join(tops[:8]) or 'none'})")
    return ", ".join(described)


def check_test_classes(entries: list[Entry], test_folder: str, test_sources: list[str], usable: bool = False
                       ) -> None:
    """The test folder must hold every class of the training images, and no other. `usable`: the
    entries are the ones left after decoding (broken, colour and duplicate files gone)."""
    pool = {e.label for e in entries if e.labeled and not e.in_test_folder}
    test = {e.label for e in entries if e.in_test_folder}
    where = f"test folder {test_folder}/ in {', '.join(test_sources)}"
    what = "usable images" if usable else "images"
    if not pool:
        raise DataError(f"{where} holds all the {what} of --src: nothing is left for the labeled, "
                        "val and unlabeled splits; add the training images (e.g. train/<class>/)")
    missing, extra = sorted(pool - test), sorted(test - pool)
    if missing:
        more = f" (nor of {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else ""
        raise DataError(f"{where} has no {what} of class {missing[0]!r}{more}, which the training images "
                        "have: add test images of that class, or remove the class from the training images")
    if extra:
        more = f" (and of {', '.join(map(repr, extra[1:]))})" if len(extra) > 1 else ""
        raise DataError(f"{where} has {what} of class {extra[0]!r}{more}, which the training {what} lack: "
                        "add training images of that class, or remove its test folder")


def decode_and_dedupe(entries: list[Entry], workers: int, grayscale: bool = False
                      ) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Decode everything once: broken files (and colour ones with `grayscale`) are skipped, odd
    formats marked for re-encoding, exact duplicates (same sha256) keep their first copy, a copy in
    the test folder before all others. Returns (good entries in their order, (name, reason) skipped)."""
    results = parallel_map(check_member, [(e.source, e.member, grayscale) for e in entries], workers,
                           "checking images")
    reasons: dict[int, str] = {}
    first_of_hash: dict[str, Entry] = {}
    # Labeled sources come first in `entries`, so a labeled copy wins over an unlabeled one; the
    # test folder's images go before them all, so a given test split stays whole.
    for i in sorted(range(len(entries)), key=lambda i: not entries[i].in_test_folder):
        e, (sha, error, reencode) = entries[i], results[i]
        e.sha256, e.error, e.needs_reencode = sha, error, reencode
        if error:
            reasons[i] = error
            continue
        kept = first_of_hash.get(sha)
        if kept is not None:
            conflict = " with a different label" if (kept.labeled and e.labeled and kept.label != e.label) else ""
            reasons[i] = f"duplicate of {kept.name}{conflict}"
            continue
        first_of_hash[sha] = e
    good = [e for i, e in enumerate(entries) if i not in reasons]
    return good, [(entries[i].name, reasons[i]) for i in sorted(reasons)]


def write_images(folder: Path, good: list[Entry], split_of: dict[int, str], classes: list[str],
                 image_size: int | None, workers: int, grayscale: bool = False) -> list[tuple]:
    """The split folders under `folder` (RGB JPEGs, or grey PNGs with `grayscale`); returns the
    manifest rows (split, path, label, source, sha256)."""
    for split in SPLITS[:3]:
        for c in classes:
            (folder / split / c).mkdir(parents=True)
    (folder / "unlabeled").mkdir()
    rows, jobs, taken = [], [], set()
    for i, e in enumerate(good):
        split = split_of[i]
        rel = output_name(e, split, taken, ".png" if grayscale else ".jpg")
        taken.add(rel)
        rows.append((split, rel, e.label if split != "unlabeled" else "", e.name, e.sha256))
        jobs.append((e.source, e.member, str(folder / rel), e.needs_reencode, image_size, grayscale))
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
        "test_folder": arguments.get("test_folder"),
        "grayscale": bool(arguments.get("grayscale")),
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
    if args.test_folder is not None:  # the test split is given, none is drawn
        args.test_folder, args.n_test = args.test_folder.strip("/"), None
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
    entries, skipped, n_files, test_sources = list_entries(args.src, args.unlabeled_src, args.test_folder)
    if args.test_folder is not None:
        check_test_classes(entries, args.test_folder, test_sources)
    classes = sorted({e.label for e in entries if e.labeled and not e.in_test_folder})
    if len(classes) < 2:
        raise DataError(f"found {len(classes)} class(es) {classes} in --src; need at least 2 "
                        "(Kaggle names like cat.1.jpg/dog.1.jpg, or one subfolder per class)")
    good, unusable = decode_and_dedupe(entries, args.workers, args.grayscale)
    skipped += unusable
    if args.test_folder is not None:
        check_test_classes(good, args.test_folder, test_sources, usable=True)
    split_of = assign_splits(good, classes, n_labeled=args.n_labeled, n_val=args.n_val,
                             n_test=args.n_test or 0, seed=args.seed, label_seed=args.label_seed,
                             labeled_list=args.labeled_list)

    # 4. Write everything into a temporary folder, then rename it into place.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = write_images(tmp, good, split_of, classes, args.image_size, args.workers, args.grayscale)
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
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args.test_folder, args.n_test)
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

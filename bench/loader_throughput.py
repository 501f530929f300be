"""Image-loading throughput on the CPU: our DALI and torch loaders against a JPEG decode ceiling and
a plain torchvision ImageFolder baseline, on the same files, interleaved in rounds whose order rotates.

    # BENCHMARKS.md "Image loading": 2,000 images of Kaggle's train.zip, output 64 and 224 px
    python bench/loader_throughput.py --data-src train.zip --threads 1 --json bench/results/loader_cpu_t1.json
    # smoke run: 200 images, 64 px only, 2 rounds
    python bench/loader_throughput.py --data-src train.zip --quick

2,000 JPEGs of --data-src (Kaggle's train.zip or a folder of cat.N.jpg / dog.N.jpg; half cats, half
dogs, drawn with seed 0) go through prepare_data.py into a temporary class-folder tree, untouched,
and again with --image-size S for each output size S. Images/s of a full epoch from a fresh loader
(start-up included, batch 64), medians of 5 rounds after a warm-up round, T = --threads:
  decode ceiling   T processes decoding to full-resolution RGB with torchvision.io, nothing else
  DALI (ours)      dali_loaders.labeled_loader(..., backend="dali", train=False, num_threads=T):
                   decode, resize to SxS, normalise to float [-1, 1]
  torch fallback   the same call with backend="torch"
  baseline         torchvision ImageFolder + Resize((S, S)), ToTensor, Normalize in a DataLoader
                   with T workers
  ..., files pre-resized to S: the ceiling and DALI on prepare_data.py's SxS files
"vs ceiling" divides by the ceiling on the same files, "vs baseline" by the baseline.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

from bench_machine import header_line, machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KAGGLE = re.compile(r"(?:^|/)(cat|dog)\.\d+\.jpg$")
BATCH = 64


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loader_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-src", metavar="PATH",
                   help="Kaggle's train.zip or a folder of cat.N.jpg / dog.N.jpg, only read (required)")
    p.add_argument("--threads", type=int, default=1,
                   help="DALI threads / DataLoader workers / decode processes (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 images, 64 px only, 2 rounds")
    return p


def extract_subset(src: Path, out: Path, n_images: int) -> None:
    """n_images Kaggle JPEGs of src (a zip or a folder), half per class, copied into out/<class>/."""
    zf = None if src.is_dir() else zipfile.ZipFile(src)
    names = sorted(p.as_posix() for p in src.rglob("*.jpg")) if zf is None else sorted(zf.namelist())
    rng = random.Random(0)
    for cls in ("cat", "dog"):
        pool = [n for n in names if (m := KAGGLE.search(n)) and m[1] == cls]
        for name in rng.sample(pool, min(n_images // 2, len(pool))):
            dest = out / cls / name.rsplit("/", 1)[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(Path(name).read_bytes() if zf is None else zf.read(name))
    if zf is not None:
        zf.close()


def prepared(src: Path, out: Path, size: int | None) -> Path:
    """What prepare_data.py writes from src (untouched copies, or resized with --image-size), every
    image in labeled/<class>/."""
    import prepare_data
    n = sum(1 for _ in src.rglob("*.jpg"))
    argv = ["--src", str(src), "--out", str(out), "--n-labeled", str(n), "--n-val", "0", "--n-test", "0",
            "--workers", "1", *(["--image-size", str(size)] if size else [])]
    if prepare_data.main(argv) != 0:
        raise SystemExit(f"prepare_data.py failed on {src}")
    return out / "labeled"


def _decode_files(paths: list[str]) -> int:  # in a pool process: module level, so it pickles
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    torch.set_num_threads(1)
    for path in paths:
        decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    return len(paths)


def decode_ceiling(pool, threads: int, folder: Path):
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    chunk = max(1, len(paths) // (8 * threads))  # small chunks balance the pool
    jobs = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    return lambda: sum(pool.map(_decode_files, jobs, chunksize=1))


def epoch(make_loader):
    """A full epoch from a fresh loader (start-up included): the number of images it gave."""
    def run() -> int:
        n = 0
        for batch in make_loader():
            n += (batch[0] if isinstance(batch, (list, tuple)) else batch).shape[0]
        gc.collect()  # a DALI pipeline goes now, not during the next contender
        return n
    return run


def ours(backend: str, folder: Path, size: int, threads: int):
    import torch
    import dali_loaders
    return epoch(lambda: dali_loaders.labeled_loader(folder, batch_size=BATCH, image_size=size, train=False,
                                                     backend=backend, num_threads=threads,
                                                     device=torch.device("cpu")))


def baseline(folder: Path, size: int, threads: int):
    import torch
    from torchvision import datasets, transforms
    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose([
        transforms.Resize((size, size)), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    return epoch(lambda: torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=threads))


def contenders(size: int, threads: int, orig: Path, pre: Path, pool) -> list[tuple[str, str, object]]:
    """(name, kind, run) for one output size; kind: ceiling / ours / baseline, '-pre' on pre-resized files."""
    import dali_loaders
    dali = dali_loaders.dali_available()
    out = [("decode ceiling", "ceiling", decode_ceiling(pool, threads, orig))]
    out += [("DALI (ours)", "ours", ours("dali", orig, size, threads))] if dali else []
    out += [("torch fallback (ours)", "ours", ours("torch", orig, size, threads)),
            ("baseline", "baseline", baseline(orig, size, threads)),
            (f"decode ceiling, files pre-resized to {size}", "ceiling-pre", decode_ceiling(pool, threads, pre))]
    out += [(f"DALI (ours), files pre-resized to {size}", "ours-pre", ours("dali", pre, size, threads))] if dali else []
    return out


def measure(configs: dict, threads: int, rounds: int, expected: int) -> dict:
    """{(size, name): [images/s per timed round]}; round 0 is a warm-up, the order rotates."""
    import torch
    rates: dict = {}
    for rnd in range(rounds):
        t_round = time.perf_counter()
        for size, cs in configs.items():
            for name, _, run in cs[rnd % len(cs):] + cs[:rnd % len(cs)]:
                torch.set_num_threads(threads)
                t = time.perf_counter()
                n = run()
                if n != expected:
                    raise RuntimeError(f"{name} at {size} px gave {n} images, expected {expected}")
                if rnd:
                    rates.setdefault((size, name), []).append(n / (time.perf_counter() - t))
        print(f"round {rnd + 1}/{rounds}{' (warm-up)' if rnd == 0 else ''}: "
              f"{time.perf_counter() - t_round:.1f} s", flush=True)
    return rates


def table(configs: dict, rates: dict) -> tuple[list[list[str]], list[dict]]:
    """BENCHMARKS.md's columns: output | contender | images/s | vs ceiling | vs baseline."""
    rows, cells = [], [["output", "contender", "images/s", "vs ceiling", "vs baseline"]]
    for size, cs in configs.items():
        med = {name: statistics.median(rates[size, name]) for name, _, _ in cs}
        kinds = {kind: name for name, kind, _ in cs}
        for name, kind, _ in cs:
            ceiling = med[kinds["ceiling-pre" if kind.endswith("-pre") else "ceiling"]]
            vs_ceiling, vs_baseline = med[name] / ceiling, med[name] / med[kinds["baseline"]]
            rows.append({"size": size, "contender": name, "images_per_s": med[name], "vs_ceiling": vs_ceiling,
                         "ceiling_images_per_s": ceiling, "vs_baseline": vs_baseline,
                         "runs_images_per_s": rates[size, name]})
            of = f" of {ceiling:.0f}" if kind == "ours-pre" else ""
            cells.append([f"{size} px", name, f"{med[name]:.0f}", f"{vs_ceiling:.2f}{of}", f"{vs_baseline:.2f}"])
    return cells, rows


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.data_src or not Path(args.data_src).exists():
        error = f"{args.data_src}: no such file or folder" if args.data_src else "PATH is required"
        print(f"loader_throughput.py: error: --data-src {error}", file=sys.stderr)
        return 2
    n_images, sizes, rounds = (200, [64], 3) if args.quick else (2000, [64, 224], 6)  # rounds: 1 warm-up
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    import torch
    from evaluate import markdown_table
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        extract_subset(Path(args.data_src), Path(tmp) / "subset", n_images)
        orig = prepared(Path(tmp) / "subset", Path(tmp) / "orig", None)  # duplicates dropped
        pre = {s: prepared(Path(tmp) / "subset", Path(tmp) / f"resized-{s}", s) for s in sizes}
        n = sum(1 for _ in orig.rglob("*.jpg"))
        with mp.get_context("spawn").Pool(args.threads) as pool:  # no fork beside DALI's threads
            configs = {s: contenders(s, args.threads, orig, pre[s], pool) for s in sizes}
            rates = measure(configs, args.threads, rounds, n)
    cells, rows = table(configs, rates)
    print(f"\n## Loader throughput: {n} JPEGs of {Path(args.data_src).name}, CPU, "
          f"{args.threads} thread(s)\n\n{header_line(info)}\n\n{markdown_table(cells)}\n")
    print(f"Medians of {rounds - 1} rounds after 1 warm-up, contenders interleaved, batch {BATCH}; "
          "a full epoch from a fresh loader, start-up included.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"benchmark": "loader_throughput", "machine": info,
                                               "args": vars(args), "images": n, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

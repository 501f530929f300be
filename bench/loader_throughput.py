"""Image-loading throughput: our DALI and torch loaders against the JPEG decode ceiling and a
plain torchvision ImageFolder baseline, on the same JPEG files, side by side in one run.

    # smoke run (about a minute on 2 idle cores): 200 images, 1 warm-up + 2 rounds
    .venv/bin/python bench/loader_throughput.py --quick
    # the numbers: 2,000 images of the shared train.zip, output 64 and 224 px, 1 and 2 threads
    .venv/bin/python bench/loader_throughput.py --json bench/results/loader_cpu.json
    # a bigger box (on CUDA, DALI decodes with nvJPEG: device 'mixed')
    .venv/bin/python bench/loader_throughput.py --threads 1 2 4 8 --json bench/results/loader_gpu.json

What it measures. --n-images JPEGs (the 200x200 px Kaggle images, half cats half dogs, drawn with
--seed) are copied untouched from --src into a temporary ImageFolder tree (cat/, dog/); with
--pre-resized (on by default) they are also written pre-resized to each output size by
prepare_data.py's own writer (what `prepare_data.py --image-size N` produces). Then, for every
output size S (--sizes) and thread count T (--threads), images per second of:

  decode ceiling   T parallel decode-only loops (a pool of T processes, so the GIL cannot matter):
                   read the file, decode it to full-resolution RGB uint8, nothing else. Two decoders:
                   PIL (Image.open + convert('RGB')) and torchvision.io.decode_jpeg; the faster one is
                   "the ceiling". On CUDA a batched GPU decode (torchvision nvJPEG) competes too.
  PIL draft        PIL with img.draft('RGB', (S, S)): libjpeg scales by 1/2, 1/4 or 1/8 inside the
                   IDCT, so for small outputs (64 px from 200 px: a 100 px decode) it is a legitimate
                   speed-up a loader may use; shown for reference, not counted as the ceiling. Absent
                   where it would not downscale (S >= half the image size).
  DALI (ours)      dali_loaders.labeled_loader(..., backend='dali', train=False, num_threads=T,
                   batch_size=64): decode, resize to SxS, normalise to float [-1, 1] (CPU pipeline
                   here; on CUDA device='cuda', i.e. 'mixed' nvJPEG decoding).
  torch (ours)     the same call with backend='torch' (torchvision decode + resize in a DataLoader;
                   it uses T worker processes, or the main process when T == 1).
  baseline         the way most users write it: torchvision.datasets.ImageFolder with
                   Compose([Resize((S, S)), ToTensor(), Normalize(0.5, 0.5)]) in a
                   DataLoader(batch_size=64, num_workers=T, shuffle=False). Choice: T workers also
                   when T == 1 (one decoding process, like every other contender at T == 1).
  ... pre-resized  decode ceiling, DALI and torch again, on the files pre-resized to SxS.

Every contender reads the same files and hands over every image of a full epoch (the loaders also
convert to float [-1, 1] batches; the ceiling does not). Each loader epoch starts from a fresh
loader and includes its start-up (DataLoader workers, DALI pipeline build) as every epoch of a run
does; "1st batch" shows that start-up and "steady" the rate after the first batch, which is what
an epoch of the real 15k-image set sees. Work in the main process is capped at T threads
(torch.set_num_threads(T)); DataLoader workers run one torch thread each. Protocol: one warm-up
round, then --repeats rounds; in each round every contender runs once, in an order rotated from
round to round; the table gives medians.

Goal: DALI and the torch fallback at >= 90 % of the decode ceiling and >= 2x the baseline at equal
threads ("vs ceiling" and "vs baseline" compare epoch images/s; pre-resized rows are compared with
the ceiling on the pre-resized files and with the baseline on the original files).
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from bench_machine import header_line, machine_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "dogs-vs-cats" / "train.zip"
QUICK = {"n_images": 200, "repeats": 2, "warmup": 1}
GOAL_CEILING, GOAL_BASELINE = 0.90, 2.0
GIL_RELEASED = 0.15  # releases_gil() share above which the decoder runs beside Python code
CPU_DECODERS = ("pil", "torchvision")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loader_throughput.py",
        description="Images/s of our DALI and torch loaders vs the JPEG decode ceiling and a "
                    "torchvision ImageFolder baseline, on the same files.")
    p.add_argument("--src", default=str(DEFAULT_SRC),
                   help="zip or folder of Kaggle-named JPEGs (cat.N.jpg, dog.N.jpg), only read "
                        "(default: %(default)s)")
    p.add_argument("--n-images", type=int, default=2000,
                   help="images copied from --src, half per class, drawn with --seed "
                        "(default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="output sizes in pixels (default: 64 224)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread / worker / process counts T to compare at (default: 1 2)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the loaders (default: 64)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds, the table gives medians (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--pre-resized", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure DALI, torch and the ceiling on files pre-resized to each size "
                        "(default: on)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the loaders deliver batches; auto (default): CUDA when available. "
                        "On CUDA DALI decodes on the GPU")
    p.add_argument("--workdir", default=None,
                   help="folder for the extracted images, kept and reused across runs (default: "
                        "a temporary folder, deleted at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw (default: 0)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['n_images']} images, {QUICK['warmup']} warm-up + "
                        f"{QUICK['repeats']} rounds, overriding --n-images, --warmup and --repeats "
                        "(about a minute on 2 cores)")
    return p


# ----------------------------------------------------------------------------------------------
# Data

def extract_subset(src: Path, out: Path, n_images: int, seed: int) -> list[str]:
    """Copy n_images JPEGs (balanced over classes) into out/<class>/; returns the source members."""
    from prepare_data import infer_label, list_source, read_member
    members = [m for m in list_source(str(src)) if m.lower().endswith((".jpg", ".jpeg"))]
    by_class: dict[str, list[str]] = {}
    for m in members:
        by_class.setdefault(infer_label(m) or "unknown", []).append(m)
    rng = random.Random(seed)
    per_class = max(1, n_images // len(by_class))
    chosen = []
    for label in sorted(by_class):
        pool = by_class[label]
        chosen += rng.sample(pool, min(per_class, len(pool)))
    for m in chosen:
        dest = out / (infer_label(m) or "unknown") / m.rsplit("/", 1)[-1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_member(str(src), m))
    return chosen


def pre_resize(src: Path, members: list[str], out: Path, size: int) -> None:
    """What `prepare_data.py --image-size size` writes, by prepare_data's own writer."""
    import prepare_data
    write = prepare_data.write_member  # (source, member, dest, needs_reencode, image_size)
    for m in members:
        dest = out / (prepare_data.infer_label(m) or "unknown") / m.rsplit("/", 1)[-1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        write((str(src), m, str(dest), False, size))


def prepare_folders(args, workdir: Path) -> dict:
    """{'orig': folder, size: pre-resized folder}; reuses a complete earlier extraction."""
    stamp = workdir / f"subset-{args.n_images}-{args.seed}.json"
    folders = {"orig": workdir / "orig"}
    members = json.loads(stamp.read_text()) if stamp.is_file() else None
    if members is None:
        shutil.rmtree(folders["orig"], ignore_errors=True)
        members = extract_subset(Path(args.src), folders["orig"], args.n_images, args.seed)
        stamp.write_text(json.dumps(members))
    if args.pre_resized:
        for size in args.sizes:
            folder = workdir / f"resized-{size}"
            done = folder / f".done-{args.n_images}-{args.seed}"
            if not done.is_file():
                shutil.rmtree(folder, ignore_errors=True)
                pre_resize(Path(args.src), members, folder, size)
                done.touch()
            folders[size] = folder
    return folders


def image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


# ----------------------------------------------------------------------------------------------
# Decode-only loops (run in pool processes; module level so they pickle)

def _pool_init() -> None:
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")


def _decode_one(decoder: str, path: str, size: int) -> None:
    if decoder == "torchvision":
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
        decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
        return
    from PIL import Image
    with Image.open(path) as img:
        if decoder == "pil-draft":
            img.draft("RGB", (size, size))  # DCT-domain downscale to the smallest scale >= size
        img.convert("RGB").load()


def _decode_files(job) -> int:
    decoder, paths, size = job
    for path in paths:
        _decode_one(decoder, path, size)
    return len(paths)


def _noop(_):
    return os.getpid()


def draft_downscales(path: str, size: int) -> bool:
    from PIL import Image
    with Image.open(path) as img:
        before = img.size
        img.draft("RGB", (size, size))
        return img.size != before


def releases_gil(decoder: str, workdir: Path) -> float:
    """Share of a pure-Python loop's speed kept while another thread decodes one big JPEG
    (~0 when the decoder holds the GIL through the call, ~1 when it releases it, less on a
    busy machine). Informative: the ceiling uses processes either way."""
    import numpy as np
    from PIL import Image
    path = workdir / "gil-check.jpg"
    if not path.is_file():
        yy, xx = np.mgrid[0:3000, 0:3000]
        pixels = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 9) % 256], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)

    def count_for(seconds: float, done=None) -> float:
        n, t0 = 0, time.perf_counter()
        while (time.perf_counter() - t0 < seconds) and (done is None or not done.is_set()):
            n += 1
        return n / (time.perf_counter() - t0)

    _decode_one(decoder, str(path), 0)  # warm
    solo = count_for(0.2)
    done = threading.Event()

    def work():
        for _ in range(3):
            _decode_one(decoder, str(path), 0)
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.005)
    shared = count_for(10.0, done)
    thread.join()
    return shared / solo


# ----------------------------------------------------------------------------------------------
# Contenders: each returns (images, seconds, seconds to the first batch or None)

def run_loader(make_loader, expected: int, device) -> tuple[int, float, float, int]:
    import torch
    t0 = time.perf_counter()
    loader = make_loader()
    n, t_first, n_first = 0, None, 0
    batch = images = None
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        n += images.shape[0]
        if t_first is None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_first, n_first = time.perf_counter(), n
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    loader = batch = images = None
    gc.collect()  # a DALI pipeline goes now, not during the next contender
    if n != expected:
        raise RuntimeError(f"loader gave {n} images, expected {expected}")
    return n, elapsed, t_first - t0, n_first


def baseline_loader(folder: Path, size: int, threads: int, batch_size: int, device):
    import torch
    from torchvision import datasets, transforms
    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose([
        transforms.Resize((size, size)), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=threads,
                                         shuffle=False, pin_memory=cuda)
    for images, labels in loader:
        yield images.to(device, non_blocking=cuda), labels.to(device, non_blocking=cuda)


def gpu_decode(paths: list[str], batch_size: int, device) -> int:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    n = 0
    for i in range(0, len(paths), batch_size):
        data = [read_file(p) for p in paths[i:i + batch_size]]
        n += len(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    torch.cuda.synchronize(device)
    return n


def gpu_decode_works(paths: list[str], device) -> bool:
    try:
        gpu_decode(paths[:2], 2, device)
    except Exception as exc:  # noqa: BLE001 - an optional contender
        print(f"note: torchvision GPU decoding unavailable ({type(exc).__name__}: {exc}); "
              "the ceiling is CPU decoding only", file=sys.stderr)
        return False
    return True


class Contender:
    def __init__(self, name: str, kind: str, files: str, run):
        self.name, self.kind, self.files, self.run = name, kind, files, run
        self.runs: list[dict] = []


def build_contenders(size: int, threads: int, folders: dict, pools: dict, args, device) -> list:
    import dali_loaders
    orig_files = image_files(folders["orig"])
    n = len(orig_files)

    def decode_in_pool(decoder: str, paths: list[str]):
        def run():
            chunk = max(1, len(paths) // (8 * threads))  # small chunks balance the pool
            jobs = [(decoder, paths[i:i + chunk], size) for i in range(0, len(paths), chunk)]
            t0 = time.perf_counter()
            done = sum(pools[threads].map(_decode_files, jobs, chunksize=1))
            return done, time.perf_counter() - t0, None, 0
        return run

    def ours(backend: str, folder: Path):
        def make():
            return dali_loaders.labeled_loader(folder, batch_size=args.batch_size, image_size=size,
                                               train=False, backend=backend, num_threads=threads,
                                               device=device)
        return lambda: run_loader(make, n, device)

    out = [Contender("decode PIL", "ceiling", "orig", decode_in_pool("pil", orig_files)),
           Contender("decode torchvision", "ceiling", "orig",
                     decode_in_pool("torchvision", orig_files))]
    if device.type == "cuda" and gpu_decode_works(orig_files, device):
        def run_gpu(paths=orig_files):
            t0 = time.perf_counter()
            done = gpu_decode(paths, args.batch_size, device)
            return done, time.perf_counter() - t0, None, 0
        out.append(Contender("decode torchvision nvJPEG (GPU, batched)", "ceiling", "orig", run_gpu))
    if draft_downscales(orig_files[0], size):
        out.append(Contender("decode PIL draft (DCT downscale)", "draft", "orig",
                             decode_in_pool("pil-draft", orig_files)))
    if dali_loaders.dali_available():
        out.append(Contender("DALI (ours)", "ours", "orig", ours("dali", folders["orig"])))
    out.append(Contender("torch (ours)", "ours", "orig", ours("torch", folders["orig"])))
    out.append(Contender("baseline ImageFolder+Resize", "baseline", "orig", lambda: run_loader(
        lambda: baseline_loader(folders["orig"], size, threads, args.batch_size, device), n, device)))
    if args.pre_resized:
        pre = folders[size]
        pre_files = image_files(pre)
        out.append(Contender("decode PIL, pre-resized", "ceiling", "pre",
                             decode_in_pool("pil", pre_files)))
        out.append(Contender("decode torchvision, pre-resized", "ceiling", "pre",
                             decode_in_pool("torchvision", pre_files)))
        if dali_loaders.dali_available():
            out.append(Contender("DALI (ours), pre-resized", "ours", "pre", ours("dali", pre)))
        out.append(Contender("torch (ours), pre-resized", "ours", "pre", ours("torch", pre)))
    return out


# ----------------------------------------------------------------------------------------------

def summarise(configs: dict) -> list[dict]:
    rows = []
    for (size, threads), contenders in configs.items():
        med = {}
        for c in contenders:
            rates = [r["images"] / r["seconds"] for r in c.runs]
            steady = [r["steady_per_s"] for r in c.runs if r["steady_per_s"] is not None]
            first = [r["first_batch_s"] for r in c.runs if r["first_batch_s"] is not None]
            med[c.name] = {
                "size": size, "threads": threads, "contender": c.name, "kind": c.kind,
                "files": c.files, "images_per_s": statistics.median(rates),
                "steady_images_per_s": statistics.median(steady) if steady else None,
                "first_batch_ms": 1000 * statistics.median(first) if first else None,
                "runs_images_per_s": rates,
            }
        ceiling = {f: max((m["images_per_s"] for m in med.values()
                           if m["kind"] == "ceiling" and m["files"] == f), default=None)
                   for f in ("orig", "pre")}
        baseline = next(m["images_per_s"] for m in med.values() if m["kind"] == "baseline")
        for m in med.values():
            m["ceiling_images_per_s"] = ceiling[m["files"]]
            m["vs_ceiling"] = m["images_per_s"] / ceiling[m["files"]]
            m["vs_baseline"] = m["images_per_s"] / baseline
            m["is_ceiling"] = m["kind"] == "ceiling" and m["images_per_s"] == ceiling[m["files"]]
            m["goal_met"] = (m["vs_ceiling"] >= GOAL_CEILING and m["vs_baseline"] >= GOAL_BASELINE
                             if m["kind"] == "ours" else None)
            rows.append(m)
    return rows


def markdown_table(rows: list[dict]) -> str:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)
    lines = ["| size | T | contender | img/s (epoch) | img/s (steady) | 1st batch ms | vs ceiling "
             "| vs baseline | goal |",
             "|---:|---:|---|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        name = r["contender"] + (" **= ceiling**" if r["is_ceiling"] else "")
        goal = "" if r["goal_met"] is None else ("yes" if r["goal_met"] else "no")
        lines.append(f"| {r['size']} | {r['threads']} | {name} | {r['images_per_s']:.0f} | "
                     f"{num(r['steady_images_per_s'], '.0f')} | {num(r['first_batch_ms'], '.0f')} | "
                     f"{r['vs_ceiling']:.2f} | {r['vs_baseline']:.2f} | {goal} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.n_images, args.repeats, args.warmup = QUICK["n_images"], QUICK["repeats"], QUICK["warmup"]
    sys.path.insert(0, str(ROOT))  # dali_loaders, prepare_data
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("loader_throughput.py: error: --device cuda but no CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if not Path(args.src).exists():
        print(f"loader_throughput.py: error: --src {args.src} not found", file=sys.stderr)
        return 1
    info = machine_info(device)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="loader-bench-") if own_workdir else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # no fork of a process that runs DALI threads
    pools = {}
    try:
        t0 = time.perf_counter()
        folders = prepare_folders(args, workdir)
        n = len(image_files(folders["orig"]))
        print(f"{n} images of {args.src} in {folders['orig']} (+ pre-resized copies: "
              f"{args.pre_resized}), ready in {time.perf_counter() - t0:.1f} s", flush=True)
        gil = {d: releases_gil(d, workdir) for d in CPU_DECODERS}
        for threads in sorted(set(args.threads)):
            pools[threads] = ctx.Pool(threads, initializer=_pool_init)
            pools[threads].map(_noop, range(threads))
        configs = {(s, t): build_contenders(s, t, folders, pools, args, device)
                   for s in args.sizes for t in args.threads}
        total_rounds = args.warmup + args.repeats
        for rnd in range(total_rounds):
            t_round = time.perf_counter()
            for (size, threads), contenders in configs.items():
                k = rnd % len(contenders)
                for c in contenders[k:] + contenders[:k]:
                    torch.set_num_threads(threads)
                    images, seconds, first_s, first_n = c.run()
                    if rnd >= args.warmup:
                        steady = ((images - first_n) / (seconds - first_s)
                                  if first_s is not None and images > first_n else None)
                        c.runs.append({"images": images, "seconds": seconds,
                                       "first_batch_s": first_s, "steady_per_s": steady})
            print(f"round {rnd + 1}/{total_rounds}{' (warm-up)' if rnd < args.warmup else ''}: "
                  f"{time.perf_counter() - t_round:.1f} s", flush=True)
    finally:
        for pool in pools.values():
            pool.terminate()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarise(configs)
    print()
    print(f"## Loader throughput: {n} JPEGs of {Path(args.src).name} "
          f"({'CUDA: DALI mixed decoding' if device.type == 'cuda' else 'CPU'})")
    print()
    print(header_line(info))
    print()
    print(markdown_table(rows))
    print()
    print(f"Medians of {args.repeats} rounds after {args.warmup} warm-up, contenders interleaved; "
          f"batch {args.batch_size}; T = DALI threads / DataLoader workers / decode processes.")
    print("img/s (epoch): a full epoch from a fresh loader, start-up included; (steady): after the "
          "first batch. vs ceiling: epoch img/s / fastest full-resolution decode on the same files "
          "with T processes (pre-resized rows: on the pre-resized files); vs baseline: / the "
          "ImageFolder baseline on the original files at the same size and T.")
    print("'steady' is approximate for DALI, which has prefetched a second batch when it hands over "
          "the first.")
    print("PIL draft decodes at 1/2, 1/4 or 1/8 scale in the DCT domain: a legitimate speed-up for "
          "small outputs, not counted as the ceiling.")
    print("GIL while decoding (share of a Python loop's speed kept beside a thread decoding a "
          "9 MP JPEG; ~0.01 = held, ~0.5-1 = released): " + ", ".join(
              f"{d} {v:.2f} ({'released' if v > GIL_RELEASED else 'held'})" for d, v in gil.items())
          + ". The ceiling uses processes either way.")
    print(f"Goal: DALI and torch (ours) >= {GOAL_CEILING:.0%} of the ceiling and "
          f">= {GOAL_BASELINE:g}x the baseline at equal T (column 'goal').")
    if info.get("load_average_at_start") and info["load_average_at_start"][0] > 0.5:
        print(f"Note: load average {info['load_average_at_start'][0]:.2f} at start: other jobs "
              "shared the CPU; treat the numbers as noisy.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "loader_throughput", "machine": info, "args": vars(args),
                       "images": n, "gil_release_share": gil,
                       "goal": {"vs_ceiling": GOAL_CEILING, "vs_baseline": GOAL_BASELINE},
                       "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

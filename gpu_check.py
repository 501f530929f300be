"""GPU self-check: run every CUDA path of the project once, on real JPEGs, and print one PASS, FAIL
or SKIP line per path. Run it first on a new GPU machine (about 1-3 minutes on one GPU).

    make gpu-check                           # same as: python gpu_check.py
    make gpu-check ARGS="--src train.zip"    # flags after ARGS= go to gpu_check.py
    python gpu_check.py --src train.zip      # images from your Kaggle train.zip
    python gpu_check.py --cpu                # the same checks on the CPU (no AMP, fewer steps): checks this script

Paths checked:
  dali-mixed-decode   DALI decodes and resizes JPEGs on the GPU (device='mixed'); pixels agree with
                      the CPU decode, labels arrive on the GPU, images come out channels_last;
                      SKIP without DALI (optional: the torch loader is used), with its install line
  supervised-amp      train_supervised.py: one epoch with --amp, then --resume for a second
  ssgan-amp           train_ssgan.py: the same (bfloat16 autocast, or float16 + GradScaler)
  torchrun-2gpu       torchrun --nproc_per_node=2 train_ssgan.py (NCCL), resumed in one process;
                      SKIP with fewer than 2 GPUs
  evaluate-gpu        evaluate.py scores both checkpoints on the GPU as on the CPU

Without a CUDA device it prints one SKIP line and exits 0. Exit code 1 if any path FAILs; the
output of a failed path is kept in a log file whose path is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import dali_loaders
import engine
import evaluate
import prepare_data
import train_ssgan
import train_supervised

ROOT = Path(__file__).resolve().parent
# DALI's wheel for CUDA 12 and newer drivers, as requirements.txt names it (Linux x86-64 only).
DALI_INSTALL = ".venv/bin/pip install nvidia-dali-cuda120 (Linux x86-64, NVIDIA driver for CUDA 12 or newer)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=engine.HelpFormatter)
    p.add_argument("--src", default=None,
                   help="Kaggle-style train.zip or folder (cat.N.jpg / dog.N.jpg); without it, "
                        "synthetic JPEGs with Kaggle names")
    p.add_argument("--per-class", type=engine.int_at_least(20), default=200,
                   help="images per class taken from --src")
    p.add_argument("--image-size", type=engine.generator_image_size, default=64,
                   help="training size of the short runs")
    p.add_argument("--work", default=None,
                   help="folder for data, runs and logs (default: a temporary folder, removed "
                        "when every path passed)")
    p.add_argument("--cpu", action="store_true",
                   help="run the same checks on the CPU (DALI CPU decoding, float32, fewer and smaller "
                        "SSGAN steps): tests this script on a machine without a GPU")
    return p


# ----------------------------------------------------------------------------------------------
# Data: a few hundred real JPEGs, split by prepare_data.py

def take_images(src: Path, per_class: int, folder: Path) -> None:
    """Copy the first `per_class` cat.N.jpg and dog.N.jpg of a zip or folder into `folder`."""
    folder.mkdir(parents=True)
    counts: dict[str, int] = {}
    for member in prepare_data.list_source(str(src)):
        name = member.rsplit("/", 1)[-1]
        match = prepare_data.KAGGLE_NAME.match(name)
        if not match or counts.get(match.group(1), 0) >= per_class:
            continue
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        (folder / name).write_bytes(prepare_data.read_member(str(src), member))
    if len(counts) < 2:
        raise RuntimeError(f"{src} holds fewer than 2 classes of Kaggle-named images")


def prepare(args, work: Path) -> tuple[Path, str]:
    n = 2 * args.per_class
    # 10 % labeled, 25 % val, 25 % test (even counts, class-balanced), the rest unlabeled.
    sizes = [str(2 * max(2, round(n * f / 2))) for f in (0.10, 0.25, 0.25)]
    flags = ["--out", str(work / "data"), "--n-labeled", sizes[0], "--n-val", sizes[1],
             "--n-test", sizes[2], "--force"]
    if args.src is not None:
        take_images(Path(args.src), args.per_class, work / "src")
        flags += ["--src", str(work / "src")]
        what = f"{n} images of {args.src}"
    else:
        flags += ["--synthetic", str(args.per_class)]
        what = f"{n} synthetic images"
    if prepare_data.main(flags) != 0:
        raise RuntimeError("prepare_data.py failed")
    return work / "data", what


# ----------------------------------------------------------------------------------------------
# The checks: each returns a short detail string or raises

def check_decode(data: Path, device: torch.device, size: int) -> str:
    kw = dict(batch_size=64, image_size=size, train=False, num_threads=4)
    dali = dali_loaders.labeled_loader(data / "val", backend="dali", device=device, **kw)
    torch_ = dali_loaders.labeled_loader(data / "val", backend="torch", device="cpu", **kw)
    diffs, count = [], 0
    for (x_dali, y_dali), (x_torch, y_torch) in zip(dali, torch_, strict=True):
        if x_dali.device != device or y_dali.device != device:
            raise AssertionError(f"images on {x_dali.device}, labels on {y_dali.device}, not {device}")
        if not x_dali.is_contiguous(memory_format=torch.channels_last):
            raise AssertionError("DALI images are not channels_last")
        if not torch.equal(y_dali.cpu(), y_torch):
            raise AssertionError("labels differ from the CPU loader's")
        diffs.append((x_dali.float().cpu() - x_torch).abs().mean().item() * x_torch.shape[0])
        count += x_torch.shape[0]
    mean_diff = sum(diffs) / count
    # Decoders (nvJPEG vs libjpeg) and resize filters differ a little, never by much.
    if mean_diff > 0.05:
        raise AssertionError(f"mean |DALI - CPU| = {mean_diff:.4f} on the [-1, 1] scale (> 0.05)")
    return f"{count} images, mean |DALI - CPU decode| {mean_diff:.4f}"


def train_and_resume(trainer, data: Path, out: Path, common: list[str]) -> str:
    argv = ["--data", str(data), "--out", str(out), *common]
    if trainer.main([*argv, "--epochs", "1"]) != 0:
        raise RuntimeError("epoch 1 failed")
    if trainer.main([*argv, "--epochs", "2", "--resume"]) != 0:
        raise RuntimeError("--resume failed")
    state = engine.load_checkpoint(out / "last.pt")
    if state["epoch"] != 2:
        raise AssertionError(f"last.pt is at epoch {state['epoch']} after the resume, not 2")
    return f"2 epochs (1 + resume), val acc {100 * state['val']['accuracy']:.1f} %"


def check_torchrun(data: Path, out: Path, common: list[str]) -> str:
    argv = ["--data", str(data), "--out", str(out), *common]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_ssgan.py"), *argv, "--epochs", "1"]
    log = out.with_name(out.name + "_processes.log")
    with open(log, "w") as f:  # a hung NCCL collective would otherwise wait for its own timeout
        result = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun exited {result.returncode} (its output: {log})")
    # Saved by 2 processes, resumed by 1: the checkpoint must not depend on the GPU count.
    if train_ssgan.main([*argv, "--epochs", "2", "--resume"]) != 0:
        raise RuntimeError("resuming the 2-process run in one process failed")
    return "2 processes, then resumed in 1"


def check_evaluate(runs: list[Path], data: Path, device: torch.device, work: Path) -> str:
    accuracies = {}
    for name, flags in ((device.type, ["--device", device.type]),
                        ("cpu-reference", ["--device", "cpu", "--loader", "torch"])):
        out = work / f"evaluate_{name}.json"
        argv = [*(str(r / "best.pt") for r in runs), "--data", str(data / "test"), "--json", str(out), *flags]
        if evaluate.main(argv) != 0:
            raise RuntimeError(f"evaluate.py {' '.join(flags)} failed")
        results = json.loads(out.read_text())
        accuracies[name] = [m["accuracy"] for m in results["models"]]
        count = results["count"]
    # Same weights, another decoder, TF32 kernels: barely trained models have many borderline
    # images, so only a gross disagreement (a broken GPU path) fails.
    for a, b in zip(*accuracies.values()):
        if abs(a - b) > 0.10:
            raise AssertionError(f"accuracy on {device.type} {accuracies[device.type]} vs CPU "
                                 f"{accuracies['cpu-reference']} over {count} images")
    return ", ".join(f"{100 * a:.1f} %" for a in accuracies[device.type]) + f" on {count} test images"


# ----------------------------------------------------------------------------------------------

class Report:
    def __init__(self, work: Path):
        self.work, self.counts = work, {"PASS": 0, "FAIL": 0, "SKIP": 0}

    def run(self, name: str, fn, *fn_args):
        """Run one check with its output in a log file; print its PASS/FAIL line."""
        log_path = self.work / f"{name}.log"
        start = time.time()
        with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                detail = fn(*fn_args)
                ok = True
            except (Exception, SystemExit) as exc:
                traceback.print_exc()
                detail, ok = f"{type(exc).__name__}: {exc} (log: {log_path})", False
        self.line("PASS" if ok else "FAIL", name, f"{detail} [{time.time() - start:.0f} s]")

    def line(self, status: str, name: str, detail: str) -> None:
        self.counts[status] += 1
        print(f"{status} {name:18s} {detail}", flush=True)


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.src is not None and not Path(args.src).exists():
        parser.error(f"--src {args.src} not found: pass Kaggle's train.zip (or a folder of cat.N.jpg / "
                     "dog.N.jpg), or leave --src out for synthetic images")
    if not args.cpu and not torch.cuda.is_available():
        print(f"gpu-check: SKIP: no CUDA device visible to torch {torch.__version__} "
              f"(built for CUDA {torch.version.cuda}); nothing to check on this machine")
        return 0
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        dali = "not installed"
        if dali_loaders.dali_available():
            import nvidia.dali
            dali = nvidia.dali.__version__
        print(f"gpu-check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch "
              f"{torch.__version__} (CUDA {torch.version.cuda}), DALI {dali}; work folder {work}")
    report = Report(work)
    with open(work / "prepare.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        data, what = prepare(args, work)
    print(f"gpu-check: data: {what}", flush=True)

    size = str(args.image_size)
    common = ["--image-size", size, "--device", device.type, "--workers", str(min(4, os.cpu_count() or 1))]
    if device.type == "cuda":
        common.append("--amp")
    tag = "amp" if device.type == "cuda" else "cpu"
    decode = "dali-mixed-decode" if device.type == "cuda" else "dali-cpu-decode"
    if dali_loaders.dali_available():
        report.run(decode, check_decode, data, device, args.image_size)
    else:  # optional: without it every run uses the torch loader
        report.line("SKIP", decode, f"NVIDIA DALI is not installed; training and evaluation use the torch "
                                    f"loader. To check GPU decoding: {DALI_INSTALL}")
    runs = [work / "supervised", work / "ssgan"]
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
    report.run(f"supervised-{tag}", train_and_resume, train_supervised, data, runs[0], common)
    # --cpu checks this script's paths, not the kernels: half the batch, a third of the steps or less
    batch, steps = (32, 10) if device.type == "cuda" else (16, 3)
    report.run(f"ssgan-{tag}", train_and_resume, train_ssgan, data, runs[1],
               [*common, "--batch-size", str(batch), "--steps-per-epoch", str(steps)])
    gpus = torch.cuda.device_count() if device.type == "cuda" else 2  # CPU: 2 gloo processes
    if gpus >= 2:
        shutil.rmtree(work / "ssgan_torchrun", ignore_errors=True)
        report.run("torchrun-2gpu" if device.type == "cuda" else "torchrun-2cpu", check_torchrun,
                   data, work / "ssgan_torchrun",
                   [*common, "--batch-size", str(batch // 2), "--steps-per-epoch", str(min(steps, 4))])
    else:
        report.line("SKIP", "torchrun-2gpu", f"{gpus} GPU visible, needs 2")
    if all((run / "best.pt").exists() for run in runs):
        report.run(f"evaluate-{device.type}", check_evaluate, runs, data, device, work)
    else:
        report.line("FAIL", f"evaluate-{device.type}", "no checkpoints to score (training failed)")

    c = report.counts
    print(f"gpu-check: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped")
    if c["FAIL"] == 0 and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if c["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Levers of the CPU recipe, screened on validation: each adds one thing to the SSGAN recipe of
bench/accuracy.py (SSGAN_ARGS), trained on one label seed at equal steps; test is never read.

    # BENCHMARKS.md "Levers": every lever on label seed 0, 3,000 steps, two runs at a time of one thread
    python bench/levers.py --data-src train.zip --unlabeled-src test1.zip
    # the levers kept, on the other label seeds
    python bench/levers.py --data-src train.zip --unlabeled-src test1.zip --levers recipe ema --seeds 1 2

Per finished run, <results>/seed<S>_<lever>_<steps>.json: its flags, validation curve, best and last
val accuracy. A run whose JSON is there with the same flags, data and code (bench/accuracy.py's
run_identity) is not trained again (the run folders under --work need not survive); an interrupted run resumes; a longer run of a lever with a constant
learning rate continues a shorter one's folder. levers.md is BENCHMARKS.md's table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path

import accuracy
from bench_machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
EMA = "--weight-average 0.999"
# name -> (what it changes, flags added to accuracy.SSGAN_ARGS)
LEVERS = {
    "recipe": ("the CPU recipe as it is", ""),
    "ema": ("classifier weights averaged (start-corrected EMA, 0.999) for val, test and best.pt", EMA),
    "ema-augment-fakes": ("ema + generated images flipped and shifted like the real ones, in both "
                          "steps (DiffAugment)", f"{EMA} --augment-fakes"),
    "ema-entropy": ("ema + entropy of the unlabeled predictions, weight 0.1 (Bad GAN)",
                    f"{EMA} --entropy-weight 0.1"),
    "ema-decay": ("ema + learning rates decayed linearly to 0 over the last third",
                  f"{EMA} --lr-decay-start 0.67"),
    "ema-g32": ("ema + generator width 32 instead of 16", f"{EMA} --g-width 32"),
    "ema-dropout": ("ema + Salimans et al.'s discriminator dropout: 0.2 on the input, 0.5 (not 0.3) "
                    "after each pooling stage", f"{EMA} --input-dropout 0.2 --dropout 0.5"),
}


def get_args_parser():
    p = argparse.ArgumentParser(prog="levers.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-src", required=True, metavar="PATH", help="Kaggle's train.zip or a folder")
    p.add_argument("--unlabeled-src", metavar="PATH", help="optional: Kaggle's test1.zip or a folder")
    p.add_argument("--levers", nargs="+", choices=tuple(LEVERS), default=list(LEVERS), help="levers to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="label seeds")
    p.add_argument("--steps", type=int, default=3000, help="training steps per run (a multiple of 100)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--work", default=str(ROOT / "runs" / "levers"), help="prepared data, run folders, logs")
    p.add_argument("--results", default=str(ROOT / "runs" / "levers" / "results"),
                   help="per-run JSON, levers.md (bench/results/levers: the committed ones)")
    return p


def run_flags(lever: str, steps: int) -> str:
    """train_ssgan.py flags of one lever run, data and output folders aside."""
    return " ".join(filter(None, [accuracy.SSGAN_ARGS, LEVERS[lever][1], f"--epochs {steps // 100}"]))


def run_summary(lever: str, seed: int, flags: str, out: Path) -> dict:
    """What a finished run's metrics.csv says: its validation curve and the numbers of the table."""
    import engine
    metrics = engine.read_metrics(out / "metrics.csv")
    steps = list(accumulate(int(m["steps"]) for m in metrics))
    val = [float(m["val_acc"]) for m in metrics]
    best = max(range(len(val)), key=lambda i: (val[i], -i))  # the first best, as best.pt keeps it
    last_1000 = [v for s, v in zip(steps, val) if s > steps[-1] - 1000]
    summary = {"lever": lever, "seed": seed, "flags": flags, "steps": steps[-1],
               "val_curve": [[s, v] for s, v in zip(steps, val)], "best_val_acc": val[best], "best_step": steps[best],
               "last_val_acc": val[-1], "mean_val_last_1000": statistics.mean(last_1000),
               "train_minutes": sum(float(m["seconds"]) for m in metrics) / 60}
    if metrics[0].get("val_acc_trained"):  # a weight average was validated: the trained weights too
        trained = [float(m["val_acc_trained"]) for m in metrics]
        summary.update(val_curve_trained=[[s, v] for s, v in zip(steps, trained)], best_val_acc_trained=max(trained),
                       last_val_acc_trained=trained[-1])
    return summary


def train_run(lever: str, seed: int, steps: int, data: Path, work: Path, results: Path, threads: int) -> dict:
    """Trains (or resumes) one lever run unless its JSON holds it with the same flags; returns the JSON."""
    import engine
    flags = run_flags(lever, steps)
    done = results / f"seed{seed}_{lever}_{steps}.json"
    identity = accuracy.run_identity("train_ssgan", data)  # the same flags on other data or code: another run
    if done.exists():
        kept = json.loads(done.read_text())
        if kept["flags"] == flags and all(kept.get(k) == v for k, v in identity.items()):
            print(f"[seed {seed}] {lever}: reused from {done} (same flags, data and code)", flush=True)
            return kept
        print(f"[seed {seed}] {lever}: not reusing {done}: other flags, data or code", flush=True)
    out = work / f"seed{seed}" / f"{lever}_{steps}"
    argv = [sys.executable, str(ROOT / "train_ssgan.py"), "--data", str(data), "--out", str(out),
            "--image-size", "32", "--device", "cpu", "--seed", str(seed), *shlex.split(flags)]
    steps_of = lambda run: int(run.name.rsplit("_", 1)[-1])  # noqa: E731
    shorter = sorted((p.parent for p in (work / f"seed{seed}").glob(f"{lever}_*/last.pt")
                      if steps_of(p.parent) < steps), key=steps_of)
    if not out.exists() and shorter and "--lr-decay-start" not in flags:
        # A longer run of a constant learning rate continues the longest shorter one (a resumed run
        # equals an uninterrupted one); with a decay the schedule depends on the steps, so it starts over.
        print(f"[seed {seed}] {lever}: continuing {shorter[-1].name} to {steps:,} steps", flush=True)
        shutil.copytree(shorter[-1], out)
    finished = (out / "last.pt").exists() and engine.load_checkpoint(out / "last.pt")["epoch"] >= steps // 100
    if not finished:
        resume = ["--resume"] if (out / "last.pt").exists() else []
        print(f"[seed {seed}] {lever}: training, log {out}.log", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{out}.log", "a") as log:
            code = subprocess.run(argv + resume, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
        if code:
            raise SystemExit(f"[seed {seed}] {lever}: train_ssgan.py failed (exit {code}), see {out}.log")
    import torch
    summary = {**run_summary(lever, seed, flags, out), "machine": machine_info(torch.device("cpu")),
               "threads": threads, **identity}
    done.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[seed {seed}] {lever}: best val {100 * summary['best_val_acc']:.1f} % at {summary['best_step']:,} "
          f"steps, last {100 * summary['last_val_acc']:.1f} %", flush=True)
    return summary


def markdown(runs: list[dict]) -> str:
    """One row per run: what the lever changes, its flags beyond the recipe, and its val numbers."""
    from evaluate import markdown_table
    rows = [["seed", "lever", "what it adds", "steps", "val at 1,000 / 2,000 / last", "best val (step)",
             "mean val, last 1,000 steps", "trained weights: best / last val"]]
    for r in runs:
        at = dict((s, v) for s, v in r["val_curve"])
        points = " / ".join(f"{100 * at[s]:.1f}" if s in at else "–" for s in (1000, 2000)) + \
            f" / {100 * r['last_val_acc']:.1f} %"
        extra = LEVERS[r["lever"]][1]
        rows.append([str(r["seed"]), f"`{r['lever']}`", LEVERS[r["lever"]][0] + (f" (`{extra}`)" if extra else ""),
                     f"{r['steps']:,}", points, f"{100 * r['best_val_acc']:.1f} % ({r['best_step']:,})",
                     f"{100 * r['mean_val_last_1000']:.1f} %",
                     f"{100 * r['best_val_acc_trained']:.1f} / {100 * r['last_val_acc_trained']:.1f} %"
                     if "best_val_acc_trained" in r else "–"])
    return markdown_table(rows) + "\n"


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.steps < 100 or args.steps % 100:
        print(f"levers.py: error: --steps {args.steps}: a multiple of 100 is needed (one validation per "
              "100 steps)", file=sys.stderr)
        return 2
    for flag, path in (("--data-src", args.data_src), ("--unlabeled-src", args.unlabeled_src)):
        if path and not Path(path).exists():
            print(f"levers.py: error: {flag} {path}: no such file or folder", file=sys.stderr)
            return 2
    work, results = Path(args.work), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = {seed: accuracy.prepare_seed(work, seed, args.data_src, args.unlabeled_src, [100, 1000, 1000], [])
            for seed in args.seeds}
    jobs = [(lever, seed) for seed in args.seeds for lever in args.levers]
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: train_run(job[0], job[1], args.steps, data[job[1]], work, results,
                                                   args.threads), jobs))
    every = sorted((json.loads(p.read_text()) for p in results.glob("seed*_*.json")),
                   key=lambda r: (r["steps"], r["seed"], list(LEVERS).index(r["lever"])))
    (results / "levers.md").write_text(markdown(every))
    print(markdown(runs) + f"\n{len(runs)} run(s) in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

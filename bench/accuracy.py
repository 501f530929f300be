"""The article's experiment on Kaggle Dogs vs Cats: 100 random labels, supervised baseline vs SSGAN.

    # CPU default: 64 px, label seeds 0 1 2, 30 minutes per run (about 3 hours on 2 cores)
    python bench/accuracy.py
    # smoke check: one seed, 32 px, 3 minutes per run
    python bench/accuracy.py --quick
    # GPU: the article's 224 px and epochs (200 supervised, 100 SSGAN), AMP
    python bench/accuracy.py --device cuda --image-size 224 --minutes 0 \\
        --supervised-args "--epochs 200 --amp" --ssgan-args "--epochs 100 --amp"

For each label seed: prepare_data.py draws 100 labels with --label-seed (val and test stay the
same 1,000 + 1,000 images for every seed, drawn with --seed 0), then train_supervised.py and
train_ssgan.py train under the same wall-clock budget (--max-minutes), and evaluate.py scores
each best-by-val checkpoint once on test. Writes bench/results/accuracy.json and accuracy.md:
per-seed rows and mean ± std over seeds, with epochs, steps, wall time, image size and device.

A rerun reuses finished runs and resumes interrupted ones, so seeds can also train in parallel
processes (`--seeds 1 --results /tmp/s1`, `--seeds 2 --results /tmp/s2`), followed by one run over
all seeds that only evaluates and writes the tables.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from bench_machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("supervised", "ssgan")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"),
                   help="folder holding Kaggle's train.zip and test1.zip")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_accuracy"),
                   help="prepared data and runs go here (large: about 300 MB per seed)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"),
                   help="where accuracy.json and accuracy.md are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds")
    p.add_argument("--image-size", type=int, default=64, help="training image size")
    p.add_argument("--minutes", type=float, default=30,
                   help="wall-clock budget of each training run (0: no budget)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--supervised-args", default="--epochs 200",
                   help="extra flags for train_supervised.py (the article's SGD baseline by default)")
    p.add_argument("--ssgan-args", default="--epochs 100 --g-loss feature-matching --lr 2e-4 --steps-per-epoch 50",
                   help="extra flags for train_ssgan.py")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 32 px, 3 minutes per run: checks the pipeline, not the method")
    return p


def run_finished(out: Path) -> bool:
    """The run in `out` ended: its budget ran out or it trained all its epochs."""
    import engine
    if not (out / "last.pt").exists():
        return False
    state = engine.load_checkpoint(out / "last.pt")
    return bool(state["stopped_early"]) or state["epoch"] >= state["args"]["epochs"]


def run_seed(args, seed: int) -> list[dict]:
    import engine
    import evaluate
    import prepare_data
    import train_ssgan
    import train_supervised

    work = Path(args.work)
    data = work / f"data_seed{seed}"
    if not (data / "summary.json").exists():
        code = prepare_data.main(["--src", str(Path(args.shared) / "train.zip"),
                                  "--unlabeled-src", str(Path(args.shared) / "test1.zip"),
                                  "--out", str(data), "--seed", "0", "--label-seed", str(seed),
                                  "--force"])
        if code != 0:
            raise SystemExit(f"prepare_data.py failed for seed {seed}")
    rows = []
    for model, trainer, extra in (("supervised", train_supervised, args.supervised_args),
                                  ("ssgan", train_ssgan, args.ssgan_args)):
        out = work / f"seed{seed}" / model
        argv = ["--data", str(data), "--out", str(out), "--image-size", str(args.image_size),
                "--device", args.device, "--seed", str(seed), *shlex.split(extra)]
        if args.minutes > 0:
            argv += ["--max-minutes", str(args.minutes)]
        if run_finished(out):  # a rerun reuses finished runs (e.g. seeds run in parallel)
            print(f"[seed {seed}] {model}: reusing the finished run in {out}", flush=True)
        else:
            if (out / "last.pt").exists():
                argv.append("--resume")  # an interrupted benchmark continues where it stopped
            print(f"[seed {seed}] {model}: {trainer.__name__}.py {' '.join(argv)}", flush=True)
            if trainer.main(argv) != 0:
                raise SystemExit(f"{model} training failed for seed {seed}")
        metrics = engine.read_metrics(out / "metrics.csv")
        rows.append({"seed": seed, "model": model, "out": str(out),
                     "epochs": len(metrics), "steps": sum(int(r["steps"]) for r in metrics),
                     "train_minutes": sum(float(r["seconds"]) for r in metrics) / 60})
    scores = work / f"seed{seed}" / "test.json"
    code = evaluate.main([r["out"] + "/best.pt" for r in rows]
                         + ["--data", str(data / "test"), "--json", str(scores), "--device", args.device])
    if code != 0:
        raise SystemExit(f"evaluate.py failed for seed {seed}")
    scored = json.loads(scores.read_text())["models"]
    for row, score in zip(rows, scored):
        row.update(test_acc=score["accuracy"], test_ci95=score["ci95"], best_val_acc=score["best_val_acc"],
                   best_epoch=score["epoch"])
    return rows


def summarize(rows: list[dict]) -> dict:
    out = {}
    for model in MODELS:
        accs = [r["test_acc"] for r in rows if r["model"] == model]
        out[model] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                      "n": len(accs)}
    gains = [s["test_acc"] - b["test_acc"] for s in rows if s["model"] == "ssgan"
             for b in rows if b["model"] == "supervised" and b["seed"] == s["seed"]]
    out["gain"] = {"mean": statistics.mean(gains), "std": statistics.stdev(gains) if len(gains) > 1 else 0.0}
    return out


def markdown(report: dict) -> str:
    s, cfg, m = report["summary"], report["config"], report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}; {m['date']}.",
        f"Config: {cfg['image_size']} px, {cfg['minutes'] or 'no'} minute budget per run, device {cfg['device']}; "
        f"supervised `{cfg['supervised_args']}`; SSGAN `{cfg['ssgan_args']}`.",
        "",
        "| model | test accuracy (mean ± std over seeds) |",
        "|---|---|",
    ]
    for model in MODELS:
        lines.append(f"| {model} | {100 * s[model]['mean']:.1f} ± {100 * s[model]['std']:.1f} % (n={s[model]['n']}) |")
    lines.append(f"| gain (SSGAN − supervised, paired by seed) | {100 * s['gain']['mean']:+.1f} ± "
                 f"{100 * s['gain']['std']:.1f} points |")
    lines += ["", "| seed | model | test acc (95 % CI) | best val acc | best epoch | epochs | steps | train min |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lo, hi = r["test_ci95"]
        lines.append(f"| {r['seed']} | {r['model']} | {100 * r['test_acc']:.1f} % ({100 * lo:.1f}–{100 * hi:.1f}) | "
                     f"{100 * r['best_val_acc']:.1f} % | {r['best_epoch']} | {r['epochs']} | {r['steps']} | "
                     f"{r['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.image_size, args.minutes = args.seeds[:1], 32, 3
    if not (Path(args.shared) / "train.zip").exists():
        print(f"accuracy.py: error: {args.shared}/train.zip not found; pass --shared with Kaggle's "
              "train.zip and test1.zip", file=sys.stderr)
        return 2
    rows = [row for seed in args.seeds for row in run_seed(args, seed)]
    import torch
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    report = {"machine": machine_info(device),
              "config": {"image_size": args.image_size, "minutes": args.minutes, "device": args.device,
                         "seeds": args.seeds, "supervised_args": args.supervised_args,
                         "ssgan_args": args.ssgan_args, "quick": args.quick},
              "runs": rows, "summary": summarize(rows)}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = "accuracy_quick" if args.quick else "accuracy"
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The article's experiment on Kaggle Dogs vs Cats, 100 random labels: the SSGAN against a
supervised baseline matched to it, the article's own baseline, and the SSGAN without its
generator (what the GAN adds).

    # CPU default: 32 px, label seeds 0 1 2, four models, 8 minutes per run (1 h 45 on one core)
    python bench/accuracy.py
    # the same on 2 cores in 55 minutes: two processes of one thread, then one that scores and writes
    python bench/accuracy.py --threads 1 --models supervised-article supervised --train-only &
    python bench/accuracy.py --threads 1 --models ssgan ssgan-no-gan --train-only; wait
    python bench/accuracy.py
    # smoke check: one seed, 2 minutes per run
    python bench/accuracy.py --quick
    # GPU: the article's 224 px and epochs (200 supervised, 100 SSGAN), AMP
    python bench/accuracy.py --device cuda --image-size 224 --minutes 0 --models supervised-article ssgan \\
        --article-args "--epochs 200 --amp" --ssgan-args "--epochs 100 --amp"

The models, each trained under the same wall-clock budget (--max-minutes) and scored once on test
from its best-by-val checkpoint:
  supervised-article  the article's baseline: ResNet18, SGD lr 1e-3, flips only (--article-args)
  supervised          the CPU recipe's network, augmentation, optimizer, validation interval and
                      budget, on the labels alone (--supervised-args)
  ssgan               the CPU recipe (--ssgan-args)
  ssgan-no-gan        the same with --no-gan: its consistency loss without generator or real/fake loss

For each label seed, prepare_data.py draws 100 labels with --label-seed (val and test stay the
same 1,000 + 1,000 images for every seed, drawn with --seed 0). Writes bench/results/accuracy.json,
accuracy.md (per-seed rows, mean ± std over seeds, gains paired by seed), accuracy_curves.png
(validation accuracy against wall-clock minutes) and accuracy_samples.png (the SSGAN generator's
grid at its best epoch, seed 0). A rerun reuses finished runs and resumes interrupted ones.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path

from bench_machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The CPU recipe (README): the small CNN, flips + 4 px shifts, Adam, validation every 100 steps.
CPU_COMMON = "--arch cnn --translate 4 --lr 1e-3 --steps-per-epoch 100"
SSGAN_ARGS = (f"{CPU_COMMON} --epochs 40 --batch-size 32 --labeled-batch-size 16 --g-width 16 "
              "--lr-g 3e-4 --g-loss feature-matching")
SUPERVISED_ARGS = f"{CPU_COMMON} --epochs 50 --optimizer adam"
# name -> (trainer module, the flag holding its arguments)
MODELS = {"supervised-article": ("train_supervised", "article_args"),
          "supervised": ("train_supervised", "supervised_args"),
          "ssgan": ("train_ssgan", "ssgan_args"),
          "ssgan-no-gan": ("train_ssgan", "ssgan_args")}
# (model, reference): gains reported paired by seed
GAINS = [("ssgan", "supervised"), ("ssgan", "supervised-article"), ("ssgan", "ssgan-no-gan"),
         ("ssgan-no-gan", "supervised")]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "dogs-vs-cats"),
                   help="folder holding Kaggle's train.zip and test1.zip")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_accuracy"),
                   help="prepared data and runs go here (large: about 300 MB per seed)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"),
                   help="where accuracy.json, accuracy.md and the PNGs are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds")
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS),
                   help="which models to train (and score)")
    p.add_argument("--image-size", type=int, default=32, help="training image size")
    p.add_argument("--minutes", type=float, default=0,
                   help="wall-clock budget of each training run (0: no budget)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (default: torch's choice); 1 when several "
                        "processes share the cores")
    p.add_argument("--article-args", default="--epochs 200",
                   help="flags of train_supervised.py for the article's baseline (SGD lr 1e-3)")
    p.add_argument("--supervised-args", default=SUPERVISED_ARGS,
                   help="flags of train_supervised.py for the matched baseline")
    p.add_argument("--ssgan-args", default=SSGAN_ARGS,
                   help="flags of train_ssgan.py (ssgan-no-gan adds --no-gan)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or reuse) the runs, score nothing, write no tables: for processes "
                        "training side by side; one later run without it scores them all")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 2 minutes per run: checks the pipeline, not the method")
    return p


def run_finished(out: Path) -> bool:
    """The run in `out` ended: its budget ran out or it trained all its epochs."""
    import engine
    if not (out / "last.pt").exists():
        return False
    state = engine.load_checkpoint(out / "last.pt")
    return bool(state["stopped_early"]) or state["epoch"] >= state["args"]["epochs"]


def run_seed(args, seed: int) -> list[dict]:
    import importlib

    import engine
    import evaluate
    import prepare_data

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
    for model in args.models:
        module, flag = MODELS[model]
        trainer = importlib.import_module(module)
        out = work / f"seed{seed}" / model
        flags = shlex.split(getattr(args, flag)) + (["--no-gan"] if model == "ssgan-no-gan" else [])
        argv = ["--data", str(data), "--out", str(out), "--image-size", str(args.image_size),
                "--device", args.device, "--seed", str(seed), *flags]
        if args.minutes > 0:
            argv += ["--max-minutes", str(args.minutes)]
        if run_finished(out):  # a rerun reuses finished runs (e.g. trained by parallel processes)
            print(f"[seed {seed}] {model}: reusing the finished run in {out}", flush=True)
        else:
            if (out / "last.pt").exists():
                argv.append("--resume")  # an interrupted benchmark continues where it stopped
            print(f"[seed {seed}] {model}: {module}.py {' '.join(argv)}", flush=True)
            if trainer.main(argv) != 0:
                raise SystemExit(f"{model} training failed for seed {seed}")
        metrics = engine.read_metrics(out / "metrics.csv")
        rows.append({"seed": seed, "model": model, "out": str(out), "args": " ".join(flags),
                     "epochs": len(metrics), "steps": sum(int(r["steps"]) for r in metrics),
                     "train_minutes": sum(float(r["seconds"]) for r in metrics) / 60})
    if args.train_only:
        return rows
    scores = work / f"seed{seed}" / "test.json"
    # Test is read once per checkpoint, here; the checkpoints were chosen on val.
    code = evaluate.main([r["out"] + "/best.pt" for r in rows]
                         + ["--data", str(data / "test"), "--json", str(scores), "--device", args.device])
    if code != 0:
        raise SystemExit(f"evaluate.py failed for seed {seed}")
    scored = json.loads(scores.read_text())["models"]
    for row, score in zip(rows, scored):
        row.update(test_acc=score["accuracy"], test_ci95=score["ci95"], best_val_acc=score["best_val_acc"],
                   best_epoch=score["epoch"])
    return rows


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(rows: list[dict], models: list[str]) -> dict:
    out = {model: mean_std([r["test_acc"] for r in rows if r["model"] == model]) for model in models}
    acc = {(r["model"], r["seed"]): r["test_acc"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out["gains"] = {}
    for model, reference in GAINS:
        if model in models and reference in models:
            gains = [acc[model, s] - acc[reference, s] for s in seeds]
            out["gains"][f"{model} - {reference}"] = {**mean_std(gains), "per_seed": gains}
    return out


def markdown(report: dict) -> str:
    s, cfg, m = report["summary"], report["config"], report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}; {m['date']}.",
        f"Config: {cfg['image_size']} px, {cfg['minutes'] or 'no'} minute budget per run, device "
        f"{cfg['device']}, label seeds {cfg['seeds']}.",
        "",
        "| model | flags | test accuracy (mean ± std over seeds) |",
        "|---|---|---|",
    ]
    flags = {r["model"]: r["args"] for r in report["runs"]}
    for model in cfg["models"]:
        lines.append(f"| {model} | `{flags[model]}` | {100 * s[model]['mean']:.1f} ± "
                     f"{100 * s[model]['std']:.1f} % (n={s[model]['n']}) |")
    lines += ["", "| gain, paired by seed | mean ± std | per seed |", "|---|---|---|"]
    for name, g in s["gains"].items():
        per_seed = ", ".join(f"{100 * x:+.1f}" for x in g["per_seed"])
        lines.append(f"| {name} | {100 * g['mean']:+.1f} ± {100 * g['std']:.1f} points | {per_seed} |")
    lines += ["", "| seed | model | test acc (95 % CI) | best val acc | best epoch | epochs | steps | train min |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lo, hi = r["test_ci95"]
        lines.append(f"| {r['seed']} | {r['model']} | {100 * r['test_acc']:.1f} % ({100 * lo:.1f}–{100 * hi:.1f}) | "
                     f"{100 * r['best_val_acc']:.1f} % | {r['best_epoch']} | {r['epochs']} | {r['steps']} | "
                     f"{r['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], models: list[str], png: Path) -> None:
    """Validation accuracy against wall-clock minutes (training + validation), every seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import engine
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        metrics = engine.read_metrics(Path(r["out"]) / "metrics.csv")
        minutes, total = [], 0.0
        for m in metrics:
            total += float(m["seconds"]) / 60
            minutes.append(total)
        ax.plot(minutes, [100 * float(m["val_acc"]) for m in metrics], color=colours[r["model"]],
                alpha=0.8, lw=1, label=r["model"] if r["seed"] == rows[0]["seed"] else None)
    ax.axhline(50, color="grey", lw=0.5)
    ax.set(xlabel="wall-clock minutes", ylabel="val accuracy (%)",
           title=f"validation accuracy, one line per label seed ({len({r['seed'] for r in rows})} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.minutes = args.seeds[:1], 2
    if not (Path(args.shared) / "train.zip").exists():
        print(f"accuracy.py: error: {args.shared}/train.zip not found; pass --shared with Kaggle's "
              "train.zip and test1.zip", file=sys.stderr)
        return 2
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for seed in args.seeds for row in run_seed(args, seed)]
    if args.train_only:
        return 0
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    report = {"machine": machine_info(device),
              "config": {"image_size": args.image_size, "minutes": args.minutes, "device": args.device,
                         "seeds": args.seeds, "models": args.models, "quick": args.quick},
              "runs": rows, "summary": summarize(rows, args.models)}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = "accuracy_quick" if args.quick else "accuracy"
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown(report))
    plot_curves(rows, args.models, results / f"{stem}_curves.png")
    ssgan = [r for r in rows if r["model"] == "ssgan"]
    if ssgan:  # the generator's grid at the checkpoint that was scored
        grid = Path(ssgan[0]["out"]) / "samples" / f"epoch_{ssgan[0]['best_epoch']:03d}.png"
        if grid.exists():
            shutil.copyfile(grid, results / f"{stem}_samples.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

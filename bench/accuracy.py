"""The article's experiment on Kaggle Dogs vs Cats, 100 random labels: the SSGAN against a
supervised baseline matched to it, on three label seeds.

    # BENCHMARKS.md "Accuracy: ... 24,000 steps with the kept levers": 32 px, seeds 0 1 2, the SSGAN
    # and its matched baseline 24,000 steps each, two runs at a time of one thread (about 140-160
    # and 65-85 min per run on 2 cores: about 5.5 hours, an interrupted benchmark resumes where it stopped)
    python bench/accuracy.py --data-src train.zip --unlabeled-src test1.zip
    # smoke check: one seed, 200 steps per run
    python bench/accuracy.py --data-src train.zip --quick
    # one GPU, every seed x model side by side, 12,000 steps per run: 6 minutes on an H200 with the
    # data preparation and scoring (BENCHMARKS.md "GPU"), on the data of bench/pack_data.py's first command
    python bench/accuracy.py --preset gpu --data-src packed/train.zip --unlabeled-src packed/test1.zip
    # the article's claim, 224 px, one seed, 8,000 SSGAN steps (bench/pack_data.py's second command;
    # about 16 SSGAN steps/s on an H200 with validation, 12.6 beside the gpu preset)
    python bench/accuracy.py --preset gpu-224 --data-src packed224/train.zip --unlabeled-src packed224/test1.zip
    # the article's notebook exactly, 3 seeds, its baseline beside it: run by bench/gpu_article.py
    # as GPU jobs of under 10 minutes each (bench/pack_data.py's article pack)
    python bench/gpu_article.py --data-src packed_article/train.zip --unlabeled-src packed_article/test1.zip
    # Salimans et al.'s MNIST table (100 labels), their networks, on a CPU (BENCHMARKS.md "MNIST"),
    # and its longer budget (72,000 SSGAN steps a run; a stopped call resumes where it was)
    python bench/accuracy.py --preset mnist --data-src mnist_png.zip
    python bench/accuracy.py --preset mnist-long --data-src mnist_png.zip

--data-src (Kaggle's train.zip or a folder of cat.N.jpg / dog.N.jpg) and --unlabeled-src (optional,
test1.zip or a folder) go to prepare_data.py's --src and --unlabeled-src. Per label seed: 100 labels,
the same 1,000 val + 1,000 test images; each model budgeted in steps and scored once on test from
its best-by-val checkpoint. Writes accuracy.json, accuracy.md (BENCHMARKS.md's four tables),
accuracy_curves.png and accuracy_samples.png to --results. Each scored run is kept as
<results>/accuracy[_PRESET]_runs/seed<S>_<model>.json (its row and validation curve, small enough to
commit). A rerun reuses a scored run, or a finished run folder, only when it is the same run: the
same training flags, the same prepared data (the SHA-256 of the split's manifest.csv, which lists
every source file's SHA-256) and the same training code (CODE_FILES, comments and docstrings aside),
all recorded in the run's JSON and folder; it says "reused from ..." when it does. Anything else
trains: --no-reuse retrains everything. A run folder left by other flags, data or code is refused
(delete it or give another --work); interrupted runs of the same run resume. Tables go to --results
(runs/bench_results by default; --results bench/results rewrites the committed ones).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path

from bench_machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The CPU recipe (README): the small CNN, flips + 4 px shifts, Adam, validation every 100 steps; the
# SSGAN with a generator of width 16, 32 labeled + 64 unlabeled + 64 generated images, feature
# matching, 3,000 steps (BENCHMARKS.md: the cheapest step that kept its accuracy per step); the
# baseline 5,000. bench/levers.py adds each lever to this SSGAN recipe.
CPU_COMMON = "--arch cnn --translate 4 --lr 1e-3 --steps-per-epoch 100"
SSGAN_ARGS = (f"{CPU_COMMON} --epochs 30 --batch-size 64 --labeled-batch-size 32 --g-width 16 "
              "--lr-g 3e-4 --g-loss feature-matching")
SUPERVISED_ARGS = f"{CPU_COMMON} --epochs 50 --optimizer adam"
# The benchmark trains that recipe with what the lever screen kept (BENCHMARKS.md "Levers"): the
# classifier's start-corrected weight average (0.999) for val, test and best.pt, the learning rates
# decayed linearly to 0 over the last third, and 24,000 steps: at 12,000 the SSGAN's val still rose
# 2.6-4.0 points over steps 6,000-10,000; at 24,000 its last sixth is flat. The baseline gets the
# same steps, average and decay.
KEPT_LEVERS = "--weight-average 0.999 --lr-decay-start 0.67"
LONG_SSGAN_ARGS = f"{SSGAN_ARGS.replace('--epochs 30', '--epochs 240')} {KEPT_LEVERS}"
LONG_SUPERVISED_ARGS = f"{SUPERVISED_ARGS.replace('--epochs 50', '--epochs 240')} {KEPT_LEVERS}"
ARTICLE_ARGS = "--epochs 200"
# On a GPU a step costs little: DCGAN's generator width, 100 labeled + 64 unlabeled, the CPU
# benchmark's kept levers, 12,000 steps.
GPU_SSGAN_ARGS = (f"{CPU_COMMON} --epochs 120 --batch-size 64 --labeled-batch-size 100 --lr-g 3e-4 "
                  f"--g-loss feature-matching --workers 1 {KEPT_LEVERS}")
GPU_SUPERVISED_ARGS = f"{CPU_COMMON} --epochs 120 --optimizer adam --workers 1 {KEPT_LEVERS}"
# The article's notebook at its own length (opetrova/SemiSupervisedPytorchGAN, SemiSupervisedGAN.ipynb),
# flag by flag. Cell 5, the SSGAN: 64 unlabeled + 64 generated images and all 100 labeled ones per step,
# each kind in its own classifier pass (unlabeled, generated, labeled), generated ones moving the
# BatchNorm running statistics (nothing frozen, train mode), one classifier update, then the generator
# through the updated classifier with the "fool" loss on the same generated batch; Adam 2e-3, betas
# (0.5, 0.999) for both, no schedule, decay or average; pixels in [0, 1] (DALI's / 255, (G(z) + 1) / 2);
# no augmentation; its generator's 28 -> 112 px step one stride-4 transposed convolution; an epoch one
# pass over ~35,000 unlabeled images (~550 steps), validated after each, 14 epochs (7,700 steps), the
# best-by-val weights tested. Cell 3, the baseline: the same ResNet18 on the 100 labels in one batch,
# SGD 1e-3 momentum 0.9 weight decay 1e-4 (train_supervised.py's defaults), 200 steps, each validated.
ARTICLE_SSGAN_ARGS = ("--batch-size 64 --labeled-batch-size 100 --lr 2e-3 --beta1 0.5 --g-loss article --no-flip "
                      "--unit-input --bn-passes separate --fake-bn-stats --g-stride4 --steps-per-epoch 550 --epochs 14")
ARTICLE_BASELINE_ARGS = f"{ARTICLE_ARGS} --no-flip --unit-input"
# MNIST (Salimans et al. 2016): their MLPs, 100 labeled + 100 unlabeled + 100 generated digits per
# step, Adam 3e-3, feature matching, validation every 600 steps (one pass over the training digits);
# the classifier's start-corrected weight average is validated, tested and saved.
MNIST_COMMON = "--arch mlp --no-flip --batch-size 100 --lr 3e-3 --weight-average 0.999 --steps-per-epoch 600"
MNIST_STEPS = "--epochs 48 --lr-decay-start 0.67"  # 28,800 steps, the last third decayed to 0
# The SSGAN's step in the form of Salimans et al.'s code (feature matching against a second unlabeled
# batch and new generated images, both through the updated classifier) on PyTorch's initialisation
# with every weight-norm and BatchNorm scale trained: their exact initialisation (--mlp-init data)
# and the one-pass-cheaper feature matching (--fm-target reused) let the generator run away after
# 5,400-7,800 steps on two of three seeds. Their Adam's floor under sqrt(v) (--adam-eps 1e-4) puts
# the generator's one bad epoch later: best val error 2.83 % on 3 seeds against 3.00 % without it, a
# small gain (per seed -0.6, +0.2, -0.1 points; on test 2.66 % against 3.00 %; BENCHMARKS.md "MNIST").
MNIST_SSGAN = "--g-loss feature-matching --fm-target fresh --mlp-init default --adam-eps 1e-4"
PRESETS = {
    "gpu": dict(device="cuda", jobs=9, threads=1, work=str(ROOT / "runs" / "bench_accuracy_gpu"),
                models=["supervised-article", "supervised", "ssgan"],
                ssgan_args=GPU_SSGAN_ARGS, supervised_args=GPU_SUPERVISED_ARGS,
                article_args=f"{ARTICLE_ARGS} --amp --workers 1"),
    # The article's setting (224 px, ResNet18, its optimizers), the SSGAN with feature matching and the
    # kept levers, one seed.
    "gpu-224": dict(device="cuda", jobs=2, threads=4, image_size=224, seeds=[0],
                    models=["supervised-article", "ssgan"], work=str(ROOT / "runs" / "bench_accuracy_224"),
                    article_args=f"{ARTICLE_ARGS} --amp",
                    ssgan_args=f"--amp --g-loss feature-matching --steps-per-epoch 200 --epochs 40 {KEPT_LEVERS}"),
    # The article's notebook, 3 seeds, at 224 px, one run at a time (bench/gpu_article.py runs it as
    # GPU jobs of under 10 minutes each, with --amp)
    "article": dict(device="cuda", jobs=1, image_size=224, models=["supervised-article", "ssgan"],
                    work=str(ROOT / "runs" / "bench_accuracy_article"), article_args=ARTICLE_BASELINE_ARGS,
                    ssgan_args=ARTICLE_SSGAN_ARGS),
    # The official 60,000 / 10,000 split of mnist_png.zip (train/<digit>/, test/<digit>/): 100 labels
    # and 1,000 val digits drawn from train/, test/ as given. One run at a time on both cores of a
    # 2-core CPU: a 28,800-step SSGAN run in 23-26 minutes on the faster of two AMD EPYC boxes measured
    # (about 20 steps/s with validation), about an hour on the slower one (8 steps/s without).
    "mnist": dict(image_size=28, jobs=1, threads=2, work=str(ROOT / "runs" / "bench_mnist"),
                  split=[100, 1000, 0], prepare_args="--test-folder test --grayscale",
                  ssgan_args=f"{MNIST_COMMON} {MNIST_STEPS} {MNIST_SSGAN} --workers 1",
                  # 3,000 steps: on the 100 labels alone the MLP's val curve is flat long before
                  supervised_args=f"{MNIST_COMMON} --epochs 5 --lr-decay-start 0.67 --optimizer adam --workers 1"),
}
# The longer budget: the same runs with 72,000 SSGAN steps (about 2.7 hours a run on the slower CPU),
# resumed where a stopped call left them. 3 seeds: 1.34 % test error, flat from about 30,000 steps on
# (the paper's code, ported: 1.00 % at 72,000 on its own labels, where this code's exact recipe gets
# 1.13 %; BENCHMARKS.md "MNIST, the longer budget").
PRESETS["mnist-long"] = dict(PRESETS["mnist"], work=str(ROOT / "runs" / "bench_mnist_long"),
                             ssgan_args=f"{MNIST_COMMON} --epochs 120 --lr-decay-start 0.67 {MNIST_SSGAN} --workers 1")
MNIST_PRESETS = ("mnist", "mnist-long")
# Training-script flags that do not change what is learnt: a run differing only in these is the same run
# (its data is compared by content instead, its device is recorded with the machine).
FREE_FLAGS = {"resume", "out", "data", "device", "workers"}
# The code a run's result depends on, besides its trainer: a change to any of these trains anew.
CODE_FILES = ("engine.py", "models.py", "losses.py", "dali_loaders.py", "prepare_data.py")
# name -> (trainer module, the flag holding its arguments)
MODELS = {"supervised-article": ("train_supervised", "article_args"),
          "supervised": ("train_supervised", "supervised_args"), "ssgan": ("train_ssgan", "ssgan_args")}
GAINS = [("ssgan", "supervised"), ("ssgan", "supervised-article")]  # (model, reference), paired by seed
# Test error (%) against training steps of faithful ports of Salimans et al.'s MNIST code (averaged
# weights, 100 labels): hiroharu-kato/improved_gan_chainer; the paper's 0.93 % after 180,000 steps.
MNIST_ANCHORS = {"improved_gan_chainer": [(600, 30.6), (3000, 18.7), (6000, 12.6), (12000, 5.6), (24000, 2.1),
                                          (60000, 1.11), (72000, 1.00), (180000, 0.82)],
                 "Salimans et al. 2016": [(180000, 0.93)]}


def get_args_parser():
    p = argparse.ArgumentParser(prog="accuracy.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-src", metavar="PATH", help="Kaggle's train.zip or a folder of cat.N.jpg / dog.N.jpg")
    p.add_argument("--unlabeled-src", metavar="PATH", help="optional: Kaggle's test1.zip or a folder")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_accuracy"), help="prepared data, runs, logs")
    p.add_argument("--results", default=str(ROOT / "runs" / "bench_results"),
                   help="tables, JSON and PNGs go here (bench/results: the committed ones)")
    p.add_argument("--no-reuse", action="store_true",
                   help="train every run anew: ignore scored runs in --results and delete the run folders "
                        "in --work (by default the same flags, data and code are reused)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds")
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["supervised", "ssgan"])
    p.add_argument("--split", type=int, nargs=3, default=[100, 1000, 1000], metavar=("L", "V", "T"),
                   help="labeled, val and test images drawn by prepare_data.py (T unused with a "
                        "--test-folder in --prepare-args)")
    p.add_argument("--prepare-args", default="", help="more prepare_data.py flags, e.g. --grayscale")
    p.add_argument("--image-size", type=int, default=32, help="training image size")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at a time, each in its own process")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per training process; unset: 1 with --jobs > 1, else torch's")
    p.add_argument("--article-args", default=ARTICLE_ARGS, help="train_supervised.py flags, supervised-article")
    p.add_argument("--supervised-args", default=LONG_SUPERVISED_ARGS,
                   help="train_supervised.py flags, supervised")
    p.add_argument("--ssgan-args", default=LONG_SSGAN_ARGS, help="train_ssgan.py flags, ssgan")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="gpu: every seed x model on one GPU; gpu-224: the article's 224 px, one seed; "
                        "article: the article's notebook exactly, 224 px, 7,700 SSGAN steps, its baseline "
                        "beside it, 3 seeds (bench/gpu_article.py); mnist: Salimans et al.'s MNIST "
                        "networks and recipe, 3 seeds on a CPU, 28,800 SSGAN steps; mnist-long: the same "
                        "with 72,000 (flags given explicitly still win)")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the runs, score nothing")
    p.add_argument("--quick", action="store_true", help="one seed, 200 steps per run")
    return p


def parse_args(argv=None):
    """Parse twice: a --preset's values become defaults, so flags given explicitly still win."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    if args.quick:  # its own work folder: its short runs must not pass for finished full ones
        args.seeds, args.work = args.seeds[:1], args.work + "_quick"
        for flag in ("article_args", "supervised_args", "ssgan_args"):  # last --epochs wins
            setattr(args, flag, getattr(args, flag) + " --epochs 2")
    if args.threads is None and args.jobs > 1:
        args.threads = 1
    return args


def code_version(module: str) -> str:
    """What trains, as 16 hex digits: SHA-256 over the syntax trees of the trainer `module` and of
    CODE_FILES, docstrings and help= texts dropped (comments and formatting never reach the tree)."""
    digest = hashlib.sha256()
    for name in (f"{module}.py", *CODE_FILES):
        tree = ast.parse((ROOT / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "help":
                node.value = ast.Constant(None)
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(f"{name}\n{ast.dump(tree)}\n".encode())
    return digest.hexdigest()[:16]


def data_version(data: Path) -> str:
    """The prepared split, as 16 hex digits: SHA-256 of manifest.csv's split, path, label and source
    file SHA-256 of every image (not where the sources lay) and of the image size and channels."""
    import csv
    with open(data / "manifest.csv", newline="") as f:
        rows = [(r["split"], r["path"], r["label"], r["sha256"]) for r in csv.DictReader(f)]
    summary = json.loads((data / "summary.json").read_text())
    digest = hashlib.sha256(json.dumps([rows, summary.get("image_size"), summary.get("grayscale")]).encode())
    return digest.hexdigest()[:16]


def source_fingerprint(paths: list[str]) -> list[str]:
    """SHA-256 of each source zip or file; for a folder, of its file names, sizes and modification
    times: a re-encoded or replaced copy at the same path prepares its data again."""
    prints = []
    for path in map(Path, paths):
        digest = hashlib.sha256()
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    digest.update(f"{f.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        else:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        prints.append(digest.hexdigest())
    return prints


def run_identity(module: str, data: Path) -> dict:
    """What makes two runs of the same flags the same run: their data and their code."""
    return {"data_version": data_version(data), "code_version": code_version(module)}


def run_finished(out: Path) -> bool:
    """The run in `out` ended: its budget ran out or it trained all its epochs."""
    import engine
    if not (out / "last.pt").exists():
        return False
    state = engine.load_checkpoint(out / "last.pt")
    return bool(state["stopped_early"]) or state["epoch"] >= state["args"]["epochs"]


def trainer_argv(data: Path, out: Path, image_size: int, device: str, seed: int, flags: list[str]) -> list[str]:
    """The training script's command line for one run of the benchmark."""
    return ["--data", str(data), "--out", str(out), "--image-size", str(image_size), "--device", device,
            "--seed", str(seed), *flags]


def check_run_folder(out: Path, module: str, argv: list[str], identity: dict) -> None:
    """A run folder left by a rerun with other flags (say another --epochs), other data or other code
    is neither reused nor resumed: its checkpoint would be scored, or trained on, as if it were this
    run. identity: run_identity() of this run, kept in the folder's run_identity.json."""
    import engine
    if not (out / "last.pt").exists():
        return
    saved = engine.load_checkpoint(out / "last.pt", mmap=True)["args"]
    differ = [f"--{k.replace('_', '-')} {saved[k]} (now {v})" for k, v in learnt_flags(module, argv).items()
              if k in saved and saved[k] != v]
    kept = json.loads((out / "run_identity.json").read_text()) if (out / "run_identity.json").exists() else {}
    differ += [f"{k} {kept.get(k, 'unrecorded')} (now {v})" for k, v in identity.items() if kept.get(k) != v]
    if differ:
        raise SystemExit(f"accuracy.py: error: {out} was trained as another run: {', '.join(differ)}; "
                         "give another --work, delete that folder, or pass --no-reuse to train the run again")


def prepare_seed(work: Path, seed: int, data_src: str, unlabeled_src: str | None, split,
                 prepare_args: list[str]) -> Path:
    """The seed's data folder, prepared once (labels drawn with --label-seed; val/test fixed)."""
    import prepare_data
    data = work / f"data_seed{seed}"
    extra = ["--unlabeled-src", unlabeled_src] if unlabeled_src else []
    extra += prepare_args + ([] if "--test-folder" in prepare_args else ["--n-test", str(split[2])])
    argv = ["--src", data_src, *extra, "--out", str(data), "--seed", "0", "--label-seed", str(seed),
            "--n-labeled", str(split[0]), "--n-val", str(split[1]), "--force"]
    source = {"argv": argv, "sources": source_fingerprint([data_src, *([unlabeled_src] if unlabeled_src else [])])}
    stamp = data / "bench_source.json"  # what the folder was prepared from
    if not (data / "summary.json").exists() or not stamp.exists() or json.loads(stamp.read_text()) != source:
        if prepare_data.main(argv) != 0:
            raise SystemExit(f"prepare_data.py failed for seed {seed}")
        stamp.write_text(json.dumps(source, indent=1) + "\n")
    return data


def learnt_flags(module: str, argv: list[str]) -> dict:
    """What the training script `module` makes of `argv`, less FREE_FLAGS: two command lines that
    parse alike (say one that gives --epochs twice, the last winning) train the same run."""
    import importlib
    parser = importlib.import_module(module).get_args_parser()
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k not in FREE_FLAGS}


def saved_run(runs_dir: Path, seed: int, model: str, flags: str, image_size: int, identity: dict) -> dict | None:
    """The scored run kept in runs_dir (its row of the tables, with its validation curve), if it is
    this run: trained with flags that parse as these do (the row then shows these), on the same data
    by the same code (identity: run_identity()); the run folder itself need not exist any more."""
    path = runs_dir / f"seed{seed}_{model}.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    module = MODELS[model][0]
    differ = [k for k, v in identity.items() if row.get(k) != v]
    if row["image_size"] != image_size or learnt_flags(module, shlex.split(row["args"])) != learnt_flags(
            module, shlex.split(flags)):
        differ.insert(0, "flags")
    if differ:
        print(f"[seed {seed}] {model}: not reusing {path}: other {', '.join(differ)}", flush=True)
        return None
    print(f"[seed {seed}] {model}: reused from {path} (same flags, data and code)", flush=True)
    return {**row, "args": flags}


def save_run(runs_dir: Path, row: dict, image_size: int, machine: dict, identity: dict) -> dict:
    """Keeps a scored run's row with its validation curve ([step, minutes, val accuracy] per
    validation), for an SSGAN each epoch's mean D(G(z)) and generator loss ([step, D(G(z)), loss_g]:
    a collapsed generator shows there) and the machine that trained it as
    <runs_dir>/seed<S>_<model>.json, small enough to commit: a table that reuses it later, on
    another machine, still names where it ran."""
    import engine
    metrics = engine.read_metrics(Path(row["out"]) / "metrics.csv")
    steps = list(accumulate(int(m["steps"]) for m in metrics))
    curve = zip(steps, accumulate(float(m["seconds"]) / 60 for m in metrics), (float(m["val_acc"]) for m in metrics))
    row = {**row, "image_size": image_size, **identity, "val_curve": [[s, round(t, 3), v] for s, t, v in curve],
           "machine": {k: machine[k] for k in ("cpu", "cores", "gpu", "torch", "date")}}
    if metrics and "d_fake" in metrics[0]:
        row["generator_curve"] = [[s, float(m["d_fake"]), float(m["loss_g"])] for s, m in zip(steps, metrics)]
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / f"seed{row['seed']}_{row['model']}.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def train_in_parallel(work: Path, pending: list[tuple[int, str]], jobs: int, threads: int, argv: list[str]) -> None:
    """Each (seed, model) run of `pending` not finished yet trains in a child process of this
    script, `jobs` at a time, longest first; their output goes to <work>/seed<S>/<model>.log."""
    def train(seed: int, model: str) -> str | None:
        log, t0 = work / f"seed{seed}" / f"{model}.log", time.time()
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[seed {seed}] {model}: training in a child process, log {log}", flush=True)
        with open(log, "a") as f:
            code = subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_argv, "--train-only",
                                   "--jobs", "1", "--threads", str(threads), "--seeds", str(seed),
                                   "--models", model], stdout=f, stderr=subprocess.STDOUT).returncode
        print(f"[seed {seed}] {model}: {f'FAILED (exit {code})' if code else 'done'} in "
              f"{(time.time() - t0) / 60:.1f} min", flush=True)
        return f"seed {seed} {model} (log {log})" if code else None

    child_argv = [a for a in argv if a != "--no-reuse"]  # the folders to retrain are already gone
    order = ("ssgan", "supervised", "supervised-article")
    pending = sorted((job for job in pending if not run_finished(work / f"seed{job[0]}" / job[1])),
                     key=lambda job: (order.index(job[1]), job[0]))
    with ThreadPoolExecutor(jobs) as pool:
        failed = [f for f in pool.map(lambda job: train(*job), pending) if f]
    if failed:
        raise SystemExit("training failed: " + "; ".join(failed))


def train_or_reuse(model: str, data: Path, out: Path, seed: int, flags: list[str], image_size: int,
                   device: str) -> dict:
    """Train (or resume) one run unless it finished; its row: flags, epochs, steps, minutes."""
    import importlib

    import engine
    module = MODELS[model][0]
    argv = trainer_argv(data, out, image_size, device, seed, flags)
    if run_finished(out):  # checked by check_run_folder: the same run (e.g. trained by parallel processes)
        print(f"[seed {seed}] {model}: reused from {out} (finished run folder)", flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_identity.json").write_text(json.dumps(run_identity(module, data)) + "\n")
        if (out / "last.pt").exists():
            argv.append("--resume")  # an interrupted benchmark continues where it stopped
        print(f"[seed {seed}] {model}: {module}.py {' '.join(argv)}", flush=True)
        if importlib.import_module(module).main(argv) != 0:
            raise SystemExit(f"{model} training failed for seed {seed}")
    metrics = engine.read_metrics(out / "metrics.csv")
    return {"seed": seed, "model": model, "out": str(out), "args": " ".join(flags),
            "epochs": len(metrics), "steps": sum(int(r["steps"]) for r in metrics),
            "train_minutes": sum(float(r["seconds"]) for r in metrics) / 60}


def score(rows: list[dict], data: Path, scores: Path, device: str) -> None:
    """Test is read once per checkpoint, here; the checkpoints were chosen on val."""
    import engine
    import evaluate
    code = evaluate.main([r["out"] + "/best.pt" for r in rows]
                         + ["--data", str(data / "test"), "--json", str(scores), "--device", device])
    if code != 0:
        raise SystemExit(f"evaluate.py failed on {data / 'test'}")
    for row, s in zip(rows, json.loads(scores.read_text())["models"]):
        metrics = engine.read_metrics(Path(row["out"]) / "metrics.csv")
        row.update(test_acc=s["accuracy"], test_ci95=s["ci95"], best_val_acc=s["best_val_acc"],
                   best_epoch=s["epoch"],
                   best_step=sum(int(m["steps"]) for m in metrics if int(m["epoch"]) <= s["epoch"]))


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


TAIL_START = 5 / 6  # the curve's last sixth: at 24,000 steps, the last 4,000
CURVE_POINTS = (1 / 4, 1 / 2, TAIL_START, 1)  # of a run's steps: at 24,000, val at 6,000 / 12,000 / 20,000 / 24,000


def curve_table(runs: list[dict]) -> list[list[str]]:
    """Each run's validation accuracy at CURVE_POINTS of its steps (the last validation at or before
    each) and its mean over the validations of the last sixth of its steps: where the curve still
    rises, and where it ends without the luck of one validation."""
    table = [["seed", "model", "val at 1/4, 1/2, 5/6 and all of the steps", "mean val, last sixth of the steps"]]
    for r in runs:
        steps, val = [s for s, _, _ in r["val_curve"]], [v for _, _, v in r["val_curve"]]
        at = [[v for s, v in zip(steps, val) if s <= f * steps[-1]][-1:] for f in CURVE_POINTS]  # [] or [v]
        last_sixth = [v for s, v in zip(steps, val) if s > steps[-1] * TAIL_START]
        table.append([str(r["seed"]), r["model"], " / ".join(f"{100 * a[0]:.1f}" if a else "–" for a in at) + " %",
                      f"{100 * statistics.mean(last_sixth):.1f} %"])
    return table


def trained_on(runs: list[dict]) -> str:
    """Where the runs trained, since a table reuses runs saved on other machines: 'Runs trained on:
    X (4 runs), not recorded (2 runs).' (runs saved before their JSON named a machine: not recorded)."""
    where = Counter(r["machine"]["cpu"] + (f", GPU {r['machine']['gpu']}" if r["machine"]["gpu"] else "")
                    if "machine" in r else "not recorded" for r in runs)
    return "Runs trained on: " + ", ".join(f"{m} ({n} run{'s' * (n > 1)})" for m, n in where.items()) + "."


def markdown(report: dict) -> str:
    """The four tables of BENCHMARKS.md's accuracy section, under the machine and config lines
    (MNIST: test errors, to two decimals, beside the paper's)."""
    from evaluate import markdown_table
    s, cfg, m = report["summary"], report["config"], report["machine"]
    flags = {r["model"]: r["args"] for r in report["runs"]}
    if cfg.get("preset") in MNIST_PRESETS:
        models = [["model", "flags", "test error (mean ± std over seeds)", "per seed"]] + [
            [model, f"`{flags[model]}`", f"{100 * (1 - s[model]['mean']):.2f} ± {100 * s[model]['std']:.2f} % "
             f"(n={s[model]['n']})", ", ".join(f"{100 * (1 - r['test_acc']):.2f}" for r in report["runs"]
                                               if r["model"] == model)] for model in cfg["models"]]
    else:
        models = [["model", "flags", "test accuracy (mean ± std over seeds)"]] + [
            [model, f"`{flags[model]}`", f"{100 * s[model]['mean']:.1f} ± {100 * s[model]['std']:.1f} % "
             f"(n={s[model]['n']})"] for model in cfg["models"]]
    gains = [["gain, paired by seed", "mean ± std", "per seed"]] + [
        [name, f"{100 * g['mean']:+.1f} ± {100 * g['std']:.1f} points",
         ", ".join(f"{100 * x:+.1f}" for x in g["per_seed"])] for name, g in s["gains"].items()]
    runs = [["seed", "model", "test acc (95 % CI)", "best val acc", "best step", "steps", "train min"]] + [
        [str(r["seed"]), r["model"],
         f"{100 * r['test_acc']:.1f} % ({100 * r['test_ci95'][0]:.1f}–{100 * r['test_ci95'][1]:.1f})",
         f"{100 * r['best_val_acc']:.1f} %", f"{r['best_step']:,}", f"{r['steps']:,}",
         f"{r['train_minutes']:.1f}"] for r in report["runs"]]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}; "
            f"{m['date']}.\nConfig: {cfg['image_size']} px, budgets in steps, device {cfg['device']}, "
            f"label seeds {cfg['seeds']}, {cfg.get('jobs', 1)} run(s) at a time of "
            f"{cfg.get('threads') or 'default'} thread(s).\n{trained_on(report['runs'])}")
    return "\n\n".join([head, *map(markdown_table, (models, gains, runs, curve_table(report["runs"])))]) + "\n"


def plot_curves(rows: list[dict], models: list[str], png: Path) -> None:
    """Validation accuracy against training steps (left) and wall-clock minutes (right), every seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        steps, minutes, val = zip(*r["val_curve"])
        style = dict(color=colours[r["model"]], lw=1)
        axes[0].plot(steps, [100 * v for v in val], **style, label=r["model"] if r["seed"] == rows[0]["seed"] else None)
        axes[1].plot(minutes, [100 * v for v in val], **style)
    for ax, xlabel in zip(axes, ("training steps", "wall-clock minutes (training + validation)")):
        ax.axhline(50, color="grey", lw=0.5)
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="val accuracy (%)")
    axes[0].legend()
    fig.suptitle(f"validation accuracy, one line per label seed ({len({r['seed'] for r in rows})} seeds)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_errors(rows: list[dict], models: list[str], png: Path) -> None:
    """MNIST: validation error against steps, log-log, every seed, with each run's test error at its
    scored step and the ports' and the paper's test errors (MNIST_ANCHORS) beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        steps, _, val = zip(*r["val_curve"])
        label = r["model"] if r["seed"] == rows[0]["seed"] else None
        ax.plot(steps, [100 - 100 * v for v in val], color=colours[r["model"]], lw=1,
                label=f"{label}, val" if label else None)
        ax.plot(r["best_step"], 100 - 100 * r["test_acc"], "o", color=colours[r["model"]],
                label=f"{label}, test (best-by-val checkpoint)" if label else None)
    for (name, points), marker in zip(MNIST_ANCHORS.items(), ("s--", "*")):
        ax.plot(*zip(*points), marker, color="black", ms=7, lw=0.8, alpha=0.7, label=f"{name}, test")
    ax.set(xscale="log", yscale="log", xlabel="training steps (100 labeled + 100 unlabeled digits each)",
           ylabel="error (%)", title="MNIST, 100 labels: error against steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for flag, path in (("--data-src", args.data_src), ("--unlabeled-src", args.unlabeled_src)):
        if (path and not Path(path).exists()) or (flag == "--data-src" and not path):
            problem = f"{path}: no such file or folder" if path else "PATH is required: train.zip or a folder"
            print(f"accuracy.py: error: {flag} {problem}", file=sys.stderr)
            return 2
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    # Every seed's data, prepared before any child process starts (no two prepare one folder): a saved
    # run is reused only if it trained on the same prepared data.
    data = {seed: prepare_seed(work, seed, args.data_src, args.unlabeled_src, args.split,
                               shlex.split(args.prepare_args))
            for seed in args.seeds}
    stem = "accuracy" + ("_quick" if args.quick else "") + (f"_{args.preset}" if args.preset else "")
    results, flags = Path(args.results), {model: getattr(args, MODELS[model][1]) for model in args.models}
    runs_dir = results / f"{stem}_runs"  # scored runs, reused by a rerun without their folders
    identity = {(seed, model): run_identity(MODELS[model][0], data[seed]) for seed in args.seeds for model in args.models}
    saved = {job: None if args.no_reuse else saved_run(runs_dir, *job, flags[job[1]], args.image_size, identity[job])
             for job in identity}
    pending = [job for job, row in saved.items() if row is None]
    for seed, model in pending:
        out = work / f"seed{seed}" / model
        if args.no_reuse and out.exists():
            print(f"[seed {seed}] {model}: --no-reuse: deleting {out}", flush=True)
            shutil.rmtree(out)
        check_run_folder(out, MODELS[model][0], trainer_argv(data[seed], out, args.image_size, args.device, seed,
                                                            shlex.split(flags[model])), identity[seed, model])
    if args.jobs > 1:
        train_in_parallel(work, pending, args.jobs, args.threads or 1, argv)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    machine = machine_info(device)
    for seed in args.seeds:
        seed_rows = [train_or_reuse(model, data[seed], work / f"seed{seed}" / model, seed, shlex.split(flags[model]),
                                    args.image_size, args.device) for s, model in pending if s == seed]
        if not args.train_only and seed_rows:
            score(seed_rows, data[seed], work / f"seed{seed}" / "test.json", args.device)
            for row in seed_rows:
                saved[seed, row["model"]] = save_run(runs_dir, row, args.image_size, machine, identity[seed, row["model"]])
    if args.train_only:
        return 0
    rows = [saved[seed, model] for seed in args.seeds for model in args.models]
    report = {"machine": machine,
              "config": {"image_size": args.image_size, "device": args.device, "seeds": args.seeds,
                         "models": args.models, "quick": args.quick, "preset": args.preset,
                         "jobs": args.jobs, "threads": args.threads},
              "runs": rows, "summary": summarize(rows, args.models)}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown(report))
    (plot_errors if args.preset in MNIST_PRESETS else plot_curves)(rows, args.models, results / f"{stem}_curves.png")
    grid = [Path(r["out"]) / "samples" / f"epoch_{r['best_epoch']:03d}.png" for r in rows if r["model"] == "ssgan"]
    if grid and grid[0].exists():  # the generator's grid at the checkpoint that was scored, first seed
        shutil.copyfile(grid[0], results / f"{stem}_samples.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

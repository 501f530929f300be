"""Compare trained checkpoints on one labeled set, and write class probabilities for unlabeled images.

    # the article's comparison on the held-out test split written by prepare_data.py
    python evaluate.py runs/supervised/best.pt runs/ssgan/best.pt --data data/test
    # the same, plus the numbers as JSON and a markdown report with plots (report_files/ beside it)
    python evaluate.py runs/supervised/best.pt runs/ssgan/best.pt --data data/test \\
        --json runs/test.json --report runs/report.md
    # any labeled images: Kaggle-named files (cat.0.jpg, dog.0.jpg) in a folder or in train.zip
    python evaluate.py runs/ssgan/best.pt --data train.zip
    # Kaggle submission (id,label = probability of dog) for test1.zip, with the first checkpoint
    python evaluate.py runs/ssgan/best.pt --predict test1.zip --csv submission.csv

For every checkpoint the table lists its run, kind, epoch, the validation accuracy it recorded, and on
--data: accuracy with a 95 % Wilson score interval, mean cross-entropy, per-class accuracy and the
confusion matrix (rows true class, columns predicted class). Each checkpoint is rebuilt from its
own metadata and fed images at its own --image-size. The set is only scored, never used to choose
anything: the rows list the checkpoints given, in the order given.

--data is a prepared split (data/test/<class>/*.jpg, read as is) or any other folder or zip of
labeled images (classes from Kaggle names `cat.12.jpg`, else from the parent folder), which is
decoded once into a temporary folder (broken and non-image files are skipped and listed on stderr).
Classes are matched to each checkpoint's classes by name, so a set holding one class scores right.
Checkpoints of one-channel networks (MNIST, prepare_data.py --grayscale) read the images as
grayscale; such a temporary copy is written as lossless PNGs, and colour images in it are skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dali_loaders
import engine
import prepare_data
from models import build_classifier

DEFAULT_CHECKPOINTS = ["runs/supervised/best.pt", "runs/ssgan/best.pt"]
DEFAULT_DATA = "data/test"
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
MAX_LISTED = 50  # skipped files printed on stderr; --json lists them all


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__.split("\n\n")[0], formatter_class=engine.HelpFormatter)
    p.add_argument("checkpoints", nargs="*", default=DEFAULT_CHECKPOINTS, metavar="CHECKPOINT",
                   help="checkpoints written by train_supervised.py / train_ssgan.py (best.pt or "
                        "last.pt), compared in the order given (default: "
                        f"{' '.join(DEFAULT_CHECKPOINTS)})")
    p.add_argument("--data", default=None,
                   help=f"labeled images to score (default: {DEFAULT_DATA}): a prepared split with "
                        "one subfolder per class, or a folder or zip of Kaggle-named images "
                        "(cat.0.jpg, e.g. train.zip). With --predict, no labeled evaluation is run "
                        "unless --data is given")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    p.add_argument("--report", metavar="FILE.md",
                   help="also write a markdown report; its plots go to <stem>_files/ beside it")
    p.add_argument("--predict", metavar="PATH",
                   help="folder or zip of images (searched recursively) to classify with the FIRST "
                        "checkpoint; probabilities go to --csv (Kaggle submission format id,label "
                        "for test1-style N.jpg files and cat/dog checkpoints)")
    p.add_argument("--csv", metavar="FILE", help="output of --predict")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): CUDA when available")
    p.add_argument("--loader", choices=dali_loaders.BACKENDS, default="auto",
                   help="image loading: DALI (GPU decoding on CUDA), plain torch, or auto (default: "
                        "DALI if installed)")
    p.add_argument("--batch-size", type=engine.int_at_least(1), default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=engine.int_at_least(1), default=min(8, os.cpu_count() or 1),
                   help="DALI threads / DataLoader workers, and processes decoding unprepared "
                        "images (default: the CPU count, at most 8; here %(default)s)")
    p.add_argument("--tmp-dir", default=None,
                   help="where unprepared images are decoded for the run (default: the system's "
                        "temporary folder); Kaggle's train.zip needs about 0.6 GB")
    return p


# ----------------------------------------------------------------------------------------------
# Checkpoints

@dataclass
class Model:
    path: Path
    name: str
    state: dict  # metadata only: the weights live in `classifier`
    classifier: torch.nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.state["classes"])


def train_command(run: Path, data: str) -> str:
    """The command that writes run/best.pt: the trainer its folder's name points to (ssgan,
    supervised), else either."""
    name = run.name.lower()
    trainers = (["train_ssgan.py"] if "ssgan" in name else ["train_supervised.py"] if "supervised" in name
                else ["train_supervised.py", "train_ssgan.py"])
    return " or ".join(f"python {t} --data {data} --out {run}" for t in trainers)


def missing_checkpoints_message(missing: list[Path], data: str | None) -> str:
    """One message for every checkpoint not found, with the command that would write each."""
    # The prepared folder the runs would train on: --data's parent when it is a prepared test split.
    root = str(Path(data).parent) if data and Path(data).name == "test" else "data"
    commands = "; ".join(train_command(p.parent, root) for p in missing)
    return (f"checkpoint{'s' if len(missing) > 1 else ''} not found: {', '.join(str(p) for p in missing)}. Train first ({commands}; README has the "
            "flags for a GPU and for a CPU), or pass the best.pt / last.pt of runs you have")


def load_model(path: Path, name: str) -> Model:
    state = engine.load_checkpoint(path)  # weights_only=True: no code runs from the file
    missing = [k for k in ("classifier", "classifier_meta", "classes", "image_size", "normalize")
               if k not in state]
    if missing:
        raise engine.TrainingError(f"checkpoint {path} lacks {missing}; was it written by "
                                   "train_supervised.py / train_ssgan.py?")
    norm = state["normalize"]
    if not (np.allclose(norm.get("mean", []), dali_loaders.NORMALIZE_MEAN)
            and np.allclose(norm.get("std", []), dali_loaders.NORMALIZE_STD)):
        # The loaders only produce one normalisation; scoring with another would be silently wrong.
        raise engine.TrainingError(
            f"checkpoint {path} expects inputs normalised with {norm}, but the loaders produce "
            f"mean {list(dali_loaders.NORMALIZE_MEAN)}, std {list(dali_loaders.NORMALIZE_STD)}; "
            "evaluate it with the code that trained it")
    if int(state["classifier_meta"]["num_classes"]) != len(state["classes"]):
        raise engine.TrainingError(f"checkpoint {path}: classifier has "
                                   f"{state['classifier_meta']['num_classes']} outputs but "
                                   f"{len(state['classes'])} classes {state['classes']}")
    classifier = build_classifier(state["classifier_meta"])
    classifier.load_state_dict(state["classifier"])
    classifier.eval()
    # Keep the small metadata only: optimizer states and generator weights are not needed here.
    meta = {k: v for k, v in state.items()
            if k in ("kind", "epoch", "best_val_acc", "best_epoch", "val", "classes", "image_size")}
    meta["channels"] = int(state["classifier_meta"].get("in_channels", 3))  # 1: grayscale (MNIST)
    return Model(path, name, meta, classifier)


def model_names(paths: list[Path]) -> list[str]:
    """The run folder's name (runs/ssgan/best.pt -> ssgan) where that is unambiguous, else the path."""
    names = [p.parent.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


# ----------------------------------------------------------------------------------------------
# Images

def is_prepared_split(folder: Path) -> bool:
    """data/test layout from prepare_data.py: only <class>/<file>.jpg, so the loaders read it as is."""
    members = prepare_data.list_source(str(folder))
    return bool(members) and all(
        m.count("/") == 1 and os.path.splitext(m)[1].lower() in dali_loaders.IMAGE_EXTENSIONS
        for m in members)


def list_candidates(source: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Image members of a folder or zip, and the (name, reason) of every file not worth decoding."""
    try:
        members = prepare_data.list_source(source)
    except prepare_data.DataError as exc:
        raise engine.TrainingError(str(exc)) from exc
    candidates, skipped = [], []
    for m in members:
        reason = prepare_data.skip_reason_for_name(m)
        if reason:
            skipped.append((m, reason))
        else:
            candidates.append(m)
    return candidates, skipped


def decode_into(source: str, members: list[str], dests: list[Path], workers: int, grayscale: bool
                ) -> tuple[list[int], list[tuple[str, str]]]:
    """Decode each member fully (prepare_data's check) and write the good ones to `dests` as RGB
    JPEGs, or grayscale PNGs (colour images are then skipped, as prepare_data.py --grayscale does).
    Returns the indices written and the (name, reason) of the skipped ones."""
    checks = prepare_data.parallel_map(prepare_data.check_member,
                                       [(source, m, grayscale) for m in members], workers, "checking images")
    kept = [i for i, (_, error, _) in enumerate(checks) if error is None]
    broken = [(members[i], checks[i][1]) for i, c in enumerate(checks) if c[1] is not None]
    prepare_data.parallel_map(prepare_data.write_member,
                              [(source, members[i], str(dests[i]), checks[i][2], None, grayscale) for i in kept],
                              workers, "writing images")
    return kept, broken


@contextlib.contextmanager
def decoded_copy(flag: str, source: str, members: list[str], skipped: list[tuple[str, str]],
                 relpaths: list[str], workers: int, tmp_dir: str | None, grayscale: bool = False):
    """Decode `members` of `source` (prepare_data's full check) into a temporary folder at
    `relpaths`, list what was skipped on stderr, and yield (folder, indices written, all skipped)."""
    with tempfile.TemporaryDirectory(prefix="evaluate-", dir=tmp_dir) as tmp:
        dests = [Path(tmp) / rel for rel in relpaths]
        for folder in {d.parent for d in dests}:
            folder.mkdir(parents=True, exist_ok=True)
        kept, broken = decode_into(source, members, dests, workers, grayscale)
        report_skipped(source, sorted(skipped + broken), len(members) + len(skipped))
        if not kept:
            raise engine.TrainingError(f"{flag} {source} holds no readable image")
        yield Path(tmp), kept, sorted(skipped + broken)


def report_skipped(source: str, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    print(f"evaluate.py: skipped {len(skipped)} of {total} files in {source}:", file=sys.stderr)
    for name, reason in skipped[:MAX_LISTED]:
        print(f"  {name}: {reason}", file=sys.stderr)
    if len(skipped) > MAX_LISTED:
        print(f"  ... and {len(skipped) - MAX_LISTED} more (all listed by --json)", file=sys.stderr)


@contextlib.contextmanager
def labeled_folder(data: str, models: list[Model], workers: int, tmp_dir: str | None):
    """Yield (folder in <class>/*.jpg layout, skipped files) for --data, once its classes are
    known to be every model's."""
    path = Path(data)
    if not path.exists():
        raise engine.TrainingError(
            f"--data {data} not found: pass a split written by prepare_data.py (e.g. data/test; "
            "python prepare_data.py --src train.zip --out data), or a folder or zip of Kaggle-named "
            "images (cat.0.jpg, dog.0.jpg)")
    if path.is_dir() and is_prepared_split(path):
        samples, classes = dali_loaders.list_labeled(path)
        check_classes({classes[k] for _, k in samples}, models, data)
        yield path, []
        return
    candidates, skipped = list_candidates(data)
    labels = [prepare_data.infer_label(m) for m in candidates]
    unlabeled = [m for m, label in zip(candidates, labels) if label is None]
    if unlabeled:
        raise engine.TrainingError(
            f"--data {data}: cannot tell the class of {len(unlabeled)} image(s) (first: "
            f"{unlabeled[:3]}); name them <class>.<number>.jpg (Kaggle style) or put them in one "
            "subfolder per class. Unlabeled images go to --predict")
    check_classes(set(labels), models, data)  # before decoding what may be 25,000 images
    # Numbered names: two sources' cat.1.jpg (train/ and another folder) must not collide.
    grey = all(m.state["channels"] == 1 for m in models)  # grayscale networks: lossless one-channel copies
    relpaths = [f"{label}/{i:07d}.{'png' if grey else 'jpg'}" for i, label in enumerate(labels)]
    with decoded_copy("--data", data, candidates, skipped, relpaths, workers, tmp_dir,
                      grey) as (folder, _, skipped):
        yield folder, skipped


# ----------------------------------------------------------------------------------------------
# Scores

def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: unlike p +- z*sqrt(p(1-p)/n) it stays
    inside [0, 1] and does not collapse to a point at 0 or n successes."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def check_classes(present: set[str], models: list[Model], data: str) -> None:
    for model in models:
        unknown = sorted(present - set(model.classes))
        if unknown:
            raise engine.TrainingError(
                f"--data {data} holds class(es) {unknown} that checkpoint {model.path} does not "
                f"know (its classes: {model.classes}); score it on images of those classes only")


def class_mapping(folder_classes: list[str], present: set[int], model: Model, data: str) -> list[int]:
    """Folder class k -> the checkpoint's index of the class with the same name."""
    check_classes({folder_classes[k] for k in present}, [model], data)
    # Absent folder classes (empty subfolders) never occur in a batch; 0 is a placeholder.
    return [model.classes.index(c) if c in model.classes else 0 for c in folder_classes]


def score(model: Model, folder: Path, data: str, args, rt: engine.Runtime) -> dict:
    loader = dali_loaders.labeled_loader(
        folder, batch_size=args.batch_size, image_size=int(model.state["image_size"]), train=False,
        backend=args.loader, device=rt.device, num_threads=args.workers, channels=model.state["channels"])
    remap = torch.tensor(class_mapping(loader.classes, set(loader.labels), model, data),
                         device=rt.device)
    batches = ((x, remap[y.to(rt.device)]) for x, y in loader)
    batches = tqdm(batches, total=len(loader), desc=f"scoring {model.name}", unit="batch", leave=False,
                   disable=None)
    metrics = engine.evaluate(model.classifier, batches, len(model.classes), rt)
    confusion = metrics["confusion"]
    correct = sum(confusion[k][k] for k in range(len(confusion)))
    per_class = {c: (confusion[k][k] / sum(confusion[k]) if sum(confusion[k]) else None)
                 for k, c in enumerate(model.classes)}
    lo, hi = wilson_interval(correct, metrics["count"])
    return {
        "name": model.name, "path": str(model.path), "kind": model.state.get("kind"),
        "epoch": model.state.get("epoch"), "epoch_steps": model.state.get("epoch_steps"),
        "best_val_acc": model.state.get("best_val_acc"),
        "val_acc": (model.state.get("val") or {}).get("accuracy"),
        "image_size": int(model.state["image_size"]),
        "accuracy": metrics["accuracy"], "ci95": [lo, hi], "loss": metrics["loss"],
        "count": metrics["count"], "per_class": per_class, "confusion": confusion,
        "classes": model.classes,
    }


# ----------------------------------------------------------------------------------------------
# Output

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = [["model", "kind", "epoch", "val acc %", "accuracy % [95 % CI]", "loss", "per-class accuracy %"]]
    for r in results:
        rows.append([r["name"], str(r["kind"]), str(r["epoch"]), pct(r["val_acc"]),
                     f"{pct(r['accuracy'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]",
                     f"{r['loss']:.4f}",
                     ", ".join(f"{c} {pct(a)}" for c, a in r["per_class"].items())])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    """A pipe table padded to column width: readable in a terminal and rendered as markdown."""
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows[1:])])


def confusion_table(r: dict) -> list[list[str]]:
    return [["true \\ predicted", *r["classes"]],
            *[[c, *map(str, row)] for c, row in zip(r["classes"], r["confusion"])]]


def print_results(results: list[dict], data: str, count: int, skipped: int) -> None:
    extra = f", {skipped} file(s) skipped" if skipped else ""
    print(f"{data}: {count} images{extra}. Accuracy with a 95 % Wilson score interval; "
          "loss = mean cross-entropy.")
    print(markdown_table(table_rows(results)))
    for r in results:
        print(f"\n{r['name']}: confusion matrix (rows true, columns predicted)")
        print(markdown_table(confusion_table(r)))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def latest_sample_grid(run_folder: Path) -> tuple[int, Path] | None:
    grids = [(int(m.group(1)), p) for p in (run_folder / "samples").glob("epoch_*.png")
             if (m := re.fullmatch(r"epoch_(\d+)\.png", p.name))]
    return max(grids) if grids else None


def write_report(path: Path, results: list[dict], data: str, count: int,
                 skipped: list[tuple[str, str]]) -> None:
    """report.md: the table, the runs' validation curves, and per model its confusion matrix (table
    and plot) and, for an SSGAN, its last generator grid; plots in <stem>_files/ beside it."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display

    path.parent.mkdir(parents=True, exist_ok=True)
    files = path.parent / f"{path.stem}_files"
    files.mkdir(exist_ok=True)
    lines = [f"# Checkpoint comparison on `{data}`", "",
             f"{count} images. Accuracy with a 95 % Wilson score interval; loss = mean "
             "cross-entropy; val acc is the validation accuracy the checkpoint recorded. This set "
             "only scores the checkpoints given; nothing is selected on it.", ""]
    if skipped:
        lines += [f"{len(skipped)} file(s) skipped:", "",
                  *[f"- `{n}`: {reason}" for n, reason in skipped], ""]
    lines += [markdown_table(table_rows(results)), ""]
    lines += curve_section(results, files)
    for i, r in enumerate(results, 1):
        lines += model_section(i, r, files)
    path.write_text("\n".join(lines))


def link(png: Path) -> str:
    """A report's link to one of its plots: relative, so the report renders wherever it is moved."""
    return urllib.parse.quote(f"{png.parent.name}/{png.name}")


def curve_section(results: list[dict], files: Path) -> list[str]:
    """One validation curve per run folder (best.pt and last.pt of a run share it), the scored
    epochs circled."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs: dict[Path, list[dict]] = {}
    for r in results:
        runs.setdefault(Path(r["path"]).parent, []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = []
    for folder, rs in runs.items():
        metrics = folder / "metrics.csv"
        rows = engine.read_metrics(metrics) if metrics.is_file() else []
        if not rows:
            continue
        epochs, whole = engine.epoch_positions(rows)
        acc = [100 * float(row["val_acc"]) for row in rows]
        (line,) = ax.plot(epochs, acc, marker=".", label=folder.name or str(folder))
        for r in (r for r in rs if r["epoch"]):  # the row it was saved at (a cut-short epoch has two)
            at = r["epoch"] - 1 + (r.get("epoch_steps") or whole) / whole
            for x, a in zip(epochs, acc):
                if math.isclose(x, at):
                    ax.plot(x, a, "o", ms=10, mfc="none", color=line.get_color())
        plotted.append(folder)
    lines = ["## Validation accuracy during training", ""]
    if plotted:
        ax.set(xlabel="epoch", ylabel="val accuracy (%)",
               title="validation accuracy per epoch (circles: scored checkpoints)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(files / "val_accuracy.png", dpi=100)
        lines += [f"![validation accuracy per epoch]({link(files / 'val_accuracy.png')})", ""]
    missing = [str(f) for f in runs if f not in plotted]
    if missing:
        lines += [f"No metrics.csv in {', '.join(f'`{m}`' for m in missing)}.", ""]
    plt.close(fig)
    return lines


def model_section(i: int, r: dict, files: Path) -> list[str]:
    """Result `r` (the i-th model): its confusion matrix as a table and a plot, its generator grid."""
    import matplotlib.pyplot as plt

    lines = [f"## {r['name']}", "", f"`{r['path']}`: {r['kind']}, epoch {r['epoch']}, "
             f"{r['image_size']} px. Accuracy {pct(r['accuracy'])} % "
             f"[{pct(r['ci95'][0])}, {pct(r['ci95'][1])}], loss {r['loss']:.4f}.", "",
             "Confusion matrix (rows true, columns predicted):", "",
             markdown_table(confusion_table(r)), ""]
    png = files / f"confusion_{i}_{safe_name(r['name'])}.png"
    k = len(r["classes"])
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    counts = np.array(r["confusion"])
    ax.imshow(counts, cmap="Blues", vmin=0)
    for t in range(k):
        for p in range(k):  # white on the dark cells
            ax.text(p, t, str(counts[t, p]), ha="center", va="center",
                    color="white" if counts[t, p] > counts.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=r["classes"], yticklabels=r["classes"],
           xlabel="predicted", ylabel="true", title=f"{r['name']}: {pct(r['accuracy'])} %")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    lines += [f"![confusion matrix of {r['name']}]({link(png)})", ""]
    if r["kind"] != "ssgan":
        return lines
    grid = latest_sample_grid(Path(r["path"]).parent)
    if grid is None:
        return lines + ["No generator samples (samples/epoch_NNN.png) in the run folder.", ""]
    epoch, src = grid
    dest = files / f"samples_{i}_{safe_name(r['name'])}.png"
    shutil.copyfile(src, dest)
    return lines + [f"Generator samples after epoch {epoch} (the run's last grid):", "",
                    f"![generator samples of {r['name']}]({link(dest)})", ""]


# ----------------------------------------------------------------------------------------------
# --predict

@torch.no_grad()
def predict(model: Model, args, rt: engine.Runtime) -> None:
    source = args.predict
    if not Path(source).exists():
        raise engine.TrainingError(f"--predict {source} not found: pass a folder or zip of images "
                                   "(e.g. Kaggle's test1.zip)")
    candidates, skipped = list_candidates(source)
    # Zero-padded numbers: the loader's sorted file order is the candidates' order.
    grey = model.state["channels"] == 1
    relpaths = [f"{i:07d}.{'png' if grey else 'jpg'}" for i in range(len(candidates))]
    with decoded_copy("--predict", source, candidates, skipped, relpaths, args.workers,
                      args.tmp_dir, grey) as (folder, kept, skipped):
        loader = dali_loaders.unlabeled_loader(
            folder, batch_size=args.batch_size, image_size=int(model.state["image_size"]),
            train=False, backend=args.loader, device=rt.device, num_threads=args.workers,
            channels=model.state["channels"])
        probs = []
        for images in tqdm(loader, desc="predicting", unit="batch", disable=None):
            with rt.autocast():
                logits = model.classifier(rt.to_device(images))
            probs.append(torch.softmax(logits.float(), 1).cpu())
    probs = torch.cat(probs).double().tolist()
    files = [candidates[i] for i in kept]
    stems = [os.path.splitext(f.rsplit("/", 1)[-1])[0] for f in files]
    # Kaggle's format: test1's N.jpg -> id N, label = P(dog); any other case gets every class.
    submission = (model.classes == ["cat", "dog"] and all(s.isdigit() for s in stems)
                  and len({int(s) for s in stems}) == len(stems))
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        if submission:
            w.writerow(["id", "label"])
            w.writerows(sorted((int(s), f"{p[1]:.8g}") for s, p in zip(stems, probs)))
        else:
            w.writerow(["file", *model.classes])
            w.writerows([name, *(f"{q:.8g}" for q in p)] for name, p in zip(files, probs))
    layout = "Kaggle submission id,label (label = probability of dog)" if submission else \
        f"file,{','.join(model.classes)} probabilities"
    print(f"wrote {out}: {len(files)} images of {source} scored by {model.path} ({layout}); "
          f"{len(skipped)} file(s) skipped")


# ----------------------------------------------------------------------------------------------

def run(args) -> None:
    if bool(args.predict) != bool(args.csv):
        raise engine.TrainingError("--predict PATH and --csv FILE go together")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise engine.TrainingError("evaluate.py runs in one process: start it with python, not torchrun")
    paths = [Path(p) for p in args.checkpoints]
    # With --predict only the first checkpoint is needed; without it, all are loaded up front so a
    # missing one fails before minutes of scoring.
    evaluate_labeled = args.predict is None or args.data is not None
    if not evaluate_labeled:
        paths = paths[:1]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise engine.TrainingError(missing_checkpoints_message(missing, args.data))
    models = [load_model(p, n) for p, n in zip(paths, model_names(paths))]
    rt = engine.setup_runtime(args.device, amp=False, loader=args.loader)
    for m in models:
        m.classifier = rt.prepare_model(m.classifier)

    try:
        if args.predict:
            predict(models[0], args, rt)
        if not evaluate_labeled:
            return
        data = args.data or DEFAULT_DATA
        with labeled_folder(data, models, args.workers, args.tmp_dir) as (folder, skipped):
            results = [score(m, folder, data, args, rt) for m in models]
    except ImportError as exc:  # --loader dali without DALI: the message names the fix
        raise engine.TrainingError(str(exc)) from exc
    count = results[0]["count"]
    print_results(results, data, count, len(skipped))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "data": data, "count": count, "interval": "95 % Wilson score interval",
            "skipped": [{"file": n, "reason": r} for n, r in skipped], "models": results},
            indent=2) + "\n")
        print(f"wrote {out}")
    if args.report:
        write_report(Path(args.report), results, data, count, skipped)
        print(f"wrote {args.report}")


def main(argv=None) -> int:
    return engine.run_main(run, argv, get_args_parser())


if __name__ == "__main__":
    sys.exit(main())

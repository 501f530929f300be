"""Throughput on the CPU: image loading (`loader`) and one SSGAN training step on random tensors
(`step`), contenders interleaved in rounds whose order rotates; the tables give medians.

    # BENCHMARKS.md "Image loading": 2,000 images of Kaggle's train.zip, output 64 and 224 px
    python bench/throughput.py loader --data-src train.zip --threads 1 --json bench/results/loader_cpu_t1.json
    # BENCHMARKS.md "SSGAN training step: ResNet18, the article's step" (64 px)
    python bench/throughput.py step --threads 1 --json bench/results/train_cpu.json
    # BENCHMARKS.md "SSGAN step of the CPU recipe: small CNN, 32 px, lever by lever"
    python bench/throughput.py step --arch cnn --threads 2 --json bench/results/train_cnn_levers.json
    # BENCHMARKS.md "MNIST": the MLP step against its bare arithmetic, 1 and 2 threads in one run
    python bench/throughput.py step --arch mlp --json bench/results/train_mlp.json
    # smoke runs: 200 images at 64 px; 32 px steps; 2 rounds, no warm-up
    python bench/throughput.py loader --data-src train.zip --quick
    python bench/throughput.py step --quick

loader: JPEGs of --data-src (half cats, half dogs) through prepare_data.py untouched and at
--image-size S, full epochs from fresh loaders (start-up included, batch 64), 5 rounds after 1
warm-up. step: the article's step against train_ssgan.ssgan_step (check_same_losses first asserts
equal losses), or with --arch cnn ssgan_step under the train_ssgan.py flags of each row, or with
--arch mlp the MNIST step three ways (the networks' forward and backward alone, ssgan_step, and
ssgan_step with its batches drawn from memory and the weight average, as train_ssgan.py runs it)
with 1 and 2 threads; 5 rounds of 1 (cnn: 3; mlp: 20) steps after 2 warm-up rounds. BENCHMARKS.md describes every contender.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing as mp
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

from bench_machine import header_line, machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KAGGLE = re.compile(r"(?:^|/)(cat|dog)\.\d+\.jpg$")
NUM_CLASSES, Z_DIM, BETAS = 2, 100, (0.5, 0.999)  # BETAS: train_ssgan.py's --beta1 default
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5
# The step the CPU recipe replaced (its flags of train_ssgan.py besides --arch cnn).
CNN_BEFORE = ("--g-width 64 --labeled-batch-size 100 --batch-size 64 --g-loss feature-matching --lr 1e-3 "
              "--lr-g 3e-4")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=("loader", "step"))
    p.add_argument("--data-src", metavar="PATH",
                   help="loader: Kaggle's train.zip or a folder of cat.N.jpg / dog.N.jpg")
    p.add_argument("--arch", choices=("resnet18", "cnn", "mlp"), default="resnet18",
                   help="step: ours vs the article's step (resnet18), the CPU recipe's levers (cnn), or "
                        "the MNIST step against its bare arithmetic at 1 and 2 threads (mlp)")
    p.add_argument("--threads", type=int, default=None,
                   help="loader: DALI threads, DataLoader workers, decode processes (1); step: torch threads")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, no warm-up, small sizes")
    return p


def interleave(contenders: list, warmup: int, rounds: int, measure) -> None:
    """measure(c, round) for every contender, in an order rotated each round; timed rounds keep it in c.times."""
    for rnd in range(warmup + rounds):
        k = rnd % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            value = measure(c, rnd)
            if rnd >= warmup:
                c.times.append(value)


# loader: JPEG decoding and our loaders

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
    """prepare_data.py's copy of src (untouched, or at --image-size size), all in labeled/<class>/."""
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


def loader_contenders(size: int, threads: int, orig: Path, pre: Path, pool) -> list[SimpleNamespace]:
    """One output size's contenders: name, kind (ceiling / ours / baseline, '-pre' on pre-resized
    files) and run() -> images handed over."""
    import torch
    import dali_loaders
    from torchvision import datasets, transforms

    def ceiling(folder):
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))
        chunk = max(1, len(paths) // (8 * threads))  # small chunks balance the pool
        return lambda: sum(pool.map(_decode_files, [paths[i:i + chunk] for i in range(0, len(paths), chunk)]))

    def epoch(make_loader):  # a full epoch from a fresh loader, start-up included
        def run():
            n = sum((b[0] if isinstance(b, (list, tuple)) else b).shape[0] for b in make_loader())
            gc.collect()  # a DALI pipeline goes now, not during the next contender
            return n
        return run

    def ours(backend, folder):
        return epoch(lambda: dali_loaders.labeled_loader(folder, batch_size=64, image_size=size, train=False,
                                                         backend=backend, num_threads=threads,
                                                         device=torch.device("cpu")))
    norm = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    baseline = datasets.ImageFolder(str(orig), transform=transforms.Compose([
        transforms.Resize((size, size)), transforms.ToTensor(), norm]))
    dali = dali_loaders.dali_available()
    out = [("decode ceiling", "ceiling", ceiling(orig)), dali and ("DALI (ours)", "ours", ours("dali", orig)),
           ("torch fallback (ours)", "ours", ours("torch", orig)),
           ("baseline", "baseline", epoch(lambda: torch.utils.data.DataLoader(baseline, batch_size=64,
                                                                              num_workers=threads))),
           (f"decode ceiling, files pre-resized to {size}", "ceiling-pre", ceiling(pre)),
           dali and (f"DALI (ours), files pre-resized to {size}", "ours-pre", ours("dali", pre))]
    return [SimpleNamespace(name=name, kind=kind, size=size, run=run, times=[])
            for name, kind, run in filter(None, out)]


def loader_table(contenders: list) -> tuple[list[list[str]], list[dict]]:
    """BENCHMARKS.md's columns: output | contender | images/s | vs ceiling | vs baseline."""
    med = {(c.size, c.kind): statistics.median(c.times) for c in contenders if "ours" not in c.kind}
    cells, rows = [["output", "contender", "images/s", "vs ceiling", "vs baseline"]], []
    for c in contenders:
        rate = statistics.median(c.times)
        ceiling = med[c.size, "ceiling-pre" if c.kind.endswith("-pre") else "ceiling"]
        rows.append({"size": c.size, "contender": c.name, "images_per_s": rate, "vs_ceiling": rate / ceiling,
                     "ceiling_images_per_s": ceiling, "vs_baseline": rate / med[c.size, "baseline"],
                     "runs_images_per_s": c.times})
        of = f" of {ceiling:.0f}" if c.kind == "ours-pre" else ""
        cells.append([f"{c.size} px", c.name, f"{rate:.0f}", f"{rate / ceiling:.2f}{of}",
                      f"{rate / med[c.size, 'baseline']:.2f}"])
    return cells, rows


def run_loader(data_src: Path, threads: int, quick: bool) -> tuple[str, list[list[str]], list[dict]]:
    import torch
    n_images, sizes, rounds = (200, [64], 2) if quick else (2000, [64, 224], 5)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        extract_subset(data_src, Path(tmp) / "subset", n_images)
        orig = prepared(Path(tmp) / "subset", Path(tmp) / "orig", None)  # duplicates dropped
        n = sum(1 for _ in orig.rglob("*.jpg"))
        with mp.get_context("spawn").Pool(threads) as pool:  # no fork beside DALI's threads
            pre = {s: prepared(orig, Path(tmp) / f"{s}px", s) for s in sizes}
            contenders = [c for s in sizes for c in loader_contenders(s, threads, orig, pre[s], pool)]

            def measure(c, rnd):
                torch.set_num_threads(threads)
                t = time.perf_counter()
                if c.run() != n:
                    raise RuntimeError(f"{c.name} at {c.size} px did not hand over the {n} images")
                return n / (time.perf_counter() - t)
            interleave(contenders, 0 if quick else 1, rounds, measure)
    cells, rows = loader_table(contenders)
    return f"Image loading: {n} JPEGs of {data_src.name}, {threads} thread(s), batch 64", cells, rows


# step: one SSGAN training step

def step_flags(flags: str) -> argparse.Namespace:
    """The train_ssgan.py flags a step depends on, at train_ssgan.py's defaults; others ignored."""
    p = argparse.ArgumentParser(add_help=False)
    for flag, kind, default in (("--batch-size", int, 64), ("--labeled-batch-size", int, None),
                                ("--lr", float, 2e-3), ("--lr-g", float, None), ("--g-width", int, 64),
                                ("--g-loss", str, "article"), ("--consistency-weight", float, 0.0)):
        p.add_argument(flag, type=kind, default=default)
    return p.parse_known_args(shlex.split(flags))[0]


def article_log_probs(logits):
    """Log-probabilities of the K classes and of "fake", an explicit (K+1)-th logit fixed at 0."""
    import torch
    return torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1).log_softmax(dim=1)


def article_unlabeled_loss(logits):  # -0.5 * mean(log(1 - p_fake))
    return -0.5 * article_log_probs(logits)[:, :-1].logsumexp(dim=1).mean()


def article_fake_loss(logits):  # -0.5 * mean(log p_fake)
    return -0.5 * article_log_probs(logits)[:, -1].mean()


class Ours:
    """train_ssgan.ssgan_step as train_ssgan.py calls it, with the batch sizes, generator width,
    losses and learning rates that `flags` (train_ssgan.py's) give, through the Runtime `rt`."""

    def __init__(self, name: str, flags: str, classifier, image_size: int, rt):
        import torch
        import train_ssgan
        from models import Generator
        self.name, self.flags, self.rt, self.a = name, flags, rt, step_flags(flags)
        self.labeled, self.batch = self.a.labeled_batch_size or self.a.batch_size, self.a.batch_size
        torch.manual_seed(1)  # every contender's generator of one width starts from the same weights
        self.netG = rt.prepare_model(Generator(image_size, z_dim=Z_DIM, base_channels=self.a.g_width)).train()
        self.classifier = rt.prepare_model(copy.deepcopy(classifier)).train()
        self.opt_d = torch.optim.Adam(self.classifier.parameters(), lr=self.a.lr, betas=BETAS)
        self.opt_g = torch.optim.Adam(self.netG.parameters(), lr=self.a.lr_g or self.a.lr, betas=BETAS)
        self.scaler, self.d_passes = rt.grad_scaler(), train_ssgan.DiscriminatorPasses(self.classifier)
        self.times: list[float] = []

    def step(self, x_lab, y_lab, x_unl, x_unl2, z) -> dict:
        import train_ssgan
        b, to, w = self.batch, self.rt.to_device, self.a.consistency_weight
        return train_ssgan.ssgan_step(self.d_passes, self.classifier, self.netG, self.opt_d, self.opt_g,
                                      self.scaler, to(x_lab[:self.labeled]), y_lab[:self.labeled],
                                      to(x_unl[:b]), z[:b], self.a.g_loss, self.rt,
                                      x_unl2=to(x_unl2[:b]) if w else None, consistency_weight=w)


class Article(Ours):
    """The article's step: fp32 NCHW, three classifier passes for D, a fresh pass over the fakes
    (classifier gradients included) for G, BatchNorm statistics updated by every pass."""

    def step(self, x_lab, y_lab, x_unl, x_unl2, z) -> dict:
        import torch
        import torch.nn.functional as F
        C, fake = self.classifier, self.netG(z[:self.batch])
        loss_lab = F.cross_entropy(C(x_lab[:self.labeled]), y_lab[:self.labeled])
        loss_unl, loss_fake = article_unlabeled_loss(C(x_unl[:self.batch])), article_fake_loss(C(fake.detach()))
        self.opt_d.zero_grad()
        (loss_lab + loss_unl + loss_fake).backward()
        self.opt_d.step()
        loss_g = article_unlabeled_loss(C(fake))  # the article's G loss: "call the fakes real"
        self.opt_g.zero_grad()
        loss_g.backward()  # also computes (and wastes) the classifier's gradients
        self.opt_g.step()
        values = torch.stack([loss_lab, loss_unl, loss_fake, loss_g]).detach().tolist()
        return dict(zip(("loss_labeled", "loss_unlabeled", "loss_fake", "loss_g"), values))


def make_inputs(n_sets: int, labeled: int, batch: int, image_size: int, seed: int) -> list:
    """Random images in [-1, 1] (the loaders' range), labels, a 2nd unlabeled view and noise."""
    import torch
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.rand(n, 3, image_size, image_size, generator=g) * 2 - 1  # noqa: E731
    return [(images(labeled), torch.randint(0, NUM_CLASSES, (labeled,), generator=g), images(batch),
             images(batch), torch.randn(batch, Z_DIM, generator=g)) for _ in range(n_sets)]


def check_same_losses(image_size: int) -> None:
    """AssertionError unless ours and the article's step give the same generated images and first-step
    losses from the same weights and inputs, BatchNorm in eval mode (in train mode they may differ)."""
    import torch
    import engine
    from models import Classifier
    from torch import nn
    torch.manual_seed(0)
    classifier = Classifier(NUM_CLASSES)
    # Running statistics from one real-looking batch (fresh ones, mean 0 / var 1, would make eval
    # mode meaningless; momentum None: a plain average); both contenders then copy these weights.
    bns = [m for m in classifier.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    with torch.no_grad():
        classifier.train()(torch.rand(32, 3, image_size, image_size) * 2 - 1)
    ours = Ours("ours", "--labeled-batch-size 16 --batch-size 16", classifier, image_size,
                engine.Runtime(device=torch.device("cpu")))
    ref = Article("article", "--labeled-batch-size 16 --batch-size 16", classifier, image_size,
                  engine.Runtime(device=torch.device("cpu")))
    ours.classifier.eval()
    ref.classifier.eval()
    inputs = make_inputs(1, 16, 16, image_size, seed=7)[0]
    with torch.no_grad():
        fake_gap = (ours.netG(inputs[-1]) - ref.netG(inputs[-1])).abs().max().item()
    if fake_gap > CHECK_ATOL:  # images in [-1, 1]; only summation order may differ
        raise AssertionError(f"generated images differ by {fake_gap:.3g} on the same noise")
    got, want = ours.step(*inputs), ref.step(*inputs)
    for key in ("loss_labeled", "loss_unlabeled", "loss_fake"):
        if abs(got[key] - want[key]) > CHECK_ATOL + CHECK_RTOL * abs(want[key]):
            raise AssertionError(f"{key}: ours {got[key]!r} vs the article's {want[key]!r} "
                                 "(BN in eval mode, same weights and inputs)")


def step_contenders(arch: str, image_size: int) -> list[Ours]:
    """resnet18: the article's step, then ours NCHW and channels_last; cnn: the levers."""
    import torch
    import engine
    from models import Classifier, SmallCNN
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    if arch == "resnet18":
        classifier = Classifier(NUM_CLASSES)
        return [Article("article's step", "--labeled-batch-size 100", classifier, image_size,
                        engine.Runtime(device=cpu)),
                Ours("ours, NCHW", "", classifier, image_size, engine.Runtime(device=cpu)),
                Ours("ours, channels_last (the default)", "", classifier, image_size,
                     engine.Runtime(device=cpu, channels_last=True))]
    from accuracy import SSGAN_ARGS
    w16 = CNN_BEFORE.replace("--g-width 64", "--g-width 16")
    small = w16.replace("--labeled-batch-size 100", "--labeled-batch-size 16").replace("--batch-size 64",
                                                                                       "--batch-size 32")
    levers = [("before", CNN_BEFORE),
              ("before + consistency (a 2nd view of the unlabeled batch)",
               f"{CNN_BEFORE} --consistency-weight 10"),
              ("generator width 32", CNN_BEFORE.replace("--g-width 64", "--g-width 32")),
              ("generator width 16", w16), ("width 16, small batches (tried: lost its accuracy per step)", small),
              ("the recipe (bench/accuracy.py SSGAN_ARGS)", SSGAN_ARGS)]
    rt = engine.Runtime(device=cpu, channels_last=True)  # what train_ssgan.py runs
    classifier = SmallCNN(NUM_CLASSES)
    return [Ours(name, flags, classifier, image_size, rt) for name, flags in levers]


def step_table(arch: str, contenders: list[Ours]) -> tuple[list[list[str]], list[dict]]:
    """The columns of BENCHMARKS.md's table for `arch`; rates relative to the first contender."""
    first = contenders[0]
    first_step = statistics.median(first.times)
    cells = [["contender", "labeled + unlabeled per step", "step", "steps/s (= unlabeled images/s) vs article",
              "images/s incl. labeled vs article"] if arch == "resnet18" else
             ["step", "labeled + unlabeled + generated", "generator width", "step", "steps/s", "vs before"]]
    rows = []
    for c in contenders:
        step, w = statistics.median(c.times), c.a.consistency_weight
        images = (c.labeled + c.batch) * first_step / ((first.labeled + first.batch) * step)
        rows.append({"contender": c.name, "flags": c.flags, "labeled": c.labeled, "unlabeled": c.batch,
                     "generated": c.batch, "g_width": c.a.g_width, "consistency": bool(w), "step_s": step,
                     "steps_per_s": 1 / step, "steps_vs_first": first_step / step, "images_vs_first": images,
                     "runs_step_s": c.times})
        cells.append([c.name, f"{c.labeled} + {c.batch}", f"{step:.2f} s", f"{first_step / step:.2f}",
                      f"{images:.2f}"] if arch == "resnet18" else
                     [c.name, f"{c.labeled} + {c.batch}{f' (+ {c.batch})' if w else ''} + {c.batch}",
                      str(c.a.g_width), f"{1000 * step:.0f} ms", f"{1 / step:.2f}", f"{first_step / step:.2f}"])
    return cells, rows


class MnistStep:
    """The MNIST preset's step (bench/accuracy.py --preset mnist: 100 labeled + 100 unlabeled + 100
    generated digits, feature matching against a second batch and new fakes) at one of three
    depths: "bare", the two networks' forward and backward and the Adam updates written out on
    tensors already in memory; "step", train_ssgan.ssgan_step on the same tensors; "loop", what
    train_ssgan.py does per step: the batches drawn from 58,900 digits held as uint8, ssgan_step
    and the weight average."""

    def __init__(self, name: str, depth: str):
        import torch
        import engine
        import train_ssgan
        from models import MLPClassifier, MLPGenerator
        self.name, self.depth, self.times = name, depth, []
        torch.manual_seed(0)
        self.C, self.G = MLPClassifier(10, 28, data_init=False), MLPGenerator(28, bn_scale=True)
        self.opt_d = torch.optim.Adam(self.C.parameters(), lr=3e-3, betas=BETAS)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=3e-3, betas=BETAS)
        self.rt = engine.Runtime(device=torch.device("cpu"))
        self.d_passes, self.scaler = train_ssgan.DiscriminatorPasses(self.C), self.rt.grad_scaler()
        self.average = engine.WeightAverage(self.C, 0.999)
        g = torch.Generator().manual_seed(0)
        self.digits = torch.randint(0, 256, (58_900, 1, 28, 28), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, 10, (100,), generator=g)
        self.t = 0

    def batches(self):
        """Labeled, unlabeled, second unlabeled batch, and the two noise batches of one step."""
        import torch
        from dali_loaders import from_uint8
        if self.depth == "loop":  # drawn from memory as InMemoryLoader does: index, then scale
            order = torch.randperm(len(self.digits))
            pick = lambda i: from_uint8(self.digits[order[100 * i:100 * (i + 1)]])  # noqa: E731
            x_lab, x_unl, fm_real = from_uint8(self.digits[:100]), pick(0), pick(1)
        else:
            if not hasattr(self, "fixed"):
                self.fixed = [from_uint8(self.digits[100 * i:100 * (i + 1)]) for i in range(3)]
            x_lab, x_unl, fm_real = self.fixed
        return x_lab, x_unl, fm_real, torch.randn(100, Z_DIM), torch.randn(100, Z_DIM)

    def step(self) -> None:
        import losses
        import train_ssgan
        x_lab, x_unl, fm_real, z, z_g = self.batches()
        if self.depth == "bare":
            C, G = self.C, self.G
            fake = G(z)
            logits, features = C(torch_cat(x_lab, x_unl), return_features=True)
            loss = (losses.supervised_loss(logits[:100], self.labels) + losses.unlabeled_loss(logits[100:])
                    + losses.fake_loss(C(fake.detach())))
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
            trained = [p for p in C.parameters() if p.requires_grad]
            for p in trained:
                p.requires_grad_(False)
            with no_grad():
                target = C.features(fm_real)
            loss_g = losses.feature_matching_loss(target, C.features(G(z_g)))
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            for p in trained:
                p.requires_grad_(True)
            return
        train_ssgan.ssgan_step(self.d_passes, self.C, self.G, self.opt_d, self.opt_g, self.scaler, x_lab,
                               self.labels, x_unl, z, "feature-matching", self.rt, fm_real=fm_real, z_g=z_g)
        if self.depth == "loop":
            self.t += 1
            self.average.update(self.t)


def torch_cat(*tensors):
    import torch
    return torch.cat(tensors)


def no_grad():
    import torch
    return torch.no_grad()


def run_mlp_step(quick: bool) -> tuple[str, list[list[str]], list[dict]]:
    """Each depth of MnistStep at 1 and 2 threads, interleaved; ratios to the bare arithmetic at the
    same thread count."""
    import torch
    warmup, rounds, steps = (0, 2, 2) if quick else (2, 5, 20)
    cells = [["threads", "contender", "step", "steps/s", "vs the bare arithmetic"]]
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        contenders = [MnistStep("the networks' forward and backward alone (bare)", "bare"),
                      MnistStep("train_ssgan.ssgan_step", "step"),
                      MnistStep("+ batches from memory and the weight average (train_ssgan.py)", "loop")]

        def measure(c, rnd):
            t = time.perf_counter()
            for _ in range(steps):
                c.step()
            return (time.perf_counter() - t) / steps
        interleave(contenders, warmup, rounds, measure)
        bare = statistics.median(contenders[0].times)
        for c in contenders:
            step = statistics.median(c.times)
            rows.append({"threads": threads, "contender": c.name, "depth": c.depth, "step_s": step,
                         "steps_per_s": 1 / step, "vs_bare": bare / step, "runs_step_s": c.times})
            cells.append([str(threads), c.name, f"{1000 * step:.1f} ms", f"{1 / step:.2f}", f"{bare / step:.2f}"])
    return (f"MNIST SSGAN step (Salimans et al.'s MLPs, 100 + 100 + 100 digits, fresh feature-matching "
            f"target), {rounds} rounds of {steps} steps"), cells, rows


def run_step(arch: str, quick: bool) -> tuple[str, list[list[str]], list[dict]]:
    if arch == "mlp":
        return run_mlp_step(quick)
    size = 32 if arch == "cnn" or quick else 64
    warmup, rounds, steps = (0, 2, 1) if quick else (2, 5, 3 if arch == "cnn" else 1)
    if arch == "resnet18":
        check_same_losses(size)
        print("check passed: same first-step losses and generated images as the article's step", flush=True)
    contenders = step_contenders(arch, size)
    inputs = make_inputs(2, 100, 64, size, seed=1)

    def measure(c, rnd):
        t = time.perf_counter()
        for i in range(steps):
            c.step(*inputs[(rnd + i) % len(inputs)])
        return (time.perf_counter() - t) / steps
    interleave(contenders, warmup, rounds, measure)
    cells, rows = step_table(arch, contenders)
    model = "small CNN" if arch == "cnn" else "ResNet18 + DCGAN generator"
    return f"SSGAN step, {model}, {size} px, {rounds} rounds of {steps} step(s), random tensors", cells, rows


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    loader = args.bench == "loader"
    if loader and not (args.data_src and Path(args.data_src).exists()):
        error = f"{args.data_src}: no such file or folder" if args.data_src else "PATH is required for loader"
        print(f"throughput.py: error: --data-src {error}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    import torch
    from evaluate import markdown_table
    if args.threads or loader:
        torch.set_num_threads(args.threads or 1)
    info = machine_info(torch.device("cpu"))
    title, cells, rows = (run_loader(Path(args.data_src), args.threads or 1, args.quick) if loader
                          else run_step(args.arch, args.quick))
    print(f"\n## {title}, CPU\n\n{header_line(info)}\n\n{markdown_table(cells)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"benchmark": f"throughput.py {args.bench}", "machine": info,
                                               "args": vars(args), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

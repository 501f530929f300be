"""Time of one SSGAN training step on the CPU, on random tensors (no data loading): contenders
interleaved in rounds whose order rotates, medians of 5 rounds after 2 warm-up rounds.

    # BENCHMARKS.md "ResNet18, the article's step" (64 px, 1 step per round)
    python bench/train_throughput.py --threads 1 --json bench/results/train_cpu.json
    # BENCHMARKS.md "small CNN, 32 px, lever by lever" (3 steps per round)
    python bench/train_throughput.py --arch cnn --threads 2 --json bench/results/train_cnn_levers.json
    # smoke run: 32 px, 2 rounds of 1 step, no warm-up
    python bench/train_throughput.py --quick --threads 1

resnet18: the step written the way the article writes it (fp32, NCHW, three classifier passes for
D with the full labeled set of 100, a G pass that also computes the classifier's gradients,
BatchNorm statistics updated by every pass, an explicit (K+1)-th logit) against
train_ssgan.ssgan_step at train_ssgan.py's defaults (64 + 64 images), NCHW and channels_last, same
initial weights. Before timing, check_same_losses asserts equal losses and generated images on the
same inputs with BatchNorm in eval mode. cnn: each row is ssgan_step with the train_ssgan.py flags
it names (channels_last, as train_ssgan.py runs), from the same small-CNN weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench_machine import header_line, machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NUM_CLASSES, Z_DIM, BETAS = 2, 100, (0.5, 0.999)  # BETAS: train_ssgan.py's --beta1 default
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5
# The step the CPU recipe replaced (its flags of train_ssgan.py besides --arch cnn).
CNN_BEFORE = "--g-width 64 --labeled-batch-size 100 --batch-size 64 --g-loss feature-matching --lr 1e-3 --lr-g 3e-4"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("resnet18", "cnn"), default="resnet18",
                   help="resnet18: ours vs the article's step; cnn: the CPU recipe's step, lever by lever")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, 2 rounds of 1 step")
    return p


def step_flags(flags: str) -> argparse.Namespace:
    """The train_ssgan.py flags a step depends on, at train_ssgan.py's defaults; others ignored."""
    p = argparse.ArgumentParser(add_help=False)
    for flag, kind, default in (("--batch-size", int, 64), ("--labeled-batch-size", int, None),
                                ("--lr", float, 2e-3), ("--lr-g", float, None), ("--g-width", int, 64),
                                ("--g-loss", str, "article"), ("--consistency-weight", float, 0.0)):
        p.add_argument(flag, type=kind, default=default)
    return p.parse_known_args(shlex.split(flags))[0]


def article_unlabeled_loss(logits):
    """-0.5 * mean(log(1 - p_fake)) with an explicit (K+1)-th logit fixed at 0."""
    import torch
    full = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1).log_softmax(dim=1)
    return -0.5 * full[:, :-1].logsumexp(dim=1).mean()


def article_fake_loss(logits):
    """-0.5 * mean(log p_fake) with an explicit (K+1)-th logit fixed at 0."""
    import torch
    full = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1).log_softmax(dim=1)
    return -0.5 * full[:, -1].mean()


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
        self.step_times: list[float] = []

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

    def __init__(self, name: str, classifier, image_size: int, labeled: int = 100, batch: int = 64):
        import engine
        import torch
        super().__init__(name, f"--labeled-batch-size {labeled} --batch-size {batch}", classifier,
                         image_size, engine.Runtime(device=torch.device("cpu")))

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
    """Raises AssertionError unless ours and the article's step give the same generated images and
    first-step losses from the same weights and inputs, BatchNorm in eval mode (in train mode the
    statistics of a concatenated batch legitimately differ)."""
    import torch
    import engine
    from models import Classifier
    from torch import nn
    torch.manual_seed(0)
    classifier = Classifier(NUM_CLASSES)
    # Running statistics from one real-looking batch (fresh ones, mean 0 / var 1, would make eval
    # mode meaningless); both contenders then copy these exact weights.
    bns = [m for m in classifier.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0
        classifier.train()(torch.rand(32, 3, image_size, image_size) * 2 - 1)
        for m in bns:
            m.momentum = 0.1
    ours = Ours("ours", "--labeled-batch-size 16 --batch-size 16", classifier, image_size,
                engine.Runtime(device=torch.device("cpu")))
    ref = Article("article", classifier, image_size, labeled=16, batch=16)
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


def time_rounds(contenders: list, inputs: list, warmup: int, repeats: int, steps: int) -> None:
    """`warmup` + `repeats` rounds of `steps` steps of every contender, in an order rotated from round
    to round; each timed round appends the mean step time to step_times."""
    for rnd in range(warmup + repeats):
        k = rnd % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            t = time.perf_counter()
            for i in range(steps):
                stats = c.step(*inputs[(rnd + i) % len(inputs)])
            if not all(abs(v) < float("inf") for v in stats.values()):
                print(f"warning: {c.name}: non-finite loss {stats}", file=sys.stderr)
            if rnd >= warmup:
                c.step_times.append((time.perf_counter() - t) / steps)


def contenders_for(arch: str, image_size: int) -> list[Ours]:
    """resnet18: the article's step, then ours NCHW and channels_last; cnn: the levers."""
    import torch
    import engine
    from models import Classifier, SmallCNN
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    if arch == "resnet18":
        classifier = Classifier(NUM_CLASSES)
        return [Article("article's step", classifier, image_size),
                Ours("ours, NCHW", "", classifier, image_size, engine.Runtime(device=cpu)),
                Ours("ours, channels_last (the default)", "", classifier, image_size,
                     engine.Runtime(device=cpu, channels_last=True))]
    from accuracy import SSGAN_ARGS
    w16 = CNN_BEFORE.replace("--g-width 64", "--g-width 16")
    small = w16.replace("--labeled-batch-size 100", "--labeled-batch-size 16").replace("--batch-size 64",
                                                                                       "--batch-size 32")
    levers = [("before", CNN_BEFORE),
              ("before + consistency (a 2nd view of the unlabeled batch)", f"{CNN_BEFORE} --consistency-weight 10"),
              ("generator width 32", CNN_BEFORE.replace("--g-width 64", "--g-width 32")),
              ("generator width 16", w16), ("width 16, small batches (tried: lost its accuracy per step)", small),
              ("the recipe (bench/accuracy.py SSGAN_ARGS)", SSGAN_ARGS)]
    rt = engine.Runtime(device=cpu, channels_last=True)  # what train_ssgan.py runs
    classifier = SmallCNN(NUM_CLASSES)
    return [Ours(name, flags, classifier, image_size, rt) for name, flags in levers]


def summarise(contenders: list[Ours]) -> list[dict]:
    """Median step time of each contender, and its rates relative to the first contender's."""
    first, rows = contenders[0], []
    first_step = statistics.median(first.step_times)
    for c in contenders:
        step = statistics.median(c.step_times)
        rows.append({"contender": c.name, "flags": c.flags, "labeled": c.labeled, "unlabeled": c.batch,
                     "generated": c.batch, "g_width": c.a.g_width, "consistency": bool(c.a.consistency_weight),
                     "step_s": step, "steps_per_s": 1 / step, "steps_vs_first": first_step / step,
                     "images_vs_first": (c.labeled + c.batch) * first_step / ((first.labeled + first.batch) * step),
                     "runs_step_s": c.step_times})
    return rows


def table(arch: str, rows: list[dict]) -> list[list[str]]:
    """The columns of BENCHMARKS.md's table for `arch`."""
    if arch == "resnet18":
        return [["contender", "labeled + unlabeled per step", "step", "steps/s (= unlabeled images/s) vs article",
                 "images/s incl. labeled vs article"]] + [
            [r["contender"], f"{r['labeled']} + {r['unlabeled']}", f"{r['step_s']:.2f} s",
             f"{r['steps_vs_first']:.2f}", f"{r['images_vs_first']:.2f}"] for r in rows]
    return [["step", "labeled + unlabeled + generated", "generator width", "step", "steps/s", "vs before"]] + [
        [r["contender"], f"{r['labeled']} + {r['unlabeled']}{' (+ %d)' % r['unlabeled'] if r['consistency'] else ''}"
         f" + {r['generated']}", str(r["g_width"]), f"{1000 * r['step_s']:.0f} ms", f"{r['steps_per_s']:.2f}",
         f"{r['steps_vs_first']:.2f}"] for r in rows]


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch
    from evaluate import markdown_table
    if args.threads:
        torch.set_num_threads(args.threads)
    cnn = args.arch == "cnn"
    size = 32 if cnn or args.quick else 64
    rounds = (0, 2, 1) if args.quick else (2, 5, 3 if cnn else 1)  # warm-up, timed rounds, steps
    info, t0 = machine_info(torch.device("cpu")), time.perf_counter()
    if not cnn:
        check_same_losses(size)
        print("check passed: same first-step losses and generated images as the article's step", flush=True)
    contenders = contenders_for(args.arch, size)
    time_rounds(contenders, make_inputs(2, 100, 64, size, seed=1), *rounds)
    rows = summarise(contenders)
    print(f"\n## SSGAN step, {'small CNN' if cnn else 'ResNet18 + DCGAN generator'}, {size} px, CPU\n\n"
          f"{header_line(info)}\n\n{markdown_table(table(args.arch, rows))}\n\nMedians of {rounds[1]} "
          f"rounds of {rounds[2]} step(s) after {rounds[0]} warm-up round(s) ({time.perf_counter() - t0:.0f} s).")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"benchmark": f"train_throughput --arch {args.arch}", "machine": info,
                                               "args": vars(args), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

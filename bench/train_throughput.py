"""Time of one SSGAN training step on the CPU, on random tensors (no data loading), contenders
interleaved in the same rounds, medians.

    # smoke run: the ResNet18 comparison at 32 px, 1 warm-up + 3 rounds of 1 step
    python bench/train_throughput.py --quick --threads 1
    # BENCHMARKS.md "ResNet18, the article's step": train_ssgan.ssgan_step against the article's step
    python bench/train_throughput.py --threads 1 --json bench/results/train_cpu.json
    # BENCHMARKS.md "small CNN, 32 px, lever by lever": the CPU recipe's step against the step it replaced
    python bench/train_throughput.py --arch cnn --threads 2 --json bench/results/train_cnn_levers.json

--arch resnet18 (64 px): the step written the way the article writes it (fp32, NCHW, three
classifier passes for the discriminator loss with the full labeled set of 100, a generator pass
that also computes the classifier's gradients, BatchNorm statistics updated by every pass, losses
written with an explicit (K+1)-th logit) against train_ssgan.ssgan_step with train_ssgan.py's
defaults (64 labeled + 64 unlabeled, one DiscriminatorPasses pass over real images, fakes under
frozen_bn_stats), NCHW and channels_last. Same initial weights, Adam lr 2e-3, betas 0.5/0.999.
Before timing, check_same_losses asserts that both compute the same labeled, unlabeled and fake
losses and generated images on the same inputs with BatchNorm in eval mode (rtol 1e-4); in train
mode the statistics of a concatenated batch legitimately differ (printed, not asserted).

--arch cnn (32 px): every row is train_ssgan.ssgan_step with the train_ssgan.py flags it names
(channels_last, as train_ssgan.py runs), from the same small-CNN weights, 3 steps per round; it
also times one validation pass over 1,000 images.
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
NUM_CLASSES, Z_DIM = 2, 100
BETAS = (0.5, 0.999)  # train_ssgan.py's --beta1 default
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5
# The step the CPU recipe replaced (its flags of train_ssgan.py besides --arch cnn).
CNN_BEFORE = "--g-width 64 --labeled-batch-size 100 --batch-size 64 --g-loss feature-matching --lr 1e-3 --lr-g 3e-4"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("resnet18", "cnn"), default="resnet18",
                   help="resnet18 (default): ours vs the article's step at 64 px; cnn: the CPU "
                        "recipe's step at 32 px vs the step it replaced, lever by lever")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per contender per round (default: 1 for resnet18, 3 for cnn)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 32 px, 1 warm-up step, 3 rounds of 1 step")
    return p


def step_flags(flags: str) -> argparse.Namespace:
    """The train_ssgan.py flags a step depends on, at train_ssgan.py's defaults; others ignored."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--labeled-batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-g", type=float, default=None)
    p.add_argument("--g-width", type=int, default=64)
    p.add_argument("--g-loss", default="article")
    p.add_argument("--consistency-weight", type=float, default=0.0)
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
        self.name, self.flags, self.rt, a = name, flags, rt, step_flags(flags)
        self.labeled, self.batch, self.g_width, self.a = a.labeled_batch_size or a.batch_size, a.batch_size, a.g_width, a
        torch.manual_seed(1)  # every contender's generator of one width starts from the same weights
        self.netG = rt.prepare_model(Generator(image_size, z_dim=Z_DIM, base_channels=a.g_width)).train()
        self.classifier = rt.prepare_model(copy.deepcopy(classifier)).train()
        self.opt_d = torch.optim.Adam(self.classifier.parameters(), lr=a.lr, betas=BETAS)
        self.opt_g = torch.optim.Adam(self.netG.parameters(), lr=a.lr_g or a.lr, betas=BETAS)
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
        C, b = self.classifier, self.batch
        x_lab, y_lab, x_unl, z = x_lab[:self.labeled], y_lab[:self.labeled], x_unl[:b], z[:b]
        fake = self.netG(z)
        loss_lab = F.cross_entropy(C(x_lab), y_lab)
        loss_unl, loss_fake = article_unlabeled_loss(C(x_unl)), article_fake_loss(C(fake.detach()))
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


def check_loss_functions() -> None:
    """losses.py == the article's explicit (K+1)-logit formulas, on identical logits."""
    import torch
    import losses
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 10.0, 50.0):  # large logits exercise the log-sum-exp forms
        logits = torch.randn(257, 3, generator=g, dtype=torch.float64) * scale
        pairs = {"unlabeled": (losses.unlabeled_loss(logits), article_unlabeled_loss(logits)),
                 "fake": (losses.fake_loss(logits), article_fake_loss(logits)),
                 "generator": (losses.generator_loss_article(logits), article_unlabeled_loss(logits))}
        for name, (ours, ref) in pairs.items():
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{name} loss, logit scale {scale}: {m}")


def first_step_losses(image_size: int, eval_bn: bool) -> tuple[dict, dict, float]:
    """The first step's losses of ours and the article's, same weights and inputs, and the largest
    difference between their generated images."""
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
    flags = "--labeled-batch-size 16 --batch-size 16"
    ours = Ours("ours", flags, classifier, image_size, engine.Runtime(device=torch.device("cpu")))
    ref = Article("article", classifier, image_size, labeled=16, batch=16)
    if eval_bn:
        ours.classifier.eval()
        ref.classifier.eval()
    inputs = make_inputs(1, 16, 16, image_size, seed=7)[0]
    with torch.no_grad():
        fake_gap = (ours.netG(inputs[-1]) - ref.netG(inputs[-1])).abs().max().item()
    return ours.step(*inputs), ref.step(*inputs), fake_gap


def check_same_losses(image_size: int) -> dict:
    """Raises AssertionError unless ours and the article's step agree where the maths is the same
    (loss functions; first step with BatchNorm in eval mode). Returns the train-mode relative gaps."""
    check_loss_functions()
    ours, ref, fake_gap = first_step_losses(image_size, eval_bn=True)
    if fake_gap > CHECK_ATOL:  # images in [-1, 1]; only summation order may differ
        raise AssertionError(f"generated images differ by {fake_gap:.3g} on the same noise")
    keys = ("loss_labeled", "loss_unlabeled", "loss_fake")
    for key in keys:
        if abs(ours[key] - ref[key]) > CHECK_ATOL + CHECK_RTOL * abs(ref[key]):
            raise AssertionError(f"{key}: ours {ours[key]!r} vs the article's {ref[key]!r} "
                                 "(BN in eval mode, same weights and inputs)")
    ours, ref, _ = first_step_losses(image_size, eval_bn=False)
    return {key: abs(ours[key] - ref[key]) / max(abs(ref[key]), 1e-12) for key in keys}


def time_rounds(contenders: list, inputs: list, warmup: int, repeats: int, steps: int) -> None:
    """`warmup` untimed steps each, then `repeats` rounds timing `steps` steps of every contender
    in an order rotated from round to round; each round appends a mean step time to step_times."""
    def run(c, n_steps: int, offset: int) -> float:
        t = time.perf_counter()
        for i in range(n_steps):
            stats = c.step(*inputs[(offset + i) % len(inputs)])
        if n_steps and not all(abs(v) < float("inf") for v in stats.values()):
            print(f"warning: {c.name}: non-finite loss {stats}", file=sys.stderr)
        return (time.perf_counter() - t) / max(n_steps, 1)

    for c in contenders:
        run(c, warmup, 0)
    for rnd in range(repeats):
        k = rnd % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            c.step_times.append(run(c, steps, rnd))


def validation_seconds(classifier, image_size: int, n: int = 1000) -> float:
    """One pass over n images in eval mode, batches of 64, channels_last; median of 3."""
    import torch
    import engine
    rt = engine.Runtime(device=torch.device("cpu"), channels_last=True)
    model = rt.prepare_model(copy.deepcopy(classifier)).eval()
    images = torch.rand(n, 3, image_size, image_size) * 2 - 1
    times = []
    for _ in range(3):
        t = time.perf_counter()
        with torch.no_grad():
            for batch in images.split(64):
                model(rt.to_device(batch))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def resnet_table(image_size: int, rounds: tuple[int, int, int]) -> tuple[list[list[str]], list[dict], dict]:
    import torch
    import engine
    from models import Classifier
    gaps = check_same_losses(image_size)
    print("check passed: same losses and generated images as the article's step (BN in eval mode); "
          "train-mode relative gaps " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()), flush=True)
    torch.manual_seed(0)
    classifier, cpu = Classifier(NUM_CLASSES), torch.device("cpu")
    contenders = [Article("article's step", classifier, image_size),
                  Ours("ours, NCHW", "", classifier, image_size, engine.Runtime(device=cpu)),
                  Ours("ours, channels_last (the default)", "", classifier, image_size,
                       engine.Runtime(device=cpu, channels_last=True))]
    time_rounds(contenders, make_inputs(2, 100, 64, image_size, seed=1), *rounds)
    ref = contenders[0]
    ref_step = statistics.median(ref.step_times)
    table = [["contender", "labeled + unlabeled per step", "step", "steps/s (= unlabeled images/s) vs article",
              "images/s incl. labeled vs article"]]
    rows = []
    for c in contenders:
        step = statistics.median(c.step_times)
        images = (c.labeled + c.batch) / step / ((ref.labeled + ref.batch) / ref_step)
        rows.append({"contender": c.name, "labeled": c.labeled, "unlabeled": c.batch, "step_s": step,
                     "steps_vs_article": ref_step / step, "images_vs_article": images,
                     "runs_step_s": c.step_times})
        table.append([c.name, f"{c.labeled} + {c.batch}", f"{step:.2f} s", f"{ref_step / step:.2f}",
                      f"{images:.2f}"])
    return table, rows, {"train_mode_relative_gap": gaps}


def cnn_table(image_size: int, rounds: tuple[int, int, int]) -> tuple[list[list[str]], list[dict], dict]:
    import torch
    import engine
    from accuracy import SSGAN_ARGS
    from models import SmallCNN
    width16 = CNN_BEFORE.replace("--g-width 64", "--g-width 16")
    levers = [("before", CNN_BEFORE),
              ("before + consistency (a 2nd view of the unlabeled batch)", CNN_BEFORE + " --consistency-weight 10"),
              ("generator width 32", CNN_BEFORE.replace("--g-width 64", "--g-width 32")),
              ("generator width 16", width16),
              ("width 16, small batches (tried: lost its accuracy per step)",
               width16.replace("--labeled-batch-size 100", "--labeled-batch-size 16").replace("--batch-size 64", "--batch-size 32")),
              ("the recipe (bench/accuracy.py SSGAN_ARGS)", SSGAN_ARGS)]
    torch.manual_seed(0)
    classifier = SmallCNN(NUM_CLASSES)
    rt = engine.Runtime(device=torch.device("cpu"), channels_last=True)  # what train_ssgan.py runs
    contenders = [Ours(name, flags, classifier, image_size, rt) for name, flags in levers]
    time_rounds(contenders, make_inputs(2, 100, 64, image_size, seed=1), *rounds)
    before = statistics.median(contenders[0].step_times)
    table = [["step", "labeled + unlabeled + generated", "generator width", "step", "steps/s", "vs before"]]
    rows = []
    for c in contenders:
        step, unl = statistics.median(c.step_times), f"{c.batch} (+ {c.batch})" if c.a.consistency_weight else c.batch
        rows.append({"contender": c.name, "flags": c.flags, "labeled": c.labeled, "unlabeled": c.batch,
                     "generated": c.batch, "g_width": c.g_width, "step_s": step, "steps_per_s": 1 / step,
                     "steps_vs_before": before / step, "runs_step_s": c.step_times})
        table.append([c.name, f"{c.labeled} + {unl} + {c.batch}", str(c.g_width), f"{1000 * step:.0f} ms",
                      f"{1 / step:.2f}", f"{before / step:.2f}"])
    return table, rows, {"validation_1000_s": validation_seconds(classifier, image_size)}


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch
    from evaluate import markdown_table
    if args.threads:
        torch.set_num_threads(args.threads)
    cnn = args.arch == "cnn"
    size = 32 if cnn or args.quick else 64
    steps = 1 if args.quick else args.steps or (3 if cnn else 1)
    rounds = (1, 3, 1) if args.quick else (args.warmup, args.repeats, steps)
    info = machine_info(torch.device("cpu"))
    t0 = time.perf_counter()
    table, rows, extra = (cnn_table if cnn else resnet_table)(size, rounds)
    print(f"\n## SSGAN step, {'small CNN' if cnn else 'ResNet18 + DCGAN generator'}, {size} px, CPU\n")
    print(header_line(info) + "\n")
    print(markdown_table(table))
    print(f"\nRandom tensors, no data loading. Medians of {rounds[1]} rounds x {rounds[2]} step(s) after "
          f"{rounds[0]} warm-up step(s), contenders interleaved ({time.perf_counter() - t0:.0f} s).")
    if cnn:
        print(f"Validation of 1,000 images: {extra['validation_1000_s']:.2f} s.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"benchmark": f"train_throughput --arch {args.arch}",
                                               "machine": info, "args": vars(args), **extra, "rows": rows},
                                              indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

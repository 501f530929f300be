"""Training throughput of one SSGAN step: train_ssgan.ssgan_step (ours) against the step written the
way the article writes it, side by side in one process, on random tensors.

    # smoke run (about a minute on 2 cores): 32 px, 1 warm-up + 3 repeats
    .venv/bin/python bench/train_throughput.py --quick
    # the numbers: CPU at 64 px, GPU at 224 px (fp32 and bf16 + channels_last)
    .venv/bin/python bench/train_throughput.py --json bench/results/train_cpu.json
    # isolate the implementation from the labeled batch size: ours with the article's 100 labeled
    .venv/bin/python bench/train_throughput.py --labeled-batch-size 100
    # the CPU recipe's step (small CNN, 32 px) against the step it replaced, lever by lever
    .venv/bin/python bench/train_throughput.py --arch cnn --threads 2 --json bench/results/train_cnn_levers.json

What it measures. Both contenders train a ResNet18 classifier (2 logits: cat, dog, implicit fake
class) and the DCGAN generator of models.py with Adam (lr 2e-3, betas 0.5/0.999), from the SAME
initial weights (deep copies), on random tensors already on the device: no data loading here
(bench/loader_throughput.py measures that).

  article reference  fp32, NCHW. Discriminator: three classifier passes (the --ref-labeled-batch-size
                     labeled images, i.e. the article's full labeled set of 100 every step; the
                     unlabeled batch; the fake batch), one backward, Adam step. Generator: a fresh
                     classifier pass over the fakes whose backward also fills the classifier's
                     gradients (as a naive loop does). BatchNorm running statistics are updated by
                     every pass, fakes included. Losses written independently of losses.py, with an
                     explicit (K+1)-th logit fixed at 0.
  ours               train_ssgan.ssgan_step with DiscriminatorPasses (real labeled + unlabeled in
                     one pass, fakes in a second with frozen_bn_stats), exactly as train_ssgan.train
                     calls it, through an engine.Runtime: fp32 NCHW on CPU; on CUDA both fp32 NCHW and
                     bf16 autocast + channels_last (engine.Runtime(amp_dtype=torch.bfloat16,
                     channels_last=True)). Labeled batch --labeled-batch-size (train_ssgan's default:
                     the batch size, 64).

Both use the unlabeled (and fake) batch --batch-size (64) at --image-size (default 64 px on CPU,
224 px on CUDA). images/s counts the real images a step consumes, labeled + unlabeled, for both
(article 100 + 64 = 164 per step, ours 64 + 64 = 128 by default); steps/s is given too. Protocol:
--warmup untimed steps per contender, then --repeats rounds, each timing --steps steps of every
contender in an order rotated from round to round; the table gives the median step time.

Before timing, main() asserts "identical losses on the same inputs where the maths is unchanged"
(check_same_losses, raising AssertionError):
  1. the loss functions: losses.py against the reference's explicit (K+1)-logit formulas, on the
     same random logits;
  2. the steps: both built from the same weights, fed the same labeled batch, unlabeled batch and
     noise, with the classifier's BatchNorm in eval mode (running statistics, so a sample's logits
     do not depend on which other images share its pass). The labeled cross-entropy, unlabeled and
     fake losses of the first discriminator step must agree (rtol 1e-4), and so must the generated
     images. In train mode they legitimately differ (BN statistics of one real pass over L+U
     images vs separate passes); that difference is printed, not asserted.

Goal: ours >= 1.3x the article reference's images/s on CPU, >= 2x on GPU (best variant).

--arch cnn times a different question: how cheap the CPU recipe's step is (bench/accuracy.py's
SSGAN_ARGS: the small CNN at 32 px) against the step it replaced (generator width 64, 100 labeled +
64 unlabeled + 64 generated images, feature matching, Adam), and what each lever between them
buys. Every row is train_ssgan.ssgan_step with the flags shown, on random tensors, from the same
classifier weights, interleaved in the same rounds; it also times one validation pass (1,000
images). Goal: the recipe >= 4x the steps/s of the step it replaced, and >= 4 steps/s.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from bench_machine import header_line, machine_info

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"image_size": 32, "repeats": 3, "warmup": 1, "steps": 1}
GOAL = {"cpu": 1.3, "cuda": 2.0}
NUM_CLASSES = 2
Z_DIM = 100
LR, BETAS = 2e-3, (0.5, 0.999)  # train_ssgan.py's defaults
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_throughput.py",
        description="Images/s and steps/s of train_ssgan.ssgan_step vs the article's training "
                    "step, on random tensors, after checking both compute the same losses.")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size in pixels (default: 64 on CPU, 224 on CUDA; --quick: 32)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="unlabeled batch, and fake batch, per step, both contenders (default: %(default)s)")
    p.add_argument("--labeled-batch-size", type=int, default=None,
                   help="ours: labeled images per step (default: --batch-size, as train_ssgan.py)")
    p.add_argument("--ref-labeled-batch-size", type=int, default=100,
                   help="article reference: labeled images per step, its whole labeled set "
                        "(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds, the table gives medians (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per contender first (default: 2 on CPU, 5 on CUDA)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed repeat (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): CUDA when available")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on CPU (default: torch's choice)")
    p.add_argument("--arch", choices=("resnet18", "cnn"), default="resnet18",
                   help="resnet18 (default): ours vs the article's step; cnn: the CPU recipe's step "
                        "(32 px) vs the step it replaced, lever by lever")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['image_size']} px, {QUICK['warmup']} warm-up step, "
                        f"{QUICK['repeats']} repeats of {QUICK['steps']} step (overrides "
                        "--image-size, --warmup, --repeats, --steps); on a busy CPU add --threads 1")
    return p


# ----------------------------------------------------------------------------------------------
# The article's step, written the straightforward way

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


def reference_step(classifier, netG, opt_d, opt_g, x_lab, y_lab, x_unl, z) -> dict:
    """fp32, NCHW, three classifier passes for D, a fresh pass (classifier grads included) for G,
    BatchNorm running statistics updated by every pass."""
    import torch
    import torch.nn.functional as F
    fake = netG(z)
    logits_lab = classifier(x_lab)
    logits_unl = classifier(x_unl)
    logits_fake = classifier(fake.detach())
    loss_lab = F.cross_entropy(logits_lab, y_lab)
    loss_unl = article_unlabeled_loss(logits_unl)
    loss_fake = article_fake_loss(logits_fake)
    opt_d.zero_grad()
    (loss_lab + loss_unl + loss_fake).backward()
    opt_d.step()

    logits_gen = classifier(fake)
    loss_g = article_unlabeled_loss(logits_gen)  # the article's G loss: "call the fakes real"
    opt_g.zero_grad()
    loss_g.backward()  # also computes (and wastes) the classifier's gradients
    opt_g.step()
    values = torch.stack([loss_lab.detach(), loss_unl.detach(), loss_fake.detach(),
                          loss_g.detach()]).tolist()  # one device sync, as ssgan_step
    return dict(zip(("loss_labeled", "loss_unlabeled", "loss_fake", "loss_g"), values))


# ----------------------------------------------------------------------------------------------
# Contenders

class Contender:
    """One model pair + optimizers + a step function over precomputed inputs."""

    def __init__(self, name: str, kind: str, classifier, netG, labeled: int, rt=None):
        import torch
        import train_ssgan
        self.name, self.kind, self.labeled, self.rt = name, kind, labeled, rt
        if rt is not None:
            classifier, netG = rt.prepare_model(classifier), rt.prepare_model(netG)
        self.classifier, self.netG = classifier.train(), netG.train()
        self.opt_d = torch.optim.Adam(classifier.parameters(), lr=LR, betas=BETAS)
        self.opt_g = torch.optim.Adam(netG.parameters(), lr=LR, betas=BETAS)
        if kind == "ours":
            self.scaler = rt.grad_scaler()
            self.d_passes = train_ssgan.DiscriminatorPasses(self.classifier)
        self.step_times: list[float] = []

    def step(self, x_lab, y_lab, x_unl, z) -> dict:
        import train_ssgan
        x_lab, y_lab = x_lab[:self.labeled], y_lab[:self.labeled]
        if self.kind == "ours":  # as train_ssgan.train: loader batches go through rt.to_device
            return train_ssgan.ssgan_step(self.d_passes, self.classifier, self.netG, self.opt_d,
                                          self.opt_g, self.scaler, self.rt.to_device(x_lab), y_lab,
                                          self.rt.to_device(x_unl), z, "article", self.rt)
        return reference_step(self.classifier, self.netG, self.opt_d, self.opt_g, x_lab, y_lab,
                              x_unl, z)


def make_models(image_size: int, seed: int):
    import torch
    from models import Classifier, Generator
    torch.manual_seed(seed)
    return Classifier(NUM_CLASSES), Generator(image_size, z_dim=Z_DIM)


def make_inputs(n_sets: int, labeled: int, batch: int, image_size: int, device, seed: int) -> list:
    """Random images in [-1, 1] (the loaders' range), labels and noise, on the device."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    sets = []
    for _ in range(n_sets):
        sets.append(tuple(t.to(device) for t in (
            torch.rand(labeled, 3, image_size, image_size, generator=g) * 2 - 1,
            torch.randint(0, NUM_CLASSES, (labeled,), generator=g),
            torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1,
            torch.randn(batch, Z_DIM, generator=g))))
    return sets


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Same maths, same losses

def check_loss_functions(seed: int = 0) -> None:
    """losses.py == the article's explicit (K+1)-logit formulas, on identical logits."""
    import torch
    import losses
    g = torch.Generator().manual_seed(seed)
    for scale in (1.0, 10.0, 50.0):  # large logits exercise the log-sum-exp forms
        logits = torch.randn(257, 3, generator=g, dtype=torch.float64) * scale
        pairs = {"unlabeled": (losses.unlabeled_loss(logits), article_unlabeled_loss(logits)),
                 "fake": (losses.fake_loss(logits), article_fake_loss(logits)),
                 "generator": (losses.generator_loss_article(logits), article_unlabeled_loss(logits))}
        for name, (ours, ref) in pairs.items():
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{name} loss, logit scale {scale}: {m}")


def _first_step_losses(image_size: int, device, seed: int, eval_bn: bool) -> tuple[dict, dict, float]:
    import torch
    import engine
    from torch import nn
    classifier, netG = make_models(image_size, seed)
    classifier, netG = classifier.to(device), netG.to(device)
    # Running statistics from one real-looking batch (fresh ones, mean 0 / var 1, would make
    # eval mode meaningless), then both contenders start from these exact weights.
    with torch.no_grad():
        bns = [m for m in classifier.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.momentum = 1.0
        classifier.train()(torch.rand(32, 3, image_size, image_size, device=device) * 2 - 1)
        for m in bns:
            m.momentum = 0.1
    rt = engine.Runtime(device)  # fp32, NCHW: the maths of the reference
    ours = Contender("ours", "ours", copy.deepcopy(classifier), copy.deepcopy(netG), 16, rt)
    ref = Contender("ref", "reference", copy.deepcopy(classifier), copy.deepcopy(netG), 16)
    if eval_bn:
        ours.classifier.eval()
        ref.classifier.eval()
    x_lab, y_lab, x_unl, z = make_inputs(1, 16, 16, image_size, device, seed + 7)[0]
    with torch.no_grad():
        fake_gap = (ours.netG(z) - ref.netG(z)).abs().max().item()
    return ours.step(x_lab, y_lab, x_unl, z), ref.step(x_lab, y_lab, x_unl, z), fake_gap


def check_same_losses(image_size: int, device, seed: int = 0) -> dict:
    """Raises AssertionError unless ours and the reference agree where the maths is the same.

    Compared: (1) loss functions on identical logits; (2) the labeled cross-entropy, unlabeled and
    fake losses of the first discriminator step and the generated images, same weights and inputs,
    classifier BatchNorm in eval mode. Returns the train-mode relative differences (informative)."""
    import torch
    check_loss_functions(seed)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # Full fp32 and deterministic cuDNN algorithms: the autotuner may otherwise pick different
    # (non-deterministic) transposed-conv kernels for the two copies of the same generator.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        ours, ref, fake_gap = _first_step_losses(image_size, device, seed, eval_bn=True)
        if fake_gap > CHECK_ATOL:  # images in [-1, 1]; only summation order may differ
            raise AssertionError(f"generated images differ by {fake_gap:.3g} on the same noise")
        for key in ("loss_labeled", "loss_unlabeled", "loss_fake"):
            if abs(ours[key] - ref[key]) > CHECK_ATOL + CHECK_RTOL * abs(ref[key]):
                raise AssertionError(f"{key}: ours {ours[key]!r} vs article reference {ref[key]!r} "
                                     f"(BN in eval mode, same weights and inputs)")
        ours_t, ref_t, _ = _first_step_losses(image_size, device, seed, eval_bn=False)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved
    return {key: abs(ours_t[key] - ref_t[key]) / max(abs(ref_t[key]), 1e-12)
            for key in ("loss_labeled", "loss_unlabeled", "loss_fake")}


# ----------------------------------------------------------------------------------------------
# --arch cnn: the CPU recipe's step, lever by lever

# The step the CPU recipe replaced (its flags of train_ssgan.py besides --arch cnn).
CNN_BEFORE = "--g-width 64 --labeled-batch-size 100 --batch-size 64 --g-loss feature-matching --lr 1e-3 --lr-g 3e-4"
CNN_GOAL = {"ratio": 4.0, "steps_per_s": 4.0}


def cnn_levers() -> list[tuple[str, str]]:
    """(row name, train_ssgan.py flags): the step before, one lever at a time, then the recipe."""
    sys.path.insert(0, str(ROOT / "bench"))
    from accuracy import SSGAN_ARGS
    return [
        ("before: width 64, 100 lab + 64 unl + 64 gen", CNN_BEFORE),
        ("before + consistency (2nd unlabeled view)", CNN_BEFORE + " --consistency-weight 10"),
        ("generator width 32", CNN_BEFORE.replace("--g-width 64", "--g-width 32")),
        ("generator width 16", CNN_BEFORE.replace("--g-width 64", "--g-width 16")),
        ("width 16, 16 lab + 32 unl + 32 gen (lost accuracy per step)",
         CNN_BEFORE.replace("--g-width 64", "--g-width 16").replace("--labeled-batch-size 100", "--labeled-batch-size 16")
         .replace("--batch-size 64", "--batch-size 32")),
        ("after: the recipe (bench/accuracy.py SSGAN_ARGS)", SSGAN_ARGS),
    ]


class CnnContender:
    """train_ssgan.ssgan_step with the models, optimizers and batch sizes that `flags` give."""

    def __init__(self, name: str, flags: str, classifier, image_size: int, device):
        import shlex

        import torch
        import engine
        import train_ssgan
        from models import Generator
        a = train_ssgan.get_args_parser().parse_args(
            ["--image-size", str(image_size), "--arch", "cnn", *shlex.split(flags)])
        self.name, self.flags, self.args = name, flags, a
        self.labeled = min(a.labeled_batch_size or a.batch_size, 100)
        self.batch = a.batch_size
        self.rt = engine.Runtime(device, channels_last=True)  # what train_ssgan.py runs
        torch.manual_seed(1)
        self.classifier = self.rt.prepare_model(copy.deepcopy(classifier)).train()
        self.netG = self.rt.prepare_model(Generator(image_size, z_dim=a.z_dim, base_channels=a.g_width)).train()
        self.opt_d = torch.optim.Adam(self.classifier.parameters(), lr=a.lr, betas=(a.beta1, 0.999))
        self.opt_g = torch.optim.Adam(self.netG.parameters(), lr=a.lr_g or a.lr, betas=(a.beta1, 0.999))
        self.scaler = self.rt.grad_scaler()
        self.d_passes = train_ssgan.DiscriminatorPasses(self.classifier)
        self.step_times: list[float] = []

    def step(self, x_lab, y_lab, x_unl, x_unl2, z) -> dict:
        import train_ssgan
        b, to = self.batch, self.rt.to_device
        view2 = to(x_unl2[:b]) if self.args.consistency_weight else None
        return train_ssgan.ssgan_step(self.d_passes, self.classifier, self.netG, self.opt_d, self.opt_g,
                                      self.scaler, to(x_lab[:self.labeled]), y_lab[:self.labeled],
                                      to(x_unl[:b]), z[:b], self.args.g_loss, self.rt, x_unl2=view2,
                                      consistency_weight=self.args.consistency_weight)


def time_rounds(contenders, inputs, args, device) -> float:
    """Warm-up, then --repeats rounds timing --steps steps of every contender, in an order rotated
    from round to round (each contender's step_times gets one entry per round). Returns seconds."""
    def run(c, n_steps: int, offset: int) -> float:
        if n_steps == 0:
            return 0.0
        sync(device)
        t = time.perf_counter()
        for i in range(n_steps):
            stats = c.step(*inputs[(offset + i) % len(inputs)])
        sync(device)
        elapsed = time.perf_counter() - t
        if not all(map(lambda v: v == v and abs(v) != float("inf"), stats.values())):
            print(f"warning: {c.name}: non-finite loss {stats}", file=sys.stderr)
        return elapsed / n_steps

    t0 = time.perf_counter()
    for c in contenders:
        run(c, args.warmup, 0)
    for rnd in range(args.repeats):
        k = rnd % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            c.step_times.append(run(c, args.steps, rnd))
    return time.perf_counter() - t0


def validation_seconds(classifier, image_size: int, device, n: int = 1000) -> float:
    """One pass over n images in eval mode, as engine.evaluate runs it (batches of 64)."""
    import torch
    import engine
    rt = engine.Runtime(device, channels_last=True)
    model = rt.prepare_model(copy.deepcopy(classifier)).eval()
    images = torch.rand(n, 3, image_size, image_size) * 2 - 1
    times = []
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            for batch in images.split(64):
                model(rt.to_device(batch))
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main_cnn(args, device, info) -> int:
    import torch
    from models import SmallCNN
    args.image_size = args.image_size or 32
    torch.manual_seed(args.seed)
    classifier = SmallCNN(NUM_CLASSES)
    contenders = [CnnContender(name, flags, classifier, args.image_size, device) for name, flags in cnn_levers()]
    g = torch.Generator().manual_seed(args.seed + 1)
    size, n_lab, n_unl = args.image_size, max(c.labeled for c in contenders), max(c.batch for c in contenders)
    inputs = [tuple(t.to(device) for t in (
        torch.rand(n_lab, 3, size, size, generator=g) * 2 - 1, torch.randint(0, NUM_CLASSES, (n_lab,), generator=g),
        torch.rand(n_unl, 3, size, size, generator=g) * 2 - 1, torch.rand(n_unl, 3, size, size, generator=g) * 2 - 1,
        torch.randn(n_unl, Z_DIM, generator=g))) for _ in range(2)]
    bench_s = time_rounds(contenders, inputs, args, device)
    val_s = validation_seconds(classifier, size, device)

    before = statistics.median(contenders[0].step_times)
    rows = []
    for c in contenders:
        step_s = statistics.median(c.step_times)
        rows.append({"contender": c.name, "flags": c.flags, "labeled": c.labeled, "unlabeled": c.batch,
                     "generated": c.batch, "g_width": c.args.g_width,
                     "consistency": bool(c.args.consistency_weight), "step_s": step_s,
                     "steps_per_s": 1 / step_s, "steps_vs_before": before / step_s, "runs_step_s": c.step_times})
    recipe = rows[-1]
    met = recipe["steps_vs_before"] >= CNN_GOAL["ratio"] and recipe["steps_per_s"] >= CNN_GOAL["steps_per_s"]
    print(f"\n## SSGAN step of the CPU recipe, lever by lever: small CNN, {size} px, CPU\n")
    print(header_line(info) + "\n")
    print("| step | labeled + unlabeled + generated | generator width | step ms | steps/s | vs before |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = " + 2nd view" if r["consistency"] else ""
        print(f"| {r['contender']} | {r['labeled']} + {r['unlabeled']}{extra} + {r['generated']} | "
              f"{r['g_width']} | {1000 * r['step_s']:.0f} | {r['steps_per_s']:.2f} | {r['steps_vs_before']:.2f} |")
    print(f"\nMedian of {args.repeats} rounds x {args.steps} step(s) after {args.warmup} warm-up step(s), "
          f"contenders interleaved ({bench_s:.0f} s). Validation of 1,000 images: {val_s:.2f} s "
          f"(every 100 recipe steps: {100 * val_s / (100 * recipe['step_s'] + val_s):.0f} % of the time).")
    print(f"Goal: the recipe >= {CNN_GOAL['ratio']:g}x the steps/s before and >= {CNN_GOAL['steps_per_s']:g} "
          f"steps/s: {recipe['steps_vs_before']:.2f}x, {recipe['steps_per_s']:.2f} steps/s -> "
          f"{'met' if met else 'NOT met'}.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_throughput --arch cnn", "machine": info, "args": vars(args),
                       "validation_1000_s": val_s, "goal": CNN_GOAL, "met": met, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------------------------

def markdown_table(rows: list[dict]) -> str:
    lines = ["| contender | labeled + unlabeled / step | step ms | steps/s | images/s "
             "| images/s vs reference | steps/s vs reference |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['labeled']} + {r['unlabeled']} | "
                     f"{1000 * r['step_s']:.0f} | {r['steps_per_s']:.2f} | {r['images_per_s']:.1f} | "
                     f"{r['images_vs_reference']:.2f} | {r['steps_vs_reference']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))  # engine, models, losses, train_ssgan
    import torch
    import engine

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_throughput.py: error: --device cuda but no CUDA device", file=sys.stderr)
        return 1
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if args.quick:
        args.image_size, args.repeats = QUICK["image_size"], QUICK["repeats"]
        args.warmup, args.steps = QUICK["warmup"], QUICK["steps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch == "cnn":
        args.warmup = 2 if args.warmup is None else args.warmup
        args.steps = args.steps or (3 if not cuda else 10)
        return main_cnn(args, device, machine_info(device))
    args.image_size = args.image_size or (224 if cuda else 64)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.steps = args.steps or (10 if cuda else 1)
    labeled = args.labeled_batch_size or args.batch_size
    if cuda:  # the global flags engine.setup_runtime sets; they apply to every contender
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    info = machine_info(device)

    t0 = time.perf_counter()
    train_mode_gap = check_same_losses(args.image_size, device, args.seed)
    print(f"check passed ({time.perf_counter() - t0:.1f} s): losses.py == the article's (K+1)-logit "
          f"formulas on identical logits; first D step at {args.image_size} px, same weights and "
          f"inputs, BN in eval mode: labeled CE, unlabeled and fake losses equal (rtol {CHECK_RTOL:g}), "
          "same generated images. BN in train mode (legitimately different batch statistics): "
          "relative gaps " + ", ".join(f"{k} {v:.1e}" for k, v in train_mode_gap.items()), flush=True)

    classifier, netG = make_models(args.image_size, args.seed)
    classifier, netG = classifier.to(device), netG.to(device)
    contenders = [Contender("article reference (fp32, NCHW, 3 D passes, G pass with C grads)",
                            "reference", copy.deepcopy(classifier), copy.deepcopy(netG),
                            args.ref_labeled_batch_size)]
    contenders.append(Contender("ours: ssgan_step fp32 NCHW", "ours", copy.deepcopy(classifier),
                                copy.deepcopy(netG), labeled, engine.Runtime(device)))
    # What train_ssgan.py runs by default: channels_last on every device.
    contenders.append(Contender("ours: ssgan_step fp32 channels_last", "ours", copy.deepcopy(classifier),
                                copy.deepcopy(netG), labeled, engine.Runtime(device, channels_last=True)))
    if cuda:
        contenders.append(Contender(
            "ours: ssgan_step bf16 autocast + channels_last", "ours", copy.deepcopy(classifier),
            copy.deepcopy(netG), labeled,
            engine.Runtime(device, amp_dtype=torch.bfloat16, channels_last=True)))
    del classifier, netG
    max_labeled = max(c.labeled for c in contenders)
    inputs = make_inputs(2, max_labeled, args.batch_size, args.image_size, device, args.seed)

    bench_s = time_rounds(contenders, inputs, args, device)

    ref_step = statistics.median(contenders[0].step_times)
    ref_images = (contenders[0].labeled + args.batch_size) / ref_step
    rows = []
    for c in contenders:
        step_s = statistics.median(c.step_times)
        images = (c.labeled + args.batch_size) / step_s
        rows.append({"contender": c.name, "kind": c.kind, "labeled": c.labeled,
                     "unlabeled": args.batch_size, "step_s": step_s, "steps_per_s": 1 / step_s,
                     "images_per_s": images, "images_vs_reference": images / ref_images,
                     "steps_vs_reference": ref_step / step_s, "runs_step_s": c.step_times})
    goal = GOAL["cuda" if cuda else "cpu"]
    best = max(r["images_vs_reference"] for r in rows if r["kind"] == "ours")

    print()
    print(f"## SSGAN training step throughput: {args.image_size} px, unlabeled/fake batch "
          f"{args.batch_size}, ResNet18 + DCGAN generator, {'CUDA' if cuda else 'CPU'}")
    print()
    print(header_line(info))
    print()
    print(markdown_table(rows))
    print()
    print(f"Median of {args.repeats} repeats x {args.steps} step(s) after {args.warmup} warm-up "
          f"step(s) per contender, contenders interleaved ({bench_s:.0f} s). Random tensors on the "
          "device: no data loading. images/s = (labeled + unlabeled real images) per step / step "
          f"time; the article consumes {args.ref_labeled_batch_size} labeled per step, ours "
          f"{labeled} (--labeled-batch-size).")
    print(f"Goal: ours >= {goal:g}x the article reference in images/s on "
          f"{'GPU' if cuda else 'CPU'}: best {best:.2f}x -> {'met' if best >= goal else 'NOT met'}.")
    load = info.get("load_average_at_start")
    if load and load[0] > 0.5:
        print(f"Note: load average {load[0]:.2f} at start: other jobs shared the CPU; treat the "
              "numbers as noisy.")
        if not cuda and info["torch_threads"] >= info["cores"]:
            print(f"Note: {info['torch_threads']} torch threads on {info['cores']} cores shared with "
                  "other jobs: OpenMP threads then wait on descheduled peers and every contender "
                  "slows down several-fold; --threads 1 gives steadier numbers on a busy machine.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_throughput", "machine": info, "args": vars(args),
                       "check": {"passed": True, "rtol": CHECK_RTOL,
                                 "train_mode_relative_gap": train_mode_gap},
                       "goal": goal, "best_images_vs_reference": best, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

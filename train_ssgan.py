"""Semi-supervised GAN: a ResNet18 whose K logits are both the classifier and the discriminator
(implicit fake class, Salimans et al. 2016), trained on 100 labeled + ~15k unlabeled images.

    # one GPU, the article's setting (224 px, Adam 2e-3, all 100 labels + 64 unlabeled + 64 generated
    # images per step, 40 epochs: its 83.2 % run)
    python train_ssgan.py --data data --out runs/ssgan --labeled-batch-size 100 --epochs 40 --amp
    # CPU recipe (README, BENCHMARKS.md): 32 px, small CNN, shifts, a generator of width 16, 32
    # labeled + 64 unlabeled + 64 generated images per step, feature matching, weight average and
    # decay; 24,000 steps
    python train_ssgan.py --data data32 --out runs/ssgan32 --image-size 32 --arch cnn --translate 4 \
        --lr 1e-3 --lr-g 3e-4 --batch-size 64 --labeled-batch-size 32 --g-width 16 \
        --g-loss feature-matching --steps-per-epoch 100 --epochs 240 --weight-average 0.999 --lr-decay-start 0.67
    # MNIST, Salimans et al.'s networks, their step on PyTorch's initialisation (prepare_data.py
    # --grayscale; BENCHMARKS.md "MNIST"); their exact recipe: --mlp-init data --adam-eps 1e-8
    # --adam-eps-form inside --weight-average 0.9999 and a constant --lr
    python train_ssgan.py --data data/mnist --out runs/mnist_ssgan --arch mlp --image-size 28 --no-flip \
        --batch-size 100 --lr 3e-3 --g-loss feature-matching --fm-target fresh --mlp-init default \
        --adam-eps 1e-4 --weight-average 0.999 --steps-per-epoch 600 --epochs 20 --lr-decay-start 0.67
    # ablation: the unlabeled images through consistency alone, without the generator
    python train_ssgan.py ... --no-gan --consistency-weight 10
    # several GPUs on one node (per-GPU batch 64; see --batch-size)
    torchrun --nproc_per_node=4 train_ssgan.py --data data --out runs/ssgan --labeled-batch-size 100 --epochs 40 --amp
    # continue after an interruption
    python train_ssgan.py --data data --out runs/ssgan --epochs 40 --resume

One step (ssgan_step): (1) the classifier sees the labeled and unlabeled real images in one pass
and the generated ones in a second pass and is updated; (2) the generator is updated through the
updated classifier. Outputs in --out: best.pt (best val accuracy), last.pt, metrics.csv,
val_curve.png, samples/epoch_NNN.png (a fixed noise batch, one grid per epoch).
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import dali_loaders
import engine
import losses
from models import classifier_meta, generator_meta, make_classifier, make_generator, upsampling_plan


# Unlabeled images up to this size are held in memory as uint8 (15,000 at 64 px: 180 MB).
IN_MEMORY_MAX_SIZE = 64
# The consistency weight grows linearly from 0 over these steps: early predictions are noise, and
# asking two noisy views to agree at full weight pulls everything to one class.
CONSISTENCY_RAMPUP_STEPS = 500
# An epoch whose mean D(G(z)) stays under this is a collapsed generator (a healthy MNIST run sits at
# 0.05-0.15; the diverged ones fell to 0.012 and then under 0.001, their feature-matching loss 34-190).
COLLAPSED_D_FAKE = 1e-3
BN_PASSES = ("joint", "separate")
ADAM_EPS_FORMS = ("outside", "inside", "inside-uncorrected")
LOSS_COLUMNS = ["loss_labeled", "loss_unlabeled", "loss_fake", "loss_g", "loss_consistency", "loss_entropy"]
TRAIN_COLUMNS = ["loss_labeled", "loss_unlabeled", "loss_fake", "loss_g", "d_real", "d_fake", "train_acc",
                 "loss_consistency", "loss_entropy"]


def get_args_parser():
    p = engine.get_common_args_parser(
        "train_ssgan.py", __doc__.split("\n\n")[0], epochs=100, batch_size=64, lr=2e-3, out="runs/ssgan",
        image_size_type=engine.generator_image_size,
        image_size_help=f"square image size in pixels, one the generator can draw ({engine.SIZES_HINT})")
    p.add_argument("--labeled-batch-size", type=engine.int_at_least(2), default=None,
                   help="labeled images per step (default: --batch-size; capped at the labeled set; the "
                        "article takes all 100: --labeled-batch-size 100)")
    p.add_argument("--lr-g", type=engine.positive_float(), default=None,
                   help="generator learning rate (default: --lr)")
    p.add_argument("--beta1", type=engine.float_in(0.0, 1.0), default=0.5,
                   help="Adam beta1 of both networks (DCGAN)")
    p.add_argument("--adam-eps", type=engine.positive_float(), default=1e-8,
                   help="Adam's epsilon of both networks, placed as --adam-eps-form says. Salimans et "
                        "al.'s Adam adds 1e-8 inside the square root, a floor of 1e-4 under every "
                        "denominator: with the form outside, 1e-4 is its PyTorch form (equal where v is "
                        "0 or much larger than 1e-8, within a factor of sqrt(2) between)")
    p.add_argument("--adam-eps-form", choices=ADAM_EPS_FORMS, default="outside",
                   help="where Adam's epsilon goes: outside: sqrt(v_hat) + eps (PyTorch's Adam); inside: "
                        "sqrt(v_hat + eps) (Salimans et al.'s Theano code); inside-uncorrected: sqrt(v + "
                        "eps) on the uncorrected v with Chainer's step size lr sqrt(1 - b2^t) / (1 - b1^t) "
                        "(the Chainer port of their code), the same as inside once 0.999^t is small, and "
                        "over the first ~1,000 steps a smaller step for weights whose gradients are "
                        "small (a warm-up: sqrt(1 - b2^t) is 0.03 at step 1, 0.3 at step 100)")
    p.add_argument("--g-loss", choices=losses.GENERATOR_LOSSES, default="article",
                   help="generator objective: the article's (fool the implicit discriminator) or "
                        "Salimans' feature matching on the classifier's penultimate features")
    p.add_argument("--fm-target", choices=("reused", "fresh"), default="reused",
                   help="feature matching's two batches: reused: the unlabeled features of the classifier "
                        "step and the images it judged (one pass cheaper); fresh: a second unlabeled batch "
                        "and newly generated images, both through the updated classifier (Salimans et "
                        "al.'s code)")
    p.add_argument("--mlp-init", choices=("data", "default"), default="data",
                   help="--arch mlp only: data: Salimans et al.'s data-dependent initialisation, the hidden "
                        "weight-norm scales then fixed and the generator's BatchNorm without scale; "
                        "default: PyTorch's Linear initialisation and every scale trained")
    p.add_argument("--z-dim", type=engine.int_at_least(1), default=100, help="generator noise size")
    p.add_argument("--g-width", type=engine.int_at_least(1), default=64,
                   help="generator base width: its first map has 8x this many channels, halving per "
                        "doubling of size (64 is DCGAN's; at 32 px, 16 makes the generator ~15x "
                        "cheaper, from about 4x the small CNN's cost per image to a fraction of it)")
    p.add_argument("--steps-per-epoch", type=engine.int_at_least(1), default=None,
                   help="training steps between two validations (default: one pass over unlabeled/); "
                        "a run trains exactly --epochs x this many steps, going over the unlabeled "
                        "images again (in a new order) when an epoch holds more steps than one pass")
    p.add_argument("--consistency-weight", type=engine.float_in(0.0, float("inf")), default=0.0,
                   metavar="W",
                   help="add Pi-model consistency on unlabeled images (two augmented views must get "
                        f"the same class probabilities) with weight W, ramped up over the first "
                        f"{CONSISTENCY_RAMPUP_STEPS} steps; needs --image-size <= {IN_MEMORY_MAX_SIZE}; "
                        "0: the article's losses")
    p.add_argument("--entropy-weight", type=engine.float_in(0.0, float("inf")), default=0.0, metavar="W",
                   help="add W x the entropy of the class probabilities on unlabeled images to the "
                        "classifier's loss (Bad GAN's conditional entropy; they used 0.1 on SVHN); 0: off")
    p.add_argument("--augment-fakes", action="store_true",
                   help="give generated images the real images' augmentation (flips, --translate "
                        "shifts) in the classifier step and, differentiably, in the generator step "
                        "(DiffAugment, Zhao et al. 2020), so the discriminator cannot tell real from "
                        "generated by the augmentation alone")
    p.add_argument("--no-gan", action="store_true",
                   help="ablation: no generator and no real/fake losses, so only the labeled loss and "
                        "the consistency loss train the classifier (shows what the GAN adds)")
    # The article's notebook (SemiSupervisedGAN.ipynb) where it departs from the defaults above
    p.add_argument("--bn-passes", choices=BN_PASSES, default="joint",
                   help="joint: labeled and unlabeled images in one classifier pass (BatchNorm "
                        "normalises them with the mixed batch's statistics), generated ones in a second; "
                        "separate: the article's notebook, unlabeled, generated and labeled images each "
                        "in a pass of their own, in that order (its gradients are the same sum)")
    p.add_argument("--fake-bn-stats", action="store_true",
                   help="generated images move the classifier's BatchNorm running statistics (those "
                        "used at validation and test) as real ones do, in both steps: the article's "
                        "notebook, whose passes over them run in train mode with nothing frozen; "
                        "default: the running statistics describe real images only")
    p.add_argument("--g-stride4", action="store_true",
                   help="the article's generator: one kernel-4 stride-4 transposed convolution from "
                        "S/8 to S/2 px (28 -> 112 at 224) in place of two doublings; default: every "
                        "block doubles (overlapping kernel-4 stride-2 blocks, which draw no 4x4 tiles)")
    return p


class RootEpsAdam(torch.optim.Optimizer):
    """Adam with its epsilon under the square root: lr * m_hat / sqrt(v_hat + eps) (Salimans et al.'s
    nn.adam_updates), or with corrected=False lr * sqrt(1 - b2^t) / (1 - b1^t) * m / sqrt(v + eps)
    (Chainer's Adam, as the Chainer port of their code adds eps). The state is torch.optim.Adam's."""

    def __init__(self, params, lr: float, betas: tuple, eps: float, corrected: bool = True):
        torch.optim.Optimizer.__init__(self, params, dict(lr=lr, betas=betas, eps=eps, corrected=corrected))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"].item()
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                v = state["exp_avg_sq"] / (1 - beta2 ** t) if group["corrected"] else state["exp_avg_sq"]
                size = group["lr"] / (1 - beta1 ** t) * (1 if group["corrected"] else math.sqrt(1 - beta2 ** t))
                p.addcdiv_(state["exp_avg"], (v + group["eps"]).sqrt_(), value=-size)


def make_adam(params, lr: float, betas: tuple, eps: float, eps_form: str) -> torch.optim.Optimizer:
    """--adam-eps-form: PyTorch's Adam, or RootEpsAdam."""
    if eps_form == "outside":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    return RootEpsAdam(params, lr, betas, eps, corrected=eps_form == "inside")


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """BatchNorm keeps normalising with the batch's own statistics but stops updating its running
    statistics. Generated images pass through the classifier this way, so the running statistics
    used at evaluation describe real images only (fakes leaking into them can collapse eval-mode
    predictions to one class)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)  # the forward counted the batch anyway


def fake_bn_stats_context(model: nn.Module, update: bool):
    """How generated images pass the classifier: BN running statistics frozen, or, with update
    (--fake-bn-stats, the article's notebook), moved by them like by real images."""
    return contextlib.nullcontext() if update else frozen_bn_stats(model)


class DiscriminatorPasses(nn.Module):
    """The classifier's passes of the discriminator step as one forward, so DistributedDataParallel
    sees one forward per backward: real images (labeled + unlabeled, BN statistics updated) and
    generated images (BN statistics frozen unless fake_bn_stats; none with --no-gan). separate: the
    article's notebook's three passes instead of two, unlabeled, generated, labeled, so BatchNorm
    normalises each kind of image with its own batch statistics (--bn-passes)."""

    def __init__(self, classifier: nn.Module, separate: bool = False, fake_bn_stats: bool = False):
        super().__init__()
        self.classifier, self.separate, self.fake_bn_stats = classifier, separate, fake_bn_stats

    def forward(self, real: torch.Tensor, fake: torch.Tensor | None, n_lab: int = 0):
        """real: the n_lab labeled images, then the unlabeled ones (and their second views)."""
        if self.separate:
            return self._separate(real, fake, n_lab)
        logits_real, features_real = self.classifier(real, return_features=True)  # [L+U, K], [L+U, F]
        if fake is None:
            return logits_real, features_real, None
        with fake_bn_stats_context(self.classifier, self.fake_bn_stats):
            logits_fake = self.classifier(fake)  # [B, K]
        return logits_real, features_real, logits_fake

    def _separate(self, real: torch.Tensor, fake: torch.Tensor | None, n_lab: int):
        logits_unl, features_unl = self.classifier(real[n_lab:], return_features=True)  # [U, K], [U, F]
        logits_fake = None
        if fake is not None:
            with fake_bn_stats_context(self.classifier, self.fake_bn_stats):
                logits_fake = self.classifier(fake)  # [B, K]
        logits_lab, features_lab = self.classifier(real[:n_lab], return_features=True)  # [L, K], [L, F]
        return torch.cat([logits_lab, logits_unl]), torch.cat([features_lab, features_unl]), logits_fake


def ssgan_step(d_passes: nn.Module, classifier: nn.Module, netG: nn.Module | None, opt_d, opt_g, scaler,
               x_lab: torch.Tensor, y_lab: torch.Tensor, x_unl: torch.Tensor, z: torch.Tensor,
               g_loss: str, rt: engine.Runtime, x_unl2: torch.Tensor | None = None,
               consistency_weight: float = 0.0, entropy_weight: float = 0.0, augment_fake=None,
               fm_real: torch.Tensor | None = None, z_g: torch.Tensor | None = None,
               fake_bn_stats: bool = False) -> dict:
    """One classifier (discriminator) update and one generator update. Returns float losses.

    d_passes: DiscriminatorPasses (maybe DDP-wrapped); classifier: the bare module, used for the
    generator step, whose gradient must reach the generator only. netG None: no GAN (--no-gan).
    x_unl2: a second augmented view of x_unl for the consistency loss (weight already ramped);
    augment_fake: None or a differentiable function both steps see the generated images through.
    fm_real, z_g: --fm-target fresh: the generator step draws new images from z_g and matches the
    features of the unlabeled batch fm_real, both through the updated classifier.
    fake_bn_stats: the generator step's pass moves the BN running statistics (--fake-bn-stats)."""
    n_lab, n_unl, zero = x_lab.shape[0], x_unl.shape[0], torch.zeros((), device=x_lab.device)
    real = torch.cat([x_lab, x_unl] if x_unl2 is None else [x_lab, x_unl, x_unl2])

    # (1) Update the classifier: labeled cross-entropy, unlabeled images called real, generated fake
    with rt.autocast():
        fake = None if netG is None else netG(z) if augment_fake is None else augment_fake(netG(z))  # [B, C, S, S]
        logits_real, features_real, logits_fake = d_passes(real, None if fake is None else fake.detach(), n_lab)
        logits_real = logits_real.float()
        logits_unl = logits_real[n_lab:n_lab + n_unl]
        loss_lab = losses.supervised_loss(logits_real[:n_lab], y_lab)
        loss_unl, loss_fake = zero, zero
        if fake is not None:
            logits_fake = logits_fake.float()
            loss_unl, loss_fake = losses.unlabeled_loss(logits_unl), losses.fake_loss(logits_fake)
        loss_cons = zero if x_unl2 is None else losses.consistency_loss(logits_unl, logits_real[n_lab + n_unl:])
        loss_ent = losses.entropy_loss(logits_unl) if entropy_weight else zero
        loss_d = loss_lab + loss_unl + loss_fake + consistency_weight * loss_cons + entropy_weight * loss_ent
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)

    # (2) Update the generator through the updated classifier. The classifier's weights get no
    # gradient here (cheaper backward), and its BN statistics stay real-only.
    loss_g = d_real = d_fake = zero  # no generator: nothing to train or report
    if fake is not None:
        trained = [p for p in classifier.parameters() if p.requires_grad]  # the MLP keeps some fixed
        for p in trained:
            p.requires_grad_(False)
        with rt.autocast(), fake_bn_stats_context(classifier, fake_bn_stats):
            target = features_real[n_lab:n_lab + n_unl]  # --fm-target reused: one step older than features_gen
            if fm_real is not None:  # fresh: both sides seen by the same, updated classifier
                fake = netG(z_g) if augment_fake is None else augment_fake(netG(z_g))
                with torch.no_grad():
                    target = classifier.features(fm_real)
            logits_gen, features_gen = classifier(fake, return_features=True)
            loss_g = losses.generator_loss(g_loss, logits_gen.float(), target.float(), features_gen.float())
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        for p in trained:
            p.requires_grad_(True)
        with torch.no_grad():
            d_real = losses.d_real_probability(logits_unl).mean()
            d_fake = losses.d_real_probability(logits_fake).mean()
    scaler.update()

    with torch.no_grad():
        stats = torch.stack([
            loss_lab.detach(), loss_unl.detach(), loss_fake.detach(), loss_g.detach(), d_real, d_fake,
            (logits_real[:n_lab].argmax(1) == y_lab).float().mean(), loss_cons.detach(), loss_ent.detach(),
        ]).tolist()  # one device sync per step
    return dict(zip(TRAIN_COLUMNS, stats))


def unlabeled_train_loader(data, rt: engine.Runtime, *, batch_size: int, image_size: int, loader: str,
                           workers: int, seed: int, translate: int, channels: int, flip: bool):
    """Up to IN_MEMORY_MAX_SIZE px decoded once and held in memory (the cores or the GPU then only
    compute); larger images streamed and decoded every epoch."""
    kw = dict(batch_size=batch_size, image_size=image_size, backend=loader, device=rt.device,
              num_threads=workers, seed=seed, shard_id=rt.rank, num_shards=rt.world_size, channels=channels,
              flip=flip)
    folder = engine.data_folder(data, "unlabeled")
    if image_size <= IN_MEMORY_MAX_SIZE:
        unlabeled = dali_loaders.in_memory_loader(folder, labeled=False, translate=translate, **kw)
    else:
        unlabeled = dali_loaders.unlabeled_loader(folder, train=True, **kw)
    if len(unlabeled) < 1:
        raise engine.TrainingError(f"{folder} has fewer images than one batch ({batch_size}"
                                   f"{' per process' if rt.distributed else ''}); lower --batch-size")
    return unlabeled


def make_loaders(data, rt: engine.Runtime, *, batch_size: int, labeled_batch_size: int, image_size: int,
                 loader: str, workers: int, seed: int, translate: int, flip: bool, arch: str):
    """(unlabeled, labeled, val) loaders; the training ones shifted by up to `translate` pixels and
    flipped with `flip`. Grayscale data (prepare_data.py --grayscale) stays one channel."""
    kw = dict(image_size=image_size, loader=loader, workers=workers, channels=engine.data_channels(data, arch))
    unlabeled = unlabeled_train_loader(data, rt, batch_size=batch_size, seed=seed, translate=translate,
                                       flip=flip, **kw)
    labeled = engine.labeled_train_loader(data, rt, batch_size=labeled_batch_size, seed=seed,
                                          translate=translate, flip=flip, **kw)
    return unlabeled, labeled, engine.val_loader(data, rt, batch_size=batch_size, **kw)


def unlabeled_batches(unlabeled, epoch: int, steps_per_epoch: int, first_step: int = 0):
    """The unlabeled batches of this epoch's steps first_step..steps_per_epoch - 1, as (pass key,
    index, images): one pass over unlabeled/ or a part of it, or several passes, each in its own
    order, when an epoch asks for more steps than one pass holds."""
    passes = math.ceil(steps_per_epoch / len(unlabeled))
    for step in range(first_step, steps_per_epoch):
        key, index = (epoch - 1) * passes + step // len(unlabeled) + 1, step % len(unlabeled)
        if index == 0 or step == first_step:
            unlabeled.set_epoch(key)
            batches = iter(unlabeled)
            for _ in range(index):  # a resumed epoch: the pass's batches before it, not trained on
                next(batches)
        yield key, index, next(batches)


def augment_generated(images: torch.Tensor, *, translate: int, flip: bool, generator: torch.Generator):
    """The real images' training augmentation (random flips, shifts of up to `translate` pixels
    with reflect padding) applied to generated images, differentiably: [N, C, S, S] -> same."""
    if flip:
        flipped = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
        images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
    if translate:
        images = dali_loaders.random_translate(images, translate, generator)
    return images


def train_one_epoch(d_passes, netG, optimizers: dict, scaler, labeled, unlabeled, rt: engine.Runtime,
                    budget: engine.Budget, schedule: engine.LrSchedule, average: engine.WeightAverage, *,
                    epoch: int, epochs: int, steps_per_epoch: int, seed: int, z_dim: int, g_loss: str,
                    consistency_weight: float, entropy_weight: float, fake_augmentation: dict | None,
                    fm_fresh: bool = False, fake_bn_stats: bool = False, first_step: int = 0,
                    noise_rng: torch.Tensor | None = None) -> dict:
    """SSGAN steps first_step..steps_per_epoch - 1 of the classifier `average.source` (and its two
    passes d_passes) and the generator netG, learning rates from `schedule`, the weight average
    updated after each; generated images augmented by augment_generated(**fake_augmentation) unless
    it is None; with fm_fresh the generator step gets its own noise and the unlabeled batch half a
    pass away. A resumed epoch (first_step > 0) goes on with the noise generator's state noise_rng.
    Returns the mean of every TRAIN_COLUMNS value over the steps trained, and, if --max-minutes cut
    them short, the random state where they stopped ("rng", taken before validation draws any)."""
    classifier, opt_d, opt_g = average.source, optimizers["classifier"], optimizers.get("generator")
    classifier.train()
    if netG is not None:
        netG.train()
    t0 = time.time()
    # Noise depends on (seed, epoch, rank) only, so a resumed epoch sees the same noise.
    noise = torch.Generator(device=rt.device).manual_seed(dali_loaders.derived_seed(seed, epoch, rt.rank, 1))
    if noise_rng is not None and rt.rank == 0:  # only rank 0's is saved: under torchrun the other
        noise.set_state(noise_rng)               # ranks draw a resumed epoch's noise afresh
    augment_fake = None if fake_augmentation is None else functools.partial(
        augment_generated, generator=noise, **fake_augmentation)  # its draws follow each step's z
    sums = dict.fromkeys(TRAIN_COLUMNS, 0.0)
    steps = images = 0
    stopped_early = False
    with tqdm(total=steps_per_epoch, initial=first_step, desc=f"epoch {epoch}/{epochs}",
              disable=engine.progress_disabled(rt), leave=False, dynamic_ncols=True) as bar:
        batches = unlabeled_batches(unlabeled, epoch, steps_per_epoch, first_step)
        for step, (unlabeled_epoch, index, x_unl) in enumerate(batches, start=first_step):
            if budget.exhausted():
                stopped_early = True
                break
            global_step = (epoch - 1) * steps_per_epoch + step
            x_lab, y_lab = labeled.batch(*divmod(global_step, len(labeled)))
            z = torch.randn(x_unl.shape[0], z_dim, generator=noise, device=rt.device)
            x_unl2, weight = None, 0.0
            if consistency_weight:
                x_unl2 = rt.to_device(unlabeled.batch(unlabeled_epoch, index, view=1))
                weight = consistency_weight * min(1.0, (global_step + 1) / CONSISTENCY_RAMPUP_STEPS)
            fm_real = z_g = None
            if fm_fresh:  # another batch of the same pass: distinct images, each a target once per pass
                fm_real = rt.to_device(unlabeled.batch(unlabeled_epoch, (index + len(unlabeled) // 2) % len(unlabeled)))
                z_g = torch.randn(x_unl.shape[0], z_dim, generator=noise, device=rt.device)
            schedule.apply(global_step)
            stats = ssgan_step(d_passes, classifier, netG, opt_d, opt_g, scaler, rt.to_device(x_lab), y_lab,
                               rt.to_device(x_unl), z, g_loss, rt, x_unl2=x_unl2, consistency_weight=weight,
                               entropy_weight=entropy_weight, augment_fake=augment_fake, fm_real=fm_real, z_g=z_g,
                               fake_bn_stats=fake_bn_stats)
            average.update(global_step + 1)
            engine.check_finite({k: stats[k] for k in LOSS_COLUMNS}, epoch, step + 1)
            for k in TRAIN_COLUMNS:
                sums[k] += stats[k]
            steps += 1
            images += x_lab.shape[0] + x_unl.shape[0]
            bar.update()
            bar.set_postfix(lab=f"{stats['loss_labeled']:.3f}", unl=f"{stats['loss_unlabeled']:.3f}",
                            fake=f"{stats['loss_fake']:.3f}", g=f"{stats['loss_g']:.3f}",
                            cons=f"{stats['loss_consistency']:.4f}", ent=f"{stats['loss_entropy']:.3f}",
                            D_real=f"{stats['d_real']:.2f}", D_fake=f"{stats['d_fake']:.2f}")
    return {"steps": steps, "images": images, "stopped_early": stopped_early, "seconds": time.time() - t0,
            "rng": engine.rng_state(rt.device, noise) if stopped_early else None,
            **{k: v / max(steps, 1) for k, v in sums.items()}}


def save_samples(netG: nn.Module, seed: int, path: Path, rt: engine.Runtime) -> None:
    """The generator's images for 64 noise points fixed by the seed (the same every epoch, so the
    grids show progress), 8 per row."""
    from torchvision.utils import save_image
    fixed_z = torch.randn(64, netG.z_dim, generator=torch.Generator().manual_seed(seed)).to(rt.device)
    path.parent.mkdir(exist_ok=True)
    # Train-mode BN (the generator is never used in eval mode), statistics left untouched.
    with torch.no_grad(), frozen_bn_stats(netG), rt.autocast():
        grid = netG(fixed_z).float()
    save_image(grid * 0.5 + 0.5, path, nrow=8)


def build_models(rt: engine.Runtime, num_classes: int, *, arch: str, pretrained: bool, gan: bool,
                 image_size: int, channels: int, z_dim: int, g_width: int, lrs: dict, adam: dict,
                 weight_average: float, init_images: torch.Tensor | None, dropout: float | None,
                 input_dropout: float | None, mlp_init: str = "data", unit_input: bool = False,
                 g_stride4: bool = False, bn_passes: str = "joint", fake_bn_stats: bool = False):
    """The classifier (also the discriminator; initialised from init_images where its arch asks for
    it) and, with gan, the generator, each with its Adam (adam: make_adam's betas, eps, eps_form).
    Returns nets (name -> (module, rebuild metadata); "classifier" is the weight average when there
    is one, "classifier_trained" the trained weights), optimizers by name, the WeightAverage, and the
    modules the steps call, DDP-wrapped under torchrun: the classifier's passes as one forward
    (DiscriminatorPasses, its bn_passes and fake_bn_stats) and the generator (None without gan).
    Each rank keeps BN statistics of its own shard; they are averaged over ranks before each
    validation."""
    classifier = rt.prepare_model(make_classifier(arch, num_classes, pretrained=pretrained,
                                                  image_size=image_size, channels=channels, dropout=dropout,
                                                  input_dropout=input_dropout, mlp_init=mlp_init,
                                                  unit_input=unit_input))
    engine.init_from_data(classifier, init_images, rt)
    average = engine.WeightAverage(classifier, weight_average)
    nets = engine.classifier_nets(classifier, classifier_meta(classifier), average)
    trained = {"classifier": classifier}
    if gan:
        netG = rt.prepare_model(make_generator(arch, image_size, channels=channels, z_dim=z_dim, g_width=g_width,
                                               mlp_init=mlp_init, stride4=g_stride4))
        nets["generator"] = (netG, generator_meta(netG))
        trained["generator"] = netG
    optimizers = {name: make_adam(module.parameters(), lrs[name], **adam) for name, module in trained.items()}
    generator = engine.wrap_ddp(nets["generator"][0], rt) if gan else None
    d_passes = DiscriminatorPasses(classifier, separate=bn_passes == "separate", fake_bn_stats=fake_bn_stats)
    return nets, optimizers, average, engine.wrap_ddp(d_passes, rt), generator


def check_in_memory_flags(image_size: int, translate: int, consistency_weight: float, arch: str,
                          fm_fresh: bool) -> None:
    """Shifts, second views, a second unlabeled batch and the MLP's data-dependent initialisation take
    images held in memory, up to IN_MEMORY_MAX_SIZE px."""
    if image_size <= IN_MEMORY_MAX_SIZE:
        return
    for needs, flag in ((consistency_weight, "--consistency-weight"), (translate, "--translate"),
                        (arch == "mlp", "--arch mlp"), (fm_fresh, "--fm-target fresh")):
        if needs:
            raise engine.TrainingError(f"{flag} needs --image-size <= {IN_MEMORY_MAX_SIZE} (images held in "
                                       "memory); above that images are streamed and only flipped")


def train(args) -> tuple[dict, dict]:
    """Returns the last epoch's metrics row and the trained modules by name."""
    if args.fm_target == "fresh" and args.g_loss != "feature-matching":
        raise engine.TrainingError("--fm-target fresh is a form of feature matching: add --g-loss feature-matching")
    check_in_memory_flags(args.image_size, args.translate, args.consistency_weight, args.arch, args.fm_target == "fresh")
    if args.g_stride4:  # a usage error before any data is read, not a traceback from the generator
        try:
            upsampling_plan(args.image_size, stride4=True)
        except ValueError as exc:
            raise engine.TrainingError(f"--g-stride4: {exc}") from None
    rt, out = engine.setup_runtime(args.device, args.amp, args.loader), Path(args.out)
    resume_state = engine.prepare_run_folder(out, resume=args.resume, master=rt.master)
    engine.seed_everything(args.seed)

    # Data: unlabeled and labeled images for training (the labeled set cycled by global step), val/
    unlabeled, labeled, val = make_loaders(
        args.data, rt, batch_size=args.batch_size, labeled_batch_size=args.labeled_batch_size or args.batch_size,
        image_size=args.image_size, loader=args.loader, workers=args.workers, seed=args.seed, translate=args.translate,
        flip=args.flip, arch=args.arch)
    classes, lrs, scaler = labeled.classes, {"classifier": args.lr, "generator": args.lr_g or args.lr}, rt.grad_scaler()
    steps_per_epoch = args.steps_per_epoch or len(unlabeled)

    # Models and optimizers; d_passes and generator are what DDP wraps under torchrun
    nets, optimizers, average, d_passes, generator = build_models(
        rt, len(classes), arch=args.arch, pretrained=args.pretrained, gan=not args.no_gan, image_size=args.image_size,
        channels=labeled.images.shape[1], z_dim=args.z_dim, g_width=args.g_width, lrs=lrs,
        adam=dict(betas=(args.beta1, 0.999), eps=args.adam_eps, eps_form=args.adam_eps_form),
        dropout=args.dropout, input_dropout=args.input_dropout, weight_average=args.weight_average, mlp_init=args.mlp_init,
        init_images=getattr(unlabeled, "images", None),  # --arch mlp: 500 unlabeled images
        unit_input=args.unit_input, g_stride4=args.g_stride4, bn_passes=args.bn_passes,
        fake_bn_stats=args.fake_bn_stats)

    # Resume: weights, optimizers, RNG state and metrics.csv as of the last saved step
    resumed = engine.restore(resume_state, nets=nets, optimizers=optimizers, lrs=lrs, scaler=scaler, classes=classes,
                             rt=rt, data=args.data, out=out, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    best_acc, best_epoch = resumed.best_val_acc, resumed.best_epoch
    log = engine.MetricsLog(out / "metrics.csv", TRAIN_COLUMNS,
                            resumed.steps_done(steps_per_epoch) if resume_state else None, rt.master)
    budget = engine.Budget(args.max_minutes, rt)
    schedule = engine.LrSchedule(optimizers, lrs, args.epochs * steps_per_epoch, args.lr_decay_start)

    row = {}
    for epoch in range(resumed.epoch + 1, args.epochs + 1):
        t0 = time.time()
        first_step, noise_rng = (resumed.step, resumed.noise_rng) if epoch == resumed.epoch + 1 else (0, None)
        stats = train_one_epoch(
            d_passes, generator, optimizers, scaler, labeled, unlabeled, rt, budget, schedule, average,
            epoch=epoch, epochs=args.epochs, steps_per_epoch=steps_per_epoch, seed=args.seed, z_dim=args.z_dim,
            g_loss=args.g_loss, consistency_weight=args.consistency_weight, entropy_weight=args.entropy_weight,
            fake_augmentation=dict(translate=args.translate, flip=args.flip) if args.augment_fakes else None,
            fm_fresh=args.fm_target == "fresh", fake_bn_stats=args.fake_bn_stats, first_step=first_step,
            noise_rng=noise_rng)
        if stats["stopped_early"] and stats["steps"] == 0 and epoch > 1:
            engine.stop_on_budget(rt, out, args.max_minutes, epoch, best_acc, best_epoch, during=False)
            break

        # Validate the classifier (its weight average, if any) on val/; best.pt is best by val
        engine.average_buffers(rt, *(module for module, _ in nets.values()))
        metrics = engine.validate(average, val, len(classes), rt)
        improved = metrics["accuracy"] > best_acc
        best_acc, best_epoch = (metrics["accuracy"], epoch) if improved else (best_acc, best_epoch)
        row = engine.epoch_row(epoch, stats, TRAIN_COLUMNS, metrics, best_acc, time.time() - t0)

        if rt.master:  # samples/, metrics.csv, val_curve.png, best.pt if improved, then last.pt
            if generator is not None:
                save_samples(engine.unwrap(generator), args.seed, out / "samples" / f"epoch_{epoch:03d}.png", rt)
            state = engine.checkpoint_state(
                kind="ssgan", epoch=epoch, epoch_steps=first_step + stats["steps"], rng=stats["rng"],
                stopped_early=stats["stopped_early"], best_val_acc=best_acc,
                best_epoch=best_epoch, val=metrics, classes=classes, image_size=args.image_size, nets=nets,
                optimizers=optimizers, scaler=scaler, args=vars(args), device=rt.device)
            engine.save_epoch(out, log, row, state, improved, title="ssgan")
            print(engine.epoch_line(row, args.epochs, TRAIN_COLUMNS, improved, best_epoch), flush=True)
            if generator is not None and stats["steps"] and stats["d_fake"] < COLLAPSED_D_FAKE:
                print(f"warning: epoch {epoch}: the generator has collapsed: mean D(G(z)) {stats['d_fake']:.2g} < "
                      f"{COLLAPSED_D_FAKE} (the classifier rejects every generated image, so the generator gets "
                      "almost no gradient and the unlabeled loss no longer teaches); runs in this state "
                      "rarely recover: see the samples and the loss_g column", file=sys.stderr, flush=True)
        if stats["stopped_early"]:
            engine.stop_on_budget(rt, out, args.max_minutes, epoch, best_acc, best_epoch, during=True)
            break
    return row, {name: module for name, (module, _) in nets.items()}


def main(argv=None) -> int:
    return engine.run_main(train, argv, get_args_parser())


if __name__ == "__main__":
    sys.exit(main())

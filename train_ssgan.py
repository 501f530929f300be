"""Semi-supervised GAN: a ResNet18 whose K logits are both the classifier and the discriminator
(implicit fake class, Salimans et al. 2016), trained on 100 labeled + ~15k unlabeled images.

    # one GPU, the article's setting (224 px, Adam 2e-3, unlabeled batch 64)
    python train_ssgan.py --data data --out runs/ssgan --epochs 40 --amp
    # CPU recipe (README, BENCHMARKS.md): 32 px, small CNN, shifts, a generator of width 16, 16
    # labeled + 32 unlabeled + 32 generated images per step, feature matching; 4,000 steps
    python train_ssgan.py --data data --out runs/ssgan32 --image-size 32 --arch cnn --translate 4 \
        --lr 1e-3 --lr-g 3e-4 --batch-size 32 --labeled-batch-size 16 --g-width 16 \
        --g-loss feature-matching --steps-per-epoch 100 --epochs 40
    # ablation: the unlabeled images through consistency alone, without the generator
    python train_ssgan.py ... --no-gan --consistency-weight 10
    # several GPUs on one node (per-GPU batch 64; see --batch-size)
    torchrun --nproc_per_node=4 train_ssgan.py --data data --out runs/ssgan --epochs 40 --amp
    # continue after an interruption
    python train_ssgan.py --data data --out runs/ssgan --epochs 40 --resume

One step (see ssgan_step): the classifier sees the labeled and unlabeled real images in one pass
and the generated ones in a second pass, then the generator is updated through the updated
classifier. Outputs in --out: best.pt (best val accuracy), last.pt, metrics.csv, val_curve.png,
samples/epoch_NNN.png (a fixed noise batch, one grid per epoch).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import dali_loaders
import engine
import losses
from models import Generator, classifier_meta, generator_meta, make_classifier


# Unlabeled images up to this size are held in memory as uint8 (15,000 at 64 px: 180 MB).
IN_MEMORY_MAX_SIZE = 64
# The consistency weight grows linearly from 0 over these steps: early predictions are noise, and
# asking two noisy views to agree at full weight pulls everything to one class.
CONSISTENCY_RAMPUP_STEPS = 500


def get_args_parser():
    p = engine.get_common_args_parser(
        "train_ssgan.py", __doc__.split("\n\n")[0], epochs=100, batch_size=64, lr=2e-3, out="runs/ssgan",
        image_size_type=engine.generator_image_size,
        image_size_help=f"square image size in pixels, one the generator can draw ({engine.SIZES_HINT})")
    p.add_argument("--labeled-batch-size", type=engine.int_at_least(2), default=None,
                   help="labeled images per step (default: --batch-size; capped at the labeled set)")
    p.add_argument("--lr-g", type=engine.positive_float(), default=None,
                   help="generator learning rate (default: --lr)")
    p.add_argument("--beta1", type=engine.float_in(0.0, 1.0), default=0.5,
                   help="Adam beta1 of both networks (DCGAN)")
    p.add_argument("--g-loss", choices=losses.GENERATOR_LOSSES, default="article",
                   help="generator objective: the article's (fool the implicit discriminator) or "
                        "Salimans' feature matching on the classifier's penultimate features")
    p.add_argument("--z-dim", type=engine.int_at_least(1), default=100, help="generator noise size")
    p.add_argument("--g-width", type=engine.int_at_least(1), default=64,
                   help="generator base width: its first map has 8x this many channels, halving per "
                        "doubling of size (64 is DCGAN's; at 32 px, 16 makes the generator ~15x "
                        "cheaper, from about 4x the small CNN's cost per image to a fraction of it)")
    p.add_argument("--steps-per-epoch", type=engine.int_at_least(1), default=None,
                   help="cap on steps per epoch (default: one pass over unlabeled/); shorter epochs "
                        "validate and checkpoint more often")
    p.add_argument("--consistency-weight", type=engine.float_in(0.0, float("inf")), default=0.0,
                   metavar="W",
                   help="add Pi-model consistency on unlabeled images (two augmented views must get "
                        f"the same class probabilities) with weight W, ramped up over the first "
                        f"{CONSISTENCY_RAMPUP_STEPS} steps; needs --image-size <= 64; 0: the article's losses")
    p.add_argument("--no-gan", action="store_true",
                   help="ablation: no generator and no real/fake losses, so only the labeled loss and "
                        "the consistency loss train the classifier (shows what the GAN adds)")
    p.add_argument("--pretrained", action="store_true",
                   help="start the classifier from torchvision's ImageNet weights (needs the download)")
    return p


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


class DiscriminatorPasses(nn.Module):
    """The classifier's two passes of the discriminator step as one forward, so DistributedDataParallel
    sees one forward per backward: real images (labeled + unlabeled, BN statistics updated) and
    generated images (BN statistics frozen; none with --no-gan)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, real: torch.Tensor, fake: torch.Tensor | None):
        logits_real, features_real = self.classifier(real, return_features=True)  # [L+U, K], [L+U, F]
        if fake is None:
            return logits_real, features_real, None
        with frozen_bn_stats(self.classifier):
            logits_fake = self.classifier(fake)  # [B, K]
        return logits_real, features_real, logits_fake


def ssgan_step(d_passes: nn.Module, classifier: nn.Module, netG: nn.Module | None, opt_d, opt_g, scaler,
               x_lab: torch.Tensor, y_lab: torch.Tensor, x_unl: torch.Tensor, z: torch.Tensor,
               g_loss: str, rt: engine.Runtime, x_unl2: torch.Tensor | None = None,
               consistency_weight: float = 0.0) -> dict:
    """One classifier (discriminator) update and one generator update. Returns float losses.

    d_passes: DiscriminatorPasses (maybe DDP-wrapped); classifier: the bare module, used for the
    generator step, whose gradient must reach the generator only. netG None: no GAN (--no-gan).
    x_unl2: a second augmented view of x_unl for the consistency loss (weight already ramped)."""
    n_lab, n_unl = x_lab.shape[0], x_unl.shape[0]
    real = torch.cat([x_lab, x_unl] if x_unl2 is None else [x_lab, x_unl, x_unl2])
    zero = torch.zeros((), device=x_lab.device)
    with rt.autocast():
        fake = netG(z) if netG is not None else None  # [B, 3, S, S]
        logits_real, features_real, logits_fake = d_passes(real, None if fake is None else fake.detach())
        logits_real = logits_real.float()
        logits_unl = logits_real[n_lab:n_lab + n_unl]
        loss_lab = losses.supervised_loss(logits_real[:n_lab], y_lab)
        loss_unl, loss_fake = zero, zero
        if fake is not None:
            logits_fake = logits_fake.float()
            loss_unl = losses.unlabeled_loss(logits_unl)
            loss_fake = losses.fake_loss(logits_fake)
        loss_cons = zero if x_unl2 is None else losses.consistency_loss(logits_unl, logits_real[n_lab + n_unl:])
        loss_d = loss_lab + loss_unl + loss_fake + consistency_weight * loss_cons
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)

    loss_g = d_real = d_fake = zero  # no generator: nothing to train or report
    if fake is not None:
        # Generator step through the updated classifier. Its weights get no gradient here (cheaper
        # backward), and BN statistics stay real-only.
        classifier.requires_grad_(False)
        with rt.autocast(), frozen_bn_stats(classifier):
            logits_gen, features_gen = classifier(fake, return_features=True)
            # Feature matching compares with the unlabeled batch's features from the classifier
            # pass above (one step older than features_gen): it saves a third pass over real images.
            loss_g = losses.generator_loss(g_loss, logits_gen.float(),
                                           features_real[n_lab:n_lab + n_unl].float(), features_gen.float())
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        classifier.requires_grad_(True)
        with torch.no_grad():
            d_real = losses.d_real_probability(logits_unl).mean()
            d_fake = losses.d_real_probability(logits_fake).mean()
    scaler.update()

    with torch.no_grad():
        stats = torch.stack([
            loss_lab.detach(), loss_unl.detach(), loss_fake.detach(), loss_g.detach(), d_real, d_fake,
            (logits_real[:n_lab].argmax(1) == y_lab).float().mean(), loss_cons.detach(),
        ]).tolist()  # one device sync per step
    return dict(zip(TRAIN_COLUMNS, stats))


TRAIN_COLUMNS = ["loss_labeled", "loss_unlabeled", "loss_fake", "loss_g", "d_real", "d_fake", "train_acc",
                 "loss_consistency"]


def train(args) -> dict:
    if args.consistency_weight and args.image_size > IN_MEMORY_MAX_SIZE:
        raise engine.TrainingError(f"--consistency-weight needs --image-size <= {IN_MEMORY_MAX_SIZE} "
                                   "(two views of unlabeled images held in memory)")
    if args.translate and args.image_size > IN_MEMORY_MAX_SIZE:
        raise engine.TrainingError(f"--translate needs --image-size <= {IN_MEMORY_MAX_SIZE} (images "
                                   "held in memory); above that only flips are drawn")
    rt = engine.setup_runtime(args)
    resume_state = engine.prepare_run_folder(args, rt)
    engine.seed_everything(args.seed)

    loader_kw = dict(batch_size=args.batch_size, image_size=args.image_size, backend=args.loader,
                     device=rt.device, num_threads=args.workers, seed=args.seed, shard_id=rt.rank,
                     num_shards=rt.world_size)
    if args.image_size <= IN_MEMORY_MAX_SIZE:  # decoded once: the cores (or the GPU) only compute
        unlabeled = dali_loaders.in_memory_loader(engine.data_folder(args, "unlabeled"), labeled=False,
                                                  translate=args.translate, **loader_kw)
    else:
        unlabeled = dali_loaders.unlabeled_loader(engine.data_folder(args, "unlabeled"), train=True,
                                                  **loader_kw)
    labeled = engine.labeled_train_loader(args, rt, args.labeled_batch_size or args.batch_size)
    classes = labeled.classes

    classifier = rt.prepare_model(make_classifier(args.arch, len(classes), pretrained=args.pretrained))
    opt_d = torch.optim.Adam(classifier.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    netG = netG_ddp = opt_g = None
    if not args.no_gan:
        netG = rt.prepare_model(Generator(args.image_size, z_dim=args.z_dim, base_channels=args.g_width))
        opt_g = torch.optim.Adam(netG.parameters(), lr=args.lr_g or args.lr, betas=(args.beta1, 0.999))
        netG_ddp = engine.wrap_ddp(netG, rt)
    scaler = rt.grad_scaler()
    # Each rank trains on its own shard with its own BN statistics (no SyncBatchNorm: 64 images per
    # GPU give good batch statistics, and syncing would add a collective to every BN layer); the
    # running statistics are averaged over ranks before each validation (engine.fit).
    d_passes = engine.wrap_ddp(DiscriminatorPasses(classifier), rt)

    steps_per_epoch = len(unlabeled) if args.steps_per_epoch is None else min(args.steps_per_epoch, len(unlabeled))
    if steps_per_epoch < 1:
        raise engine.TrainingError(f"{args.data}/unlabeled has fewer images than one batch "
                                   f"({args.batch_size}); lower --batch-size")
    # Fixed noise for the sample grids: the same 64 points every epoch, so the grids show progress.
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(rt.device)
    samples_dir = Path(args.out) / "samples"

    def train_one_epoch(epoch, budget):
        classifier.train()
        if netG is not None:
            netG.train()
        unlabeled.set_epoch(epoch)
        # Noise depends on (seed, epoch, rank) only, so a resumed epoch sees the same noise.
        noise = torch.Generator(device=rt.device).manual_seed(
            engine.derived_seed(args.seed, epoch, rt.rank, 1))
        sums = dict.fromkeys(TRAIN_COLUMNS, 0.0)
        steps = images = 0
        stopped_early = False
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}", disable=engine.progress_disabled(rt),
                  leave=False, dynamic_ncols=True) as bar:
            for step, x_unl in enumerate(unlabeled):
                if step >= steps_per_epoch:
                    break
                if budget.exhausted():
                    stopped_early = True
                    break
                global_step = (epoch - 1) * steps_per_epoch + step
                x_lab, y_lab = labeled.batch(*divmod(global_step, len(labeled)))
                z = torch.randn(x_unl.shape[0], args.z_dim, generator=noise, device=rt.device)
                x_unl2, weight = None, 0.0
                if args.consistency_weight:
                    x_unl2 = rt.to_device(unlabeled.batch(epoch, step, view=1))
                    weight = args.consistency_weight * min(1.0, (global_step + 1) / CONSISTENCY_RAMPUP_STEPS)
                stats = ssgan_step(d_passes, classifier, netG_ddp, opt_d, opt_g, scaler,
                                   rt.to_device(x_lab), y_lab, rt.to_device(x_unl), z, args.g_loss, rt,
                                   x_unl2=x_unl2, consistency_weight=weight)
                engine.check_finite({k: stats[k] for k in TRAIN_COLUMNS[:4] + ["loss_consistency"]},
                                    epoch, step + 1)
                for k in TRAIN_COLUMNS:
                    sums[k] += stats[k]
                steps += 1
                images += x_lab.shape[0] + x_unl.shape[0]
                bar.update()
                bar.set_postfix(lab=f"{stats['loss_labeled']:.3f}", unl=f"{stats['loss_unlabeled']:.3f}",
                                fake=f"{stats['loss_fake']:.3f}", g=f"{stats['loss_g']:.3f}",
                                cons=f"{stats['loss_consistency']:.4f}",
                                D_real=f"{stats['d_real']:.2f}", D_fake=f"{stats['d_fake']:.2f}")
        return {"steps": steps, "images": images, "stopped_early": stopped_early,
                **{k: v / max(steps, 1) for k, v in sums.items()}}

    def save_samples(epoch):
        from torchvision.utils import save_image
        samples_dir.mkdir(exist_ok=True)
        # Train-mode BN (the generator is never used in eval mode), statistics left untouched.
        with torch.no_grad(), frozen_bn_stats(netG), rt.autocast():
            grid = netG(fixed_z).float()
        save_image(grid * 0.5 + 0.5, samples_dir / f"epoch_{epoch:03d}.png", nrow=8)

    models = {"classifier": (classifier, classifier_meta(classifier))}
    optimizers = {"classifier": opt_d}
    if netG is not None:
        models["generator"] = (netG, generator_meta(netG))
        optimizers["generator"] = opt_g
    return engine.fit(args, rt, kind="ssgan", classes=classes, models=models, optimizers=optimizers,
                      scaler=scaler, train_one_epoch=train_one_epoch, train_columns=TRAIN_COLUMNS,
                      resume_state=resume_state, on_epoch_end=None if netG is None else save_samples)


def main(argv=None) -> int:
    return engine.run_main(train, argv, get_args_parser())


if __name__ == "__main__":
    sys.exit(main())

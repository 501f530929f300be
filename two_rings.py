"""Two noisy concentric rings with a few labels per ring: a labeled-only MLP against the same MLP
trained as a semi-supervised GAN classifier (article generator loss, and feature matching).

    python two_rings.py                      # writes runs/two_rings.png, prints one accuracy per model
    python two_rings.py --show --seed 3
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn

import losses
from prepare_data import HelpFormatter

NUM_CLASSES = 2
MODEL_NAMES = ("labeled-only",) + tuple(f"ssgan-{g_loss}" for g_loss in losses.GENERATOR_LOSSES)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The docstring's examples as written, and every flag's default."""


def get_args_parser():
    parser = argparse.ArgumentParser(prog="two_rings.py", description=__doc__, formatter_class=RawHelpFormatter)
    parser.add_argument("--points-per-ring", type=int, default=1000, help="real points sampled per ring")
    parser.add_argument("--n-labeled", type=int, default=4, help="labeled points per ring (class)")
    parser.add_argument("--radii", type=float, nargs=2, default=(1.0, 2.5),
                        help="inner and outer ring radius")
    parser.add_argument("--noise", type=float, default=0.15,
                        help="std of the gaussian noise added to ring points")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=100, help="unlabeled and generated points per step")
    parser.add_argument("--hidden", type=int, default=64,
                        help="width of the hidden layers (classifier and generator)")
    parser.add_argument("--noise-dim", type=int, default=4, help="dimension of the generator's input noise")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the classifiers")
    parser.add_argument("--g-lr", type=float, default=3e-3, help="Adam learning rate of the generators")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, labels, initialisation and noise")
    parser.add_argument("--out", default="runs/two_rings.png", help="where to write the figure")
    parser.add_argument("--show", action="store_true", help="also open the figure in a window")
    parser.add_argument("--frames", default=None,
                        help="folder for a frame sequence over training (one PNG per model and snapshot)")
    parser.add_argument("--frame-every", type=int, default=100, help="steps between two frames with --frames")
    return parser


# Lowest allowed value of each numeric flag (argparse parses the type; this the range).
AT_LEAST_1 = ("points_per_ring", "n_labeled", "steps", "batch_size", "hidden", "noise_dim", "frame_every")
POSITIVE = ("radii", "lr", "g_lr")


def check_ranges(parser: argparse.ArgumentParser, args) -> None:
    """Values that cannot work are one usage line before anything is trained."""
    def flag(name):
        return "--" + name.replace("_", "-")
    for name in AT_LEAST_1:
        if getattr(args, name) < 1:
            parser.error(f"{flag(name)}: {getattr(args, name)} is not an integer >= 1")
    if args.seed < 0:
        parser.error(f"--seed: {args.seed} is not an integer >= 0")
    for name in POSITIVE:
        for value in np.atleast_1d(getattr(args, name)):
            if not (value > 0 and np.isfinite(value)):
                parser.error(f"{flag(name)}: {value:g} is not a positive number")
    if not (args.noise >= 0 and np.isfinite(args.noise)):
        parser.error(f"--noise: {args.noise:g} is not a number >= 0")
    if args.n_labeled > args.points_per_ring:
        parser.error(f"--n-labeled {args.n_labeled} is more than --points-per-ring {args.points_per_ring}")


def make_two_rings(points_per_ring, radii, noise, rng):
    """Points of ring k (radius radii[k]) get label k."""
    points, labels = [], []
    for label, radius in enumerate(radii):
        angle = rng.uniform(0.0, 2.0 * np.pi, points_per_ring)
        ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        points.append(ring + rng.normal(0.0, noise, ring.shape))
        labels.append(np.full(points_per_ring, label))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels).astype(np.int64)


def pick_labeled(labels, n_labeled, rng):
    return np.concatenate([rng.choice(np.flatnonzero(labels == k), n_labeled, replace=False)
                           for k in range(NUM_CLASSES)])


class MLPClassifier(nn.Module):
    """2 -> hidden -> hidden -> K logits; `features` is the penultimate layer for feature matching."""

    def __init__(self, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class MLPGenerator(nn.Module):
    def __init__(self, noise_dim, hidden):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(nn.Linear(noise_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, noise):
        return self.net(noise)

    def sample(self, n, torch_rng):
        return self(torch.randn(n, self.noise_dim, generator=torch_rng))


def train_labeled_only(points_labeled, labels_labeled, args, snapshot=None):
    classifier = MLPClassifier(args.hidden)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=args.lr, fused=True)
    for step in range(args.steps):
        loss = losses.supervised_loss(classifier(points_labeled), labels_labeled)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if snapshot is not None:
            snapshot(step, classifier, None)
    return classifier, None


def train_ssgan(points, points_labeled, labels_labeled, g_loss, args, torch_rng, snapshot=None):
    """Classifier: supervised + unlabeled + fake loss; generator: the `g_loss` generator loss."""
    classifier = MLPClassifier(args.hidden)
    generator = MLPGenerator(args.noise_dim, args.hidden)
    # beta1 = 0.5, the usual GAN setting (DCGAN, Salimans et al.): less momentum in a moving game.
    opt_classifier = torch.optim.Adam(classifier.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_generator = torch.optim.Adam(generator.parameters(), lr=args.g_lr, betas=(0.5, 0.999), fused=True)
    n_labeled, batch = len(points_labeled), args.batch_size
    for step in range(args.steps):
        unlabeled = points[torch.randint(len(points), (batch,), generator=torch_rng)]
        fake = generator.sample(batch, torch_rng)

        # One forward pass over labeled, unlabeled and generated points: these nets are so small that
        # per-call overhead, not arithmetic, sets the speed.
        logits = classifier(torch.cat([points_labeled, unlabeled, fake.detach()]))
        logits_labeled, logits_unlabeled, logits_fake = logits.split([n_labeled, batch, batch])
        loss_classifier = (losses.supervised_loss(logits_labeled, labels_labeled)
                           + losses.unlabeled_loss(logits_unlabeled)
                           + losses.fake_loss(logits_fake))
        opt_classifier.zero_grad()
        loss_classifier.backward()
        opt_classifier.step()

        # Frozen classifier for the generator step: skips its weight gradients, which nothing would use.
        classifier.requires_grad_(False)
        features_real, features_fake = classifier.features(torch.cat([unlabeled, fake])).split([batch, batch])
        loss_generator = losses.generator_loss(g_loss, classifier.head(features_fake),
                                               features_real, features_fake)
        opt_generator.zero_grad()
        loss_generator.backward()
        opt_generator.step()
        classifier.requires_grad_(True)
        if snapshot is not None:
            snapshot(step, classifier, generator)
    return classifier, generator


@torch.no_grad()
def accuracy(classifier, points, labels):
    return (classifier(points).argmax(dim=1) == labels).float().mean().item()


def draw_panel(ax, title, classifier, generator, points, labels, labeled_idx, torch_rng, n_fake):
    """Decision regions, real points (labeled ones big), and the generator's samples if there is one."""
    import matplotlib.colors

    lo, hi = points.min(0).values.numpy() - 0.5, points.max(0).values.numpy() + 0.5
    grid_x, grid_y = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32))
    with torch.no_grad():
        region = classifier(grid).argmax(dim=1).numpy().reshape(grid_x.shape)
    colors = ["tab:blue", "tab:orange"]
    ax.contourf(grid_x, grid_y, region, levels=[-0.5, 0.5, 1.5], colors=colors, alpha=0.25)
    point_colors = matplotlib.colors.ListedColormap(colors)
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=point_colors, vmin=0, vmax=1, s=3, alpha=0.6)
    if generator is not None:
        with torch.no_grad():
            fake = generator.sample(n_fake, torch_rng).numpy()
        ax.scatter(fake[:, 0], fake[:, 1], marker="x", color="black", s=6, linewidths=0.6, label="generated")
        ax.legend(loc="upper right", fontsize=7)
    ax.scatter(points[labeled_idx, 0], points[labeled_idx, 1], c=labels[labeled_idx], cmap=point_colors,
               vmin=0, vmax=1, s=140, edgecolors="black", linewidths=1.5, zorder=3)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def frame_writer(args, name, points, labels, labeled_idx):
    """A per-step callback that saves one panel every `args.frame_every` steps and at the last step."""
    import matplotlib.pyplot as plt

    os.makedirs(args.frames, exist_ok=True)

    def snapshot(step, classifier, generator):
        if (step + 1) % args.frame_every and step + 1 != args.steps:
            return
        fig, ax = plt.subplots(figsize=(5, 5))
        title = f"{name}, step {step + 1}: accuracy {accuracy(classifier, points, labels):.3f}"
        draw_panel(ax, title, classifier, generator, points, labels, labeled_idx,
                   torch.Generator().manual_seed(args.seed), n_fake=500)
        fig.savefig(os.path.join(args.frames, f"{name}_{step + 1:06d}.png"), dpi=80)
        plt.close(fig)

    return snapshot


def run(args):
    """Train the three models on one seeded data set; write the figure; return {model name: accuracy}."""
    import matplotlib.pyplot as plt

    # No torch.use_deterministic_algorithms: it imports torch._inductor (seconds), and every op here is
    # already deterministic on CPU.
    rng = np.random.default_rng(args.seed)
    points_np, labels_np = make_two_rings(args.points_per_ring, args.radii, args.noise, rng)
    labeled_idx = pick_labeled(labels_np, args.n_labeled, rng)
    points, labels = torch.from_numpy(points_np), torch.from_numpy(labels_np)
    points_labeled, labels_labeled = points[labeled_idx], labels[labeled_idx]

    results, trained = {}, {}
    for name in MODEL_NAMES:
        # Same initial classifier weights for every model, so only the training differs.
        torch.manual_seed(args.seed)
        torch_rng = torch.Generator().manual_seed(args.seed)
        snapshot = frame_writer(args, name, points, labels, labeled_idx) if args.frames else None
        if name == "labeled-only":
            trained[name] = train_labeled_only(points_labeled, labels_labeled, args, snapshot)
        else:
            g_loss = name.removeprefix("ssgan-")
            trained[name] = train_ssgan(points, points_labeled, labels_labeled, g_loss, args, torch_rng,
                                        snapshot)
        results[name] = accuracy(trained[name][0], points, labels)

    fig, axes = plt.subplots(1, len(MODEL_NAMES), figsize=(5 * len(MODEL_NAMES), 5))
    for ax, name in zip(axes, MODEL_NAMES):
        classifier, generator = trained[name]
        draw_panel(ax, f"{name}: accuracy {results[name]:.3f}", classifier, generator, points, labels,
                   labeled_idx, torch.Generator().manual_seed(args.seed), n_fake=500)
    fig.suptitle(f"two rings, {args.n_labeled} labels per ring, {args.steps} steps, seed {args.seed}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=100)
    if args.show:
        plt.show()
    plt.close(fig)
    return results


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    import matplotlib

    if not args.show:
        matplotlib.use("Agg")
    start = time.perf_counter()
    # These nets are tiny: extra threads only add synchronisation, and thrash on a busy machine.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run(args)
    finally:
        torch.set_num_threads(threads_before)
    for name in MODEL_NAMES:
        print(f"{name:24s} accuracy {results[name]:.3f}")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()

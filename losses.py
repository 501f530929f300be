"""Semi-supervised GAN losses with an implicit fake class (Salimans et al. 2016, "Improved
Techniques for Training GANs", section 5).

The classifier outputs K logits l_1..l_K for the real classes. A (K+1)-th "fake" class is
implied with its logit fixed at 0, so with Z(x) = sum_k exp(l_k) the probability of "real" is
D(x) = Z / (Z + 1) = sigmoid(logsumexp(l)), and p(fake) = 1 / (Z + 1) = sigmoid(-logsumexp(l)).
Fixing the fake logit costs nothing (softmax is invariant to a shift of all K+1 logits) and lets
the same K-logit network serve as classifier and discriminator. Everything below is written with
lse = logsumexp(l) and softplus, using log D = lse - softplus(lse) and log(1 - D) = -softplus(lse),
so no raw logit is ever exponentiated.
"""
import torch
import torch.nn.functional as F

GENERATOR_LOSSES = ("article", "feature-matching")


def supervised_loss(logits, labels):
    """Cross-entropy over the K real classes; the fake class does not change it (it cancels)."""
    return F.cross_entropy(logits, labels)


def unlabeled_loss(logits):
    """-0.5 * mean(log D(x)) on real unlabeled images."""
    lse = torch.logsumexp(logits, dim=1)
    return 0.5 * (-lse.mean() + F.softplus(lse).mean())


def fake_loss(logits):
    """-0.5 * mean(log(1 - D(G(z)))) on generated images."""
    lse = torch.logsumexp(logits, dim=1)
    return 0.5 * F.softplus(lse).mean()


def generator_loss_article(logits_fake):
    """The article's generator loss: the unlabeled-real loss applied to generated images, i.e. the
    generator is rewarded when the classifier calls its samples real (non-saturating form)."""
    return unlabeled_loss(logits_fake)


def feature_matching_loss(features_real, features_fake):
    """Salimans feature matching: mean squared difference of the batch-mean penultimate features.

    The real features are detached: this loss trains the generator only, and must not pull the
    classifier's features towards the generated ones.
    """
    mean_real = features_real.detach().mean(dim=0)
    mean_fake = features_fake.mean(dim=0)
    return ((mean_real - mean_fake) ** 2).mean()


def generator_loss(name, logits_fake, features_real, features_fake):
    """The generator loss selected by `--g-loss` (one of GENERATOR_LOSSES)."""
    if name == "article":
        return generator_loss_article(logits_fake)
    if name == "feature-matching":
        return feature_matching_loss(features_real, features_fake)
    raise ValueError(f"unknown generator loss {name!r}, expected one of {GENERATOR_LOSSES}")


def consistency_loss(logits_a, logits_b):
    """Pi-model consistency (Laine & Aila 2017): squared difference of the K class probabilities
    of two augmented views of the same images, summed over classes, averaged over images. Both
    views get gradients. Unlabeled images need no label for it: it asks for predictions that do
    not change under flips and shifts."""
    return (F.softmax(logits_a, dim=1) - F.softmax(logits_b, dim=1)).pow(2).sum(dim=1).mean()


def d_real_probability(logits):
    """D(x) = Z / (Z + 1) = sigmoid(logsumexp(l)), for logging."""
    return torch.sigmoid(torch.logsumexp(logits, dim=1))


def entropy_loss(logits):
    """Entropy of the K class probabilities, -sum_k p_k log p_k, averaged over images (the
    conditional-entropy term of Bad GAN, Dai et al. 2017, on unlabeled images): minimising it asks
    for confident predictions on unlabeled images, pushing class boundaries into empty regions."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()

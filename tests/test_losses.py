import math

import pytest
import torch

import losses

LN2, LN3 = math.log(2.0), math.log(3.0)


def two_rows():
    # Row 0: Z = 1 + 3 = 4, so lse = ln 4 and softplus(lse) = ln 5.
    # Row 1: Z = 1 + 1 = 2, so lse = ln 2 and softplus(lse) = ln 3.
    return torch.tensor([[0.0, LN3], [0.0, 0.0]], dtype=torch.float64)


def explicit_fake_probability(logits):
    """p(fake) from an explicit (K+1)-way softmax with the fake logit fixed at 0."""
    with_fake = torch.cat([logits, torch.zeros(len(logits), 1, dtype=logits.dtype)], dim=1)
    return torch.softmax(with_fake, dim=1)[:, -1]


def test_unlabeled_loss_hand_value():
    single = torch.tensor([[0.0, LN3]], dtype=torch.float64)
    assert losses.unlabeled_loss(single).item() == pytest.approx(0.5 * (-math.log(4) + math.log(5)))
    # Mean over rows: 0.5 * mean(ln(5/4), ln(3/2)) = 0.25 * ln(15/8).
    assert losses.unlabeled_loss(two_rows()).item() == pytest.approx(0.25 * math.log(15 / 8))


def test_fake_loss_hand_value():
    single = torch.tensor([[0.0, LN3]], dtype=torch.float64)
    assert losses.fake_loss(single).item() == pytest.approx(0.5 * math.log(5))
    assert losses.fake_loss(two_rows()).item() == pytest.approx(0.25 * math.log(15))


def test_d_real_probability_hand_value():
    # D = Z / (Z + 1): 4/5 and 2/3.
    assert losses.d_real_probability(two_rows()).tolist() == pytest.approx([0.8, 2 / 3])


def test_supervised_loss_hand_value():
    logits = two_rows()
    labels = torch.tensor([1, 0])
    # Row 0, class 1: -ln(3/4); row 1, class 0: -ln(1/2).
    expected = 0.5 * (math.log(4 / 3) + LN2)
    assert losses.supervised_loss(logits, labels).item() == pytest.approx(expected)


def test_generator_loss_article_is_unlabeled_form_on_fakes():
    logits = two_rows()
    assert losses.generator_loss_article(logits).item() == pytest.approx(0.25 * math.log(15 / 8))


def test_implicit_form_matches_explicit_k_plus_one_softmax():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, dtype=torch.float64) * 3
    p_fake = explicit_fake_probability(logits)
    expected_unlabeled = -0.5 * torch.log(1 - p_fake).mean()
    expected_fake = -0.5 * torch.log(p_fake).mean()
    assert losses.unlabeled_loss(logits).item() == pytest.approx(expected_unlabeled.item(), rel=1e-10)
    assert losses.fake_loss(logits).item() == pytest.approx(expected_fake.item(), rel=1e-10)
    assert losses.d_real_probability(logits).tolist() == pytest.approx((1 - p_fake).tolist(), rel=1e-10)


def test_supervised_loss_unchanged_by_implicit_fake_class():
    # Conditioning the (K+1)-way softmax on "real" gives back the plain K-way cross-entropy.
    torch.manual_seed(1)
    logits = torch.randn(16, 10, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (16,))
    with_fake = torch.cat([logits, torch.zeros(16, 1, dtype=logits.dtype)], dim=1)
    log_p = torch.log_softmax(with_fake, dim=1)
    log_p_real = torch.log1p(-explicit_fake_probability(logits))
    expected = -(log_p[torch.arange(16), labels] - log_p_real).mean()
    assert losses.supervised_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("loss_name", ["unlabeled_loss", "fake_loss", "generator_loss_article"])
def test_extreme_logits_give_finite_loss_and_gradient(loss_name):
    logits = torch.tensor([[1e4, -1e4], [-1e4, -1e4], [1e4, 1e4]], requires_grad=True)
    loss = getattr(losses, loss_name)(logits)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_extreme_logits_hand_values():
    # lse = 1e4 (softplus(lse) = lse) and lse = -1e4 + ln 2 (softplus(lse) ~ 0), in float64.
    logits = torch.tensor([[1e4, -1e4], [-1e4, -1e4]], dtype=torch.float64)
    assert losses.unlabeled_loss(logits).item() == pytest.approx(0.25 * (1e4 - LN2))
    assert losses.fake_loss(logits).item() == pytest.approx(0.25 * 1e4)


def test_supervised_loss_extreme_logits_finite_gradient():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    loss = losses.supervised_loss(logits, torch.tensor([1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 2e4)
    assert torch.isfinite(logits.grad).all()


def test_feature_matching_zero_for_identical_batches():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert losses.feature_matching_loss(features, features.clone()).item() == 0.0


def test_feature_matching_only_compares_batch_means():
    # Same means ([2, 3]) from different samples: no loss.
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fake = torch.tensor([[2.0, 1.0], [2.0, 5.0]])
    assert losses.feature_matching_loss(real, fake).item() == 0.0


def test_feature_matching_hand_value_and_gradients():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # mean [2, 3]
    fake = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)  # mean [0, 1]
    loss = losses.feature_matching_loss(real, fake)
    # Differences [2, 2], squared [4, 4], mean 4.
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    # d/d fake[i, j] = 2 * (mean_fake_j - mean_real_j) / F / N = 2 * (-2) / 2 / 2 = -1.
    assert fake.grad.flatten().tolist() == pytest.approx([-1.0, -1.0, -1.0, -1.0])
    assert real.grad is None


def test_generator_loss_dispatch():
    logits = two_rows()
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    article = losses.generator_loss("article", logits, real, fake)
    assert article.item() == pytest.approx(0.25 * math.log(15 / 8))
    assert losses.generator_loss("feature-matching", logits, real, fake).item() == pytest.approx(4.0)
    assert set(losses.GENERATOR_LOSSES) == {"article", "feature-matching"}
    with pytest.raises(ValueError):
        losses.generator_loss("wasserstein", logits, real, fake)


def test_consistency_loss_by_hand():
    import losses
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # row 0: equal -> 0; row 1: p = (s, 1-s) vs (1-s, s) with s = sigmoid(2): 2 * (2s - 1)^2
    s = torch.sigmoid(torch.tensor(2.0))
    expected = (2 * (2 * s - 1) ** 2) / 2
    assert torch.allclose(losses.consistency_loss(a, b), expected)
    assert losses.consistency_loss(a, a) == 0


def test_entropy_loss_by_hand():
    import losses
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # row 0: p = (1/2, 1/2) -> log 2; row 1: p = (3/4, 1/4) -> -(3/4 log 3/4 + 1/4 log 1/4)
    expected = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert losses.entropy_loss(logits).item() == pytest.approx(expected)
    assert losses.entropy_loss(torch.tensor([[50.0, -50.0]])).item() == pytest.approx(0.0, abs=1e-6)

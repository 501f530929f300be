import functools
import os

import numpy as np
import pytest
from PIL import Image

import losses
import two_rings

# Small and short: the point is that the whole pipeline runs, not that it learns.
QUICK = ["--steps", "20", "--points-per-ring", "100", "--batch-size", "32", "--hidden", "16"]


def test_main_writes_png_and_returns_accuracies(tmp_path, capsys):
    out = tmp_path / "x.png"
    results = two_rings.main(QUICK + ["--out", str(out)])

    assert set(results) == {"labeled-only", "ssgan-article", "ssgan-feature-matching"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in results.values())
    with Image.open(out) as image:
        assert image.format == "PNG"
        # figsize (5 * 3 panels, 5) inches at 100 dpi.
        assert image.size == (1500, 500)
    printed = capsys.readouterr().out
    for name, accuracy in results.items():
        assert f"{name:24s} accuracy {accuracy:.3f}" in printed


def test_same_seed_same_accuracies_and_figure(tmp_path):
    first = two_rings.main(QUICK + ["--seed", "3", "--out", str(tmp_path / "a.png")])
    second = two_rings.main(QUICK + ["--seed", "3", "--out", str(tmp_path / "b.png")])
    assert first == second
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_uses_the_shared_loss_functions(tmp_path, monkeypatch):
    calls = {}

    def counting(name, loss):
        @functools.wraps(loss)
        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return loss(*args, **kwargs)
        return wrapper

    for name in ("supervised_loss", "unlabeled_loss", "fake_loss", "generator_loss_article",
                 "feature_matching_loss"):
        monkeypatch.setattr(losses, name, counting(name, getattr(losses, name)))

    steps = 7
    two_rings.main(["--steps", str(steps), "--points-per-ring", "50", "--batch-size", "16", "--hidden", "8",
                    "--out", str(tmp_path / "x.png")])
    assert calls == {
        "supervised_loss": 3 * steps,        # once per step in each of the three models
        "unlabeled_loss": 2 * steps + steps,  # both SSGAN classifiers, plus the article generator loss
        "fake_loss": 2 * steps,               # both SSGAN classifiers
        "generator_loss_article": steps,
        "feature_matching_loss": steps,
    }


def test_frames_written_at_interval_and_last_step(tmp_path):
    frames = tmp_path / "frames"
    two_rings.main(QUICK[2:] + ["--steps", "5", "--frames", str(frames), "--frame-every", "3",
                                "--out", str(tmp_path / "x.png")])
    expected = sorted(f"{name}_{step:06d}.png" for name in two_rings.MODEL_NAMES for step in (3, 5))
    assert sorted(os.listdir(frames)) == expected


def test_make_two_rings_radii_and_labels():
    points, labels = two_rings.make_two_rings(500, (1.0, 2.5), 0.0, np.random.default_rng(0))
    assert points.shape == (1000, 2) and points.dtype == np.float32
    assert labels.tolist() == [0] * 500 + [1] * 500
    radius = np.linalg.norm(points, axis=1)
    np.testing.assert_allclose(radius[:500], 1.0, rtol=1e-5)
    np.testing.assert_allclose(radius[500:], 2.5, rtol=1e-5)


def test_pick_labeled_takes_n_per_class():
    labels = np.array([0] * 10 + [1] * 10)
    picked = two_rings.pick_labeled(labels, 4, np.random.default_rng(0))
    assert len(set(picked.tolist())) == 8
    assert sorted(labels[picked].tolist()) == [0] * 4 + [1] * 4


def test_classifier_features_feed_the_head():
    import torch

    classifier = two_rings.MLPClassifier(hidden=8)
    x = torch.randn(5, 2)
    assert classifier.features(x).shape == (5, 8)
    assert torch.equal(classifier.head(classifier.features(x)), classifier(x))


@pytest.mark.parametrize("flag", [a.option_strings[0] for a in two_rings.get_args_parser()._actions
                                  if a.option_strings and a.dest != "help"])
def test_every_flag_has_help(flag):
    action = next(a for a in two_rings.get_args_parser()._actions if flag in a.option_strings)
    assert action.help

"""bench/accuracy.py's tables: gains paired by seed, from hand-made rows (no training)."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import accuracy  # noqa: E402


def rows():
    acc = {("supervised", 0): 0.60, ("supervised", 1): 0.58, ("ssgan", 0): 0.66, ("ssgan", 1): 0.61,
           ("ssgan-no-gan", 0): 0.63, ("ssgan-no-gan", 1): 0.62}
    return [{"seed": s, "model": m, "out": f"/runs/seed{s}/{m}", "args": f"--flags-of {m}", "epochs": 3,
             "steps": 150, "train_minutes": 8.0, "test_acc": a, "test_ci95": [a - 0.03, a + 0.03],
             "best_val_acc": a + 0.01, "best_epoch": 2} for (m, s), a in acc.items()]


def test_gains_are_paired_by_seed():
    summary = accuracy.summarize(rows(), ["supervised", "ssgan", "ssgan-no-gan"])
    assert summary["ssgan"]["mean"] == pytest.approx(0.635) and summary["ssgan"]["n"] == 2
    gain = summary["gains"]["ssgan - supervised"]
    assert gain["per_seed"] == pytest.approx([0.06, 0.03])
    assert gain["mean"] == pytest.approx(0.045) and gain["std"] == pytest.approx(0.0212132, abs=1e-6)
    assert summary["gains"]["ssgan - ssgan-no-gan"]["per_seed"] == pytest.approx([0.03, -0.01])
    assert "ssgan - supervised-article" not in summary["gains"]  # not trained: no row


def test_markdown_lists_every_model_gain_and_run():
    report = {"summary": accuracy.summarize(rows(), ["supervised", "ssgan", "ssgan-no-gan"]),
              "config": {"image_size": 32, "minutes": 8, "device": "cpu", "seeds": [0, 1],
                         "models": ["supervised", "ssgan", "ssgan-no-gan"]},
              "machine": {"cpu": "test cpu", "cores": 2, "gpu": None, "torch": "x", "date": "today"},
              "runs": rows()}
    text = accuracy.markdown(report)
    assert "| ssgan | `--flags-of ssgan` | 63.5 ± 3.5 % (n=2) |" in text
    assert "| ssgan - supervised | +4.5 ± 2.1 points | +6.0, +3.0 |" in text
    assert text.count("| 0 | ") == 3 and text.count("| 1 | ") == 3

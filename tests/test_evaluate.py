"""evaluate.py on hand-countable cases: checkpoints are written directly (no training) with a
zeroed last layer, so the classifier's logits are its bias whatever the image."""
import csv
import json
import math
import re
import shutil
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import torch

import engine
import evaluate
from conftest import jpeg_bytes, write_kaggle_folder
from models import Classifier, Generator, classifier_meta, generator_meta

FAST = ["--loader", "torch", "--device", "cpu", "--workers", "1", "--batch-size", "3"]
E = math.e


def make_checkpoint(folder: Path, bias=None, *, kind="supervised", epoch=3, seed=0, normalize=None,
                    name="best.pt") -> Path:
    """A checkpoint in the trainers' format (engine.checkpoint_state); with `bias` the logits are
    exactly `bias` for any image."""
    torch.manual_seed(seed)
    clf = Classifier(2)
    if bias is not None:
        with torch.no_grad():
            clf.backbone.fc.weight.zero_()
            clf.backbone.fc.bias.copy_(torch.tensor(bias))
    state = {
        "format": engine.CHECKPOINT_FORMAT, "kind": kind, "epoch": epoch, "stopped_early": False,
        "best_val_acc": 0.75, "best_epoch": epoch, "val": {"loss": 0.5, "accuracy": 0.75, "count": 8},
        "classes": ["cat", "dog"], "image_size": 32,
        "normalize": normalize or {"mean": [0.5] * 3, "std": [0.5] * 3},
        "optimizers": {"classifier": torch.optim.SGD(clf.parameters(), lr=0.1).state_dict()},
        "scaler": None, "args": {"image_size": 32}, "rng": engine.rng_state("cpu"),
        "classifier": clf.state_dict(), "classifier_meta": classifier_meta(clf),
    }
    if kind == "ssgan":
        netG = Generator(32)
        state["generator"], state["generator_meta"] = netG.state_dict(), generator_meta(netG)
    folder.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(state, folder / name)
    return folder / name


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # On a busy 2-core box, 2 intra-op threads make a 32 px ResNet18 forward ~30x slower.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    # 3 cats + 5 dogs, Kaggle-named, in a flat folder, a zip (train.zip layout) and a prepared split.
    kaggle = root / "kaggle"
    write_kaggle_folder(kaggle, 3, classes=("cat",), size=(40, 40))
    write_kaggle_folder(kaggle, 5, classes=("dog",), size=(40, 40), seed0=500)
    with zipfile.ZipFile(root / "train.zip", "w") as zf:
        for p in sorted(kaggle.iterdir()):
            zf.write(p, f"train/{p.name}")
    prepared = root / "prepared"
    for p in kaggle.iterdir():
        (prepared / p.name.split(".")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, prepared / p.name.split(".")[0] / p.name)
    dogs_only = root / "dogs_only" / "dog"
    shutil.copytree(prepared / "dog", dogs_only)

    runs = root / "runs"
    dog = make_checkpoint(runs / "supervised", [0.0, 1.0])            # always dog, p(dog) = e/(1+e)
    cat = make_checkpoint(runs / "ssgan", [2.0, 0.0], kind="ssgan")   # always cat
    rand = make_checkpoint(runs / "random", seed=1)                   # image-dependent predictions
    for folder in (runs / "supervised", runs / "ssgan"):
        (folder / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n2,0.6\n3,0.75\n")
    (runs / "ssgan" / "samples").mkdir()
    (runs / "ssgan" / "samples" / "epoch_002.png").write_bytes(b"grid 2")
    (runs / "ssgan" / "samples" / "epoch_010.png").write_bytes(b"grid 10")  # the highest epoch
    return {"root": root, "kaggle": kaggle, "zip": root / "train.zip", "prepared": prepared,
            "dogs_only": dogs_only.parent, "dog": dog, "cat": cat, "rand": rand}


def run_json(capsys, tmp_path, *args):
    out = tmp_path / "scores.json"
    rc = evaluate.main([*map(str, args), "--json", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(out.read_text()), captured


def test_wilson_interval_by_hand():
    # 5/8 (statsmodels proportion_confint(5, 8, method="wilson") gives the same 0.3057, 0.8632)
    lo, hi = evaluate.wilson_interval(5, 8)
    assert lo == pytest.approx(0.3057, abs=5e-5) and hi == pytest.approx(0.8632, abs=5e-5)
    # At 0 or n successes the bounds have closed forms: z^2/(n+z^2) and n/(n+z^2).
    z2 = 1.959963984540054 ** 2
    assert evaluate.wilson_interval(0, 8) == pytest.approx((0.0, z2 / (8 + z2)))
    assert evaluate.wilson_interval(8, 8) == pytest.approx((8 / (8 + z2), 1.0))


def test_constant_models_table_and_json(setup, tmp_path, capsys):
    scores, captured = run_json(capsys, tmp_path, setup["dog"], setup["cat"], "--data", setup["prepared"])
    assert scores["count"] == 8 and scores["data"] == str(setup["prepared"])
    dog, cat = scores["models"]

    # Always dog: 5/8 right, cross-entropy -log p(true) with p(dog) = e/(1+e).
    loss_dog = (3 * math.log(1 + E) + 5 * (math.log(1 + E) - 1)) / 8
    assert dog["accuracy"] == 5 / 8 and dog["count"] == 8
    assert dog["confusion"] == [[0, 3], [0, 5]] and dog["per_class"] == {"cat": 0.0, "dog": 1.0}
    assert dog["loss"] == pytest.approx(loss_dog, rel=1e-6)
    assert dog["ci95"] == pytest.approx([0.3057, 0.8632], abs=5e-5)
    assert (dog["kind"], dog["epoch"], dog["best_val_acc"]) == ("supervised", 3, 0.75)
    assert dog["path"] == str(setup["dog"]) and dog["classes"] == ["cat", "dog"]

    # Always cat (logits 2, 0): 3/8 right.
    lse = math.log(E ** 2 + 1)
    assert cat["accuracy"] == 3 / 8 and cat["confusion"] == [[3, 0], [5, 0]]
    assert cat["per_class"] == {"cat": 1.0, "dog": 0.0}
    assert cat["loss"] == pytest.approx((3 * (lse - 2) + 5 * lse) / 8, rel=1e-6)
    assert cat["ci95"] == pytest.approx([1 - 0.8632, 1 - 0.3057], abs=5e-5)

    out = captured.out
    assert "Wilson" in out
    row_dog = next(line for line in out.splitlines() if line.startswith("| supervised "))
    assert "62.50 [30.57, 86.32]" in row_dog and f"{loss_dog:.4f}" in row_dog
    assert "cat 0.00, dog 100.00" in row_dog
    assert "37.50 [13.68, 69.43]" in next(line for line in out.splitlines() if line.startswith("| ssgan "))
    assert re.search(r"\| dog +\| 0 +\| 5 +\|", out)  # confusion row of the always-dog model


def test_kaggle_folder_and_zip_score_like_the_prepared_split(setup, tmp_path, capsys):
    results = {}
    for key in ("prepared", "kaggle", "zip"):
        scores, captured = run_json(capsys, tmp_path, setup["rand"], setup["dog"], "--data", setup[key])
        assert "skipped" not in captured.err
        results[key] = scores
    for key in ("kaggle", "zip"):
        assert results[key]["count"] == 8 and results[key]["skipped"] == []
        for got, want in zip(results[key]["models"], results["prepared"]["models"]):
            assert got["confusion"] == want["confusion"]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert results["zip"]["models"][1]["confusion"] == [[0, 3], [0, 5]]


def test_classes_map_by_name_not_folder_position(setup, tmp_path, capsys):
    # Only dog/ present: folder index 0, checkpoint index 1.
    scores, captured = run_json(capsys, tmp_path, setup["dog"], "--data", setup["dogs_only"])
    (dog,) = scores["models"]
    assert dog["accuracy"] == 1.0 and dog["confusion"] == [[0, 0], [0, 5]]
    assert dog["per_class"] == {"cat": None, "dog": 1.0}
    assert "cat n/a" in captured.out


def test_broken_and_non_image_files_are_reported_and_counted(setup, tmp_path, capsys):
    folder = tmp_path / "kaggle_broken"
    shutil.copytree(setup["kaggle"], folder)
    (folder / "cat.99.jpg").write_bytes(jpeg_bytes(7)[:200])  # truncated
    (folder / "notes.txt").write_text("not an image")
    scores, captured = run_json(capsys, tmp_path, setup["dog"], "--data", folder)
    assert "skipped 2 of 10 files" in captured.err
    assert "cat.99.jpg" in captured.err and "notes.txt" in captured.err
    assert sorted(s["file"] for s in scores["skipped"]) == ["cat.99.jpg", "notes.txt"]
    assert scores["count"] == 8 and scores["models"][0]["confusion"] == [[0, 3], [0, 5]]
    assert "2 file(s) skipped" in captured.out


def test_label_unknown_to_the_checkpoint_is_an_error(setup, tmp_path, capsys):
    folder = tmp_path / "with_bird"
    shutil.copytree(setup["kaggle"], folder)
    (folder / "bird.0.jpg").write_bytes(jpeg_bytes(3))
    assert evaluate.main([str(setup["dog"]), "--data", str(folder), *FAST]) == 1
    err = capsys.readouterr().err
    assert "evaluate.py: error:" in err and "'bird'" in err and str(setup["dog"]) in err
    assert "Traceback" not in err and "checking images" not in err  # refused before decoding


def test_missing_checkpoint_names_the_file_and_the_trainer(setup, tmp_path, capsys):
    missing = tmp_path / "runs" / "ssgan" / "best.pt"
    assert evaluate.main([str(setup["dog"]), str(missing), "--data", str(setup["prepared"]), *FAST]) == 1
    err = capsys.readouterr().err
    # The SSGAN's folder gets the SSGAN's trainer, never the baseline's.
    assert str(missing) in err and f"python train_ssgan.py --data data --out {missing.parent}" in err
    assert "train_supervised.py" not in err


def test_no_checkpoint_at_all_shows_both_training_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default checkpoints, runs/supervised and runs/ssgan, are absent
    assert evaluate.main([]) == 1
    err = capsys.readouterr().err
    assert "python train_supervised.py --data data --out runs/supervised" in err
    assert "python train_ssgan.py --data data --out runs/ssgan" in err
    assert "--out runs/supervised;" in err and "train_ssgan.py --data data --out runs/supervised" not in err


def test_other_normalisation_is_refused(setup, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "imagenet", [0.0, 1.0],
                           normalize={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert evaluate.main([str(ckpt), "--data", str(setup["prepared"]), *FAST]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "normalised" in err


def test_report_links_exist_and_are_relative(setup, tmp_path, capsys):
    report = tmp_path / "out" / "report.md"
    assert evaluate.main([str(setup["dog"]), str(setup["cat"]), "--data", str(setup["prepared"]),
                          "--report", str(report), *FAST]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out", moved)  # relative links survive a move
    text = (moved / "report.md").read_text()
    links = [urllib.parse.unquote(x) for x in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]
    assert len(links) == 4  # val curves, two confusion matrices, the SSGAN's sample grid
    for link in links:
        assert not Path(link).is_absolute() and ".." not in link
        assert (moved / link).is_file(), link
        assert (moved / link).stat().st_size > 0
    assert any("val_accuracy" in x for x in links)
    grid = next(x for x in links if "samples" in x)
    assert (moved / grid).read_bytes() == b"grid 10"
    assert "62.50 [30.57, 86.32]" in text and "Wilson" in text


def test_report_circles_the_row_each_checkpoint_was_saved_at(tmp_path, monkeypatch):
    """Epoch 3 was cut short after 2 of its 5 steps and resumed: best.pt saved at the cut is circled
    at x = 2.4, last.pt at the end of that epoch at x = 3."""
    import matplotlib.axes
    run = tmp_path / "run"
    run.mkdir()
    log = engine.MetricsLog(run / "metrics.csv", [], None)
    for epoch, steps, acc in [(1, 5, 0.5), (2, 5, 0.6), (3, 2, 0.8), (3, 3, 0.7)]:
        log.append({"epoch": epoch, "steps": steps, "val_loss": 1.0, "val_acc": acc})
    circles, real_plot = [], matplotlib.axes.Axes.plot

    def plot(ax, *args, **kwargs):
        if args[2:] == ("o",):
            circles.append(args[:2])
        return real_plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    results = [{"path": str(run / "best.pt"), "epoch": 3, "epoch_steps": 2},
               {"path": str(run / "last.pt"), "epoch": 3, "epoch_steps": 5},
               {"path": str(run / "old.pt"), "epoch": 2}]  # older checkpoints: whole epochs
    lines = evaluate.curve_section(results, tmp_path)
    assert circles == [(2.4, 80.0), (3.0, 70.0), (2.0, 60.0)] and (tmp_path / "val_accuracy.png").is_file()
    assert any("val_accuracy.png" in line for line in lines)


def test_predict_writes_a_kaggle_submission(setup, tmp_path, capsys):
    test1 = tmp_path / "test1"
    test1.mkdir()
    for i in (1, 2, 10):
        (test1 / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    (test1 / "3.png").write_bytes(jpeg_bytes(3, fmt="PNG"))  # re-encoded, still scored
    (test1 / "7.jpg").write_bytes(b"\xff\xd8 broken")
    (test1 / "notes.txt").write_text("x")
    out = tmp_path / "submission.csv"
    # Only the first checkpoint is used (the second need not even exist) and, without --data,
    # no labeled evaluation runs.
    assert evaluate.main([str(setup["dog"]), str(tmp_path / "absent.pt"), "--predict", str(test1),
                          "--csv", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 of 6 files" in captured.err and "7.jpg" in captured.err and "notes.txt" in captured.err
    assert "accuracy" not in captured.out
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 10]
    for _, p in rows[1:]:
        assert float(p) == pytest.approx(E / (1 + E), abs=1e-7)


def test_predict_other_names_get_one_column_per_class(setup, tmp_path, capsys):
    out = tmp_path / "probs.csv"
    assert evaluate.main([str(setup["cat"]), "--predict", str(setup["zip"]), "--csv", str(out), *FAST]) == 0
    capsys.readouterr()
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "cat", "dog"]
    assert [r[0] for r in rows[1:]] == sorted(f"train/{p.name}" for p in setup["kaggle"].iterdir())
    p_cat = E ** 2 / (E ** 2 + 1)
    for _, c, d in rows[1:]:
        assert (float(c), float(d)) == pytest.approx((p_cat, 1 - p_cat), abs=1e-7)


def test_flag_errors(setup, tmp_path, capsys):
    assert evaluate.main([str(setup["dog"]), "--predict", str(setup["kaggle"]), *FAST]) == 1
    assert "--csv" in capsys.readouterr().err
    assert evaluate.main([str(setup["dog"]), "--data", str(tmp_path / "nowhere"), *FAST]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "prepare_data.py" in err

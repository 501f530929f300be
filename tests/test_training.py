import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
import losses
import train_ssgan
import train_supervised
from conftest import ROOT
from models import Generator, build_classifier

FAST = ["--image-size", "32", "--batch-size", "8", "--loader", "torch", "--workers", "1",
        "--device", "cpu"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_supervised_writes_outputs_and_a_self_describing_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "sup"
    assert train_supervised.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "2", *FAST]) == 0
    for name in ("best.pt", "last.pt", "metrics.csv", "val_curve.png"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds"} <= rows[0].keys()

    state = torch.load(out / "last.pt", weights_only=True)
    assert state["kind"] == "supervised" and state["epoch"] == 2
    assert state["classes"] == ["cat", "dog"] and state["image_size"] == 32
    assert state["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert state["args"]["optimizer"] == "sgd" and "classifier" in state["optimizers"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val"]["accuracy"] == max(float(r["val_acc"]) for r in rows)
    assert best["epoch"] == best["best_epoch"]

    # Rebuilt from its own metadata, the model scores val exactly as recorded.
    classifier = build_classifier(best["classifier_meta"])
    classifier.load_state_dict(best["classifier"])
    rt = engine.setup_runtime("cpu")
    val = engine.val_loader(tiny_data, rt, batch_size=8, image_size=32, loader="torch", workers=1)
    metrics = engine.evaluate(classifier, val, 2, rt)
    assert metrics["accuracy"] == best["val"]["accuracy"] and metrics["count"] == 8


def test_ssgan_writes_outputs_samples_and_metrics(tiny_data, tmp_path):
    out = tmp_path / "ssgan"
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "2", *FAST]) == 0
    for name in ("best.pt", "last.pt", "metrics.csv", "val_curve.png",
                 "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 2 and rows[0]["steps"] == "5"  # 40 unlabeled // 8
    for r in rows:
        assert 0 < float(r["d_real"]) < 1 and 0 < float(r["d_fake"]) < 1
    state = torch.load(out / "last.pt", weights_only=True)
    netG = Generator(**state["generator_meta"])
    netG.load_state_dict(state["generator"])
    assert netG(torch.randn(2, 100)).shape == (2, 3, 32, 32)
    assert set(state["optimizers"]) == {"classifier", "generator"}


@pytest.mark.parametrize("trainer, extra", [
    (train_ssgan, ["--g-loss", "feature-matching", "--steps-per-epoch", "2"]),  # ResNet18 (BN buffers to restore)
    (train_ssgan, ["--arch", "cnn", "--translate", "2", "--consistency-weight", "5", "--augment-fakes",
                   "--entropy-weight", "0.1", "--dropout", "0.5", "--input-dropout", "0.2"]),
    (train_supervised, ["--optimizer", "adam"])])
def test_resumed_run_equals_uninterrupted(tiny_data, tmp_path, trainer, extra):
    common = ["--data", str(tiny_data), *FAST, *extra]
    assert trainer.main([*common, "--out", str(tmp_path / "full"), "--epochs", "2"]) == 0
    assert trainer.main([*common, "--out", str(tmp_path / "cut"), "--epochs", "1"]) == 0
    assert trainer.main([*common, "--out", str(tmp_path / "cut"), "--epochs", "2", "--resume"]) == 0
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for name in ("classifier", "generator"):
        if name in full:
            assert states_equal(full[name], cut[name]), name
    assert full["best_epoch"] == cut["best_epoch"]
    drop = {"seconds", "images_per_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(read_rows(tmp_path / "full" / "metrics.csv")) == strip(read_rows(tmp_path / "cut" / "metrics.csv"))


def test_existing_run_is_not_overwritten(tiny_data, tmp_path, capsys):
    args = ["--data", str(tiny_data), "--out", str(tmp_path / "r"), "--epochs", "1", *FAST]
    assert train_supervised.main(args) == 0
    assert train_supervised.main(args) == 1
    assert "--resume" in capsys.readouterr().err
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    state["classes"] = ["bird", "fish"]  # a checkpoint trained on other classes
    engine.save_checkpoint(state, tmp_path / "r" / "last.pt")
    assert train_supervised.main([*args[:-len(FAST)], "--epochs", "2", "--resume", *FAST]) == 1
    assert "differ from ['cat', 'dog']" in capsys.readouterr().err
    assert train_supervised.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), *FAST]) == 1
    assert "prepare_data.py" in capsys.readouterr().err
    # Killed before the first epoch ended: --resume has nothing to load and starts afresh.
    assert train_supervised.main(["--data", str(tiny_data), "--out", str(tmp_path / "early"),
                                  "--epochs", "1", "--resume", *FAST]) == 0
    assert "starting from epoch 1" in capsys.readouterr().out
    assert torch.load(tmp_path / "early" / "last.pt", weights_only=True)["epoch"] == 1


def test_non_finite_loss_stops_and_keeps_best(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    # feature matching: unlabeled_loss is called once per step (the article's G loss reuses it)
    common = ["--data", str(tiny_data), "--out", str(out), "--g-loss", "feature-matching", "--arch", "cnn", *FAST]
    assert train_ssgan.main([*common, "--epochs", "1"]) == 0
    best_before = (out / "best.pt").read_bytes()
    calls = {"n": 0}
    real_loss = losses.unlabeled_loss

    def poisoned(logits):  # the 3rd step of the resumed epoch 2 goes non-finite
        calls["n"] += 1
        value = real_loss(logits)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(losses, "unlabeled_loss", poisoned)
    assert train_ssgan.main([*common, "--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "epoch 2, step 3" in err
    assert (out / "best.pt").read_bytes() == best_before
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_budget_stops_cleanly(tiny_data, tmp_path, capsys):
    out = tmp_path / "budget"
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "50", "--arch", "cnn",
                             "--max-minutes", "1e-9", *FAST]) == 0
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["epoch"] == 1 and state["stopped_early"]  # a run always leaves a checkpoint
    assert "--max-minutes" in capsys.readouterr().out
    # Out of time at the start of a later epoch: nothing was trained, so nothing is logged, and
    # last.pt records that the run ended on its budget.
    out = tmp_path / "budget2"
    common = ["--data", str(tiny_data), "--out", str(out), "--arch", "cnn", *FAST]  # any network: the CNN is quick
    assert train_ssgan.main([*common, "--epochs", "1"]) == 0
    assert not torch.load(out / "last.pt", weights_only=True)["stopped_early"]
    assert train_ssgan.main([*common, "--epochs", "50", "--max-minutes", "1e-9", "--resume"]) == 0
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["stopped_early"]
    assert len(read_rows(out / "metrics.csv")) == 1
    assert "start of epoch 2" in capsys.readouterr().out



@pytest.mark.parametrize("trainer, extra", [
    (train_ssgan, ["--arch", "cnn", "--translate", "2", "--augment-fakes", "--consistency-weight", "5",
                   "--g-loss", "feature-matching", "--fm-target", "fresh", "--steps-per-epoch", "7"]),
    (train_supervised, ["--arch", "cnn", "--optimizer", "adam", "--steps-per-epoch", "4"])])
def test_an_epoch_cut_short_by_the_budget_resumes_at_its_step(tiny_data, tmp_path, monkeypatch, capsys,
                                                               trainer, extra):
    """--max-minutes stops epoch 1 after 2 steps; --resume trains its other steps, then epoch 2: the
    same weights, steps and epoch-2 row as a run never stopped (the SSGAN's 7 steps: the cut pass over
    the 5 unlabeled batches goes on mid-way and a second pass follows)."""
    common = ["--data", str(tiny_data), *FAST, *extra, "--epochs", "2"]
    steps = int(extra[-1])
    assert trainer.main([*common, "--out", str(tmp_path / "full")]) == 0
    checks = {"n": 0}

    def two_steps_then_out_of_time(self):
        checks["n"] += 1
        return checks["n"] > 2

    with monkeypatch.context() as m:
        m.setattr(engine.Budget, "exhausted", two_steps_then_out_of_time)
        assert trainer.main([*common, "--out", str(tmp_path / "cut")]) == 0
    cut_state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (cut_state["epoch"], cut_state["epoch_steps"], cut_state["stopped_early"]) == (1, 2, True)
    assert "--max-minutes" in capsys.readouterr().out
    assert trainer.main([*common, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert f"in epoch 1 after its step 2 of {steps}" in capsys.readouterr().out

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (cut["epoch"], cut["epoch_steps"], cut["stopped_early"]) == (2, steps, False)
    for name in ("classifier", "classifier_trained", "generator"):
        if name in full:
            assert states_equal(full[name], cut[name]), name
    rows = read_rows(tmp_path / "cut" / "metrics.csv")
    assert [(r["epoch"], int(r["steps"])) for r in rows] == [("1", 2), ("1", steps - 2), ("2", steps)]
    drop = {"seconds", "images_per_s", "best_val_acc"}  # the cut epoch's validation is one more candidate
    strip = lambda row: {k: v for k, v in row.items() if k not in drop}  # noqa: E731
    assert strip(rows[-1]) == strip(read_rows(tmp_path / "full" / "metrics.csv")[-1])


def test_metrics_log_rewrite_on_resume_leaves_the_old_file_whole_if_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    log = engine.MetricsLog(path, ["train_loss"], None)
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "steps": 5, "train_loss": 0.5})
    before = path.read_text()
    monkeypatch.setattr(engine.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        engine.MetricsLog(path, ["train_loss"], 10)
    assert path.read_text() == before
    monkeypatch.undo()
    resumed = engine.MetricsLog(path, ["train_loss"], 10)  # the checkpoint holds 10 steps: 2 epochs
    assert [r["total_steps"] for r in read_rows(path)] == ["5", "10"] and resumed.total_steps == 10


def test_a_cut_short_epochs_two_rows_plot_at_the_fraction_reached_and_at_the_epochs_end():
    rows = [{"epoch": e, "steps": n} for e, n in [(1, 5), (2, 5), (3, 2), (3, 3), (4, 1)]]
    assert engine.epoch_positions(rows) == ([1.0, 2.0, 2.4, 3.0, 3.2], 5)
    assert engine.epoch_positions([]) == ([], 1)
    assert engine.epoch_positions([{"epoch": 1, "steps": 0}]) == ([0.0], 1)  # stopped before its first step


def test_fakes_do_not_touch_batchnorm_running_statistics():
    from models import Classifier
    classifier = Classifier(2).train()
    bn = classifier.backbone.bn1
    before = (bn.running_mean.clone(), bn.running_var.clone())
    with train_ssgan.frozen_bn_stats(classifier):
        out_frozen = classifier(torch.randn(4, 3, 32, 32) * 5)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 0  # restored
    classifier(torch.randn(4, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before[0])
    assert out_frozen.shape == (4, 2)


def test_kill_9_mid_epoch_then_resume_completes(tiny_data, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train_ssgan.py"), "--data", str(tiny_data), "--out", str(out),
           "--epochs", "3", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 1
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert len(read_rows(out / "metrics.csv")) == 3
    assert not [p for p in Path(out).iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("trainer", [train_ssgan, train_supervised])
def test_small_cnn_with_translations_trains_and_reloads(tiny_data, tmp_path, trainer):
    out = tmp_path / "cnn"
    assert trainer.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--arch", "cnn",
                         "--translate", "4", "--optimizer" if trainer is train_supervised else "--g-loss",
                         "adam" if trainer is train_supervised else "feature-matching", *FAST]) == 0
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["classifier_meta"]["arch"] == "cnn" and state["args"]["translate"] == 4
    classifier = build_classifier(state["classifier_meta"])
    classifier.load_state_dict(state["classifier"])
    assert classifier(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_supervised_steps_per_epoch_cycles_the_labeled_set(tiny_data, tmp_path):
    # 8 labels in batches of 4: 2 steps per pass; 5 steps per epoch cross passes, and the run
    # equals one with the default epoch (one pass) step for step: same total steps, same weights.
    common = ["--data", str(tiny_data), *FAST[:2], "--batch-size", "4", *FAST[4:], "--optimizer", "adam",
              "--arch", "cnn", "--dropout", "0", "--input-dropout", "0"]  # no dropout: no draws to differ
    assert train_supervised.main([*common, "--out", str(tmp_path / "a"), "--epochs", "2",
                                  "--steps-per-epoch", "5"]) == 0
    assert train_supervised.main([*common, "--out", str(tmp_path / "b"), "--epochs", "5"]) == 0
    assert [r["steps"] for r in read_rows(tmp_path / "a" / "metrics.csv")] == ["5", "5"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["classifier"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["classifier"]
    assert states_equal(a, b)


def test_consistency_loss_is_logged_and_no_gan_ablation_trains_without_a_generator(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), "--epochs", "1", "--arch", "cnn", "--translate", "2", *FAST]
    assert train_ssgan.main([*common, "--out", str(tmp_path / "gan"), "--consistency-weight", "5"]) == 0
    row = read_rows(tmp_path / "gan" / "metrics.csv")[0]
    assert float(row["loss_consistency"]) > 0 and float(row["loss_fake"]) > 0

    assert train_ssgan.main([*common, "--out", str(tmp_path / "nogan"), "--consistency-weight", "5",
                             "--no-gan"]) == 0
    state = torch.load(tmp_path / "nogan" / "best.pt", weights_only=True)
    assert "generator" not in state and set(state["optimizers"]) == {"classifier"}
    row = read_rows(tmp_path / "nogan" / "metrics.csv")[0]
    assert float(row["loss_fake"]) == 0 and float(row["loss_g"]) == 0
    assert float(row["loss_consistency"]) > 0
    assert not (tmp_path / "nogan" / "samples").exists()
    import evaluate
    assert evaluate.main([str(tmp_path / "nogan" / "best.pt"), "--data", str(tiny_data / "test"),
                          "--device", "cpu", "--loader", "torch"]) == 0


def test_augment_generated_flips_and_shifts_each_image_and_passes_gradients():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4).requires_grad_(True)
    out = train_ssgan.augment_generated(images, translate=0, flip=True, generator=torch.Generator().manual_seed(3))
    for i in range(2):  # each image is itself or its mirror, and the seed decides which
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))
    again = train_ssgan.augment_generated(images, translate=0, flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    assert torch.equal(train_ssgan.augment_generated(images, translate=0, flip=False, generator=torch.Generator()),
                       images)
    shifted = train_ssgan.augment_generated(images, translate=1, flip=False, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    shifted.sum().backward()  # every output pixel comes from one input pixel: 16 of them per image
    assert images.grad.sum().item() == 32 and (images.grad >= 0).all()


def test_entropy_term_is_logged_and_fake_augmentation_changes_training(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), "--epochs", "1", "--arch", "cnn", "--translate", "2", *FAST]
    assert train_ssgan.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert train_ssgan.main([*common, "--out", str(tmp_path / "aug"), "--augment-fakes",
                             "--entropy-weight", "0.1"]) == 0
    plain, aug = (read_rows(tmp_path / name / "metrics.csv")[0] for name in ("plain", "aug"))
    assert float(plain["loss_entropy"]) == 0 and 0 < float(aug["loss_entropy"]) <= math.log(2)
    assert plain["val_acc_trained"] == ""  # no weight average: val_acc is the trained weights' already
    first = [torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("plain", "aug")]
    assert first[1]["args"]["augment_fakes"] and first[1]["args"]["entropy_weight"] == 0.1
    assert not states_equal(first[0]["generator"], first[1]["generator"])


def test_consistency_at_sizes_not_held_in_memory_is_refused(tiny_data, tmp_path, capsys):
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(tmp_path / "r"), *FAST,
                             "--image-size", "128", "--consistency-weight", "1"]) == 1
    assert "--image-size <= 64" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_generator_width_flag_reaches_the_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "narrow"
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--g-width", "4",
                             *FAST]) == 0
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["generator_meta"]["base_channels"] == 4
    netG = Generator(**state["generator_meta"])
    netG.load_state_dict(state["generator"])  # rebuilt at the trained width
    assert netG.project[0].out_channels == 32  # 8 x the base width at the first map


def test_progress_bars_stay_out_of_logs(tiny_data, tmp_path, capsys):
    """Output to a file or pipe (here pytest's capture): no carriage-return bar updates, one plain
    line per epoch."""
    for trainer, name in ((train_supervised, "sup"), (train_ssgan, "gan")):
        assert trainer.main(["--data", str(tiny_data), "--out", str(tmp_path / name), "--epochs", "2",
                             *FAST, "--arch", "cnn"]) == 0
        captured = capsys.readouterr()
        assert "\r" not in captured.err and "\r" not in captured.out
        assert [line.split(" |")[0] for line in captured.out.splitlines() if line.startswith("epoch ")] == \
            ["epoch 1/2", "epoch 2/2"]


def test_resume_takes_a_new_lr_keeps_the_other_flags_and_refuses_a_new_architecture(tiny_data, tmp_path, capsys):
    out = tmp_path / "gan"
    base = ["--data", str(tiny_data), "--out", str(out), *FAST, "--arch", "cnn", "--g-width", "4"]
    assert train_ssgan.main([*base, "--epochs", "1", "--lr", "2e-3", "--g-loss", "feature-matching"]) == 0
    capsys.readouterr()
    # Halved --lr, --g-loss not repeated: the run trains on at the new rate with its own loss.
    assert train_ssgan.main([*base, "--epochs", "2", "--lr", "1e-3", "--resume"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line == "--resume with changed flags: --epochs 1 -> 2, --lr 0.002 -> 0.001"
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["args"]["g_loss"] == "feature-matching"
    assert [g["lr"] for g in state["optimizers"]["classifier"]["param_groups"]] == [1e-3]
    assert [g["lr"] for g in state["optimizers"]["generator"]["param_groups"]] == [1e-3]  # --lr-g: --lr
    # What makes it another run is refused in one usage line, naming the flag.
    with pytest.raises(SystemExit) as stop:
        train_ssgan.main([*base, "--epochs", "3", "--arch", "resnet18", "--resume"])
    assert stop.value.code == 2
    assert "--arch cannot change on --resume" in capsys.readouterr().err
    # A run saved before --dropout existed trained with the default: a new value is refused too.
    del state["args"]["dropout"]
    torch.save(state, out / "last.pt")
    with pytest.raises(SystemExit) as stop:
        train_ssgan.main([*base, "--epochs", "3", "--dropout", "0.5", "--resume"])
    assert stop.value.code == 2
    assert f"--dropout cannot be given on --resume: {out / 'last.pt'} was trained before" in capsys.readouterr().err
    assert train_ssgan.main([*base, "--epochs", "3", "--resume"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_ssgan_trains_exactly_the_steps_asked_for_beyond_one_unlabeled_pass(tiny_data, tmp_path):
    """40 unlabeled images in batches of 8 are 5 steps a pass: 7 steps an epoch start a second pass."""
    out = tmp_path / "long"
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(out), "--epochs", "2",
                             "--steps-per-epoch", "7", *FAST, "--arch", "cnn", "--g-width", "4"]) == 0
    rows = read_rows(out / "metrics.csv")
    assert [(r["steps"], r["total_steps"]) for r in rows] == [("7", "7"), ("7", "14")]

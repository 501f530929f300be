"""bench/levers.py: run flags, the summary of a run's metrics.csv, reuse of finished runs' JSON."""
import csv
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import accuracy  # noqa: E402
import levers  # noqa: E402


def write_metrics(out, val_accs, trained_accs=None, steps_per_epoch=100):
    out.mkdir(parents=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "steps", "seconds", "val_acc", "val_acc_trained"])
        w.writeheader()
        for epoch, acc in enumerate(val_accs, 1):
            w.writerow({"epoch": epoch, "steps": steps_per_epoch, "seconds": 30, "val_acc": acc,
                        "val_acc_trained": trained_accs[epoch - 1] if trained_accs else ""})


def test_run_flags_add_the_lever_to_the_recipe_and_set_the_steps():
    flags = levers.run_flags("ema-entropy", 6000)
    assert flags.startswith(accuracy.SSGAN_ARGS)
    assert flags.endswith("--weight-average 0.999 --entropy-weight 0.1 --epochs 60")
    assert levers.run_flags("recipe", 3000) == f"{accuracy.SSGAN_ARGS} --epochs 30"


def test_run_summary_by_hand(tmp_path):
    # 12 validations, one per 100 steps; the best (0.64) first reached at step 500, again at 1,100
    vals = [0.50, 0.55, 0.58, 0.60, 0.64, 0.61, 0.60, 0.62, 0.63, 0.62, 0.64, 0.60]
    write_metrics(tmp_path / "run", vals)
    s = levers.run_summary("ema", 0, "--flags", tmp_path / "run")
    assert s["steps"] == 1200 and s["best_val_acc"] == 0.64 and s["best_step"] == 500
    assert s["last_val_acc"] == 0.60 and s["train_minutes"] == pytest.approx(6.0)
    # the validations after step 200: steps 300..1,200
    assert s["mean_val_last_1000"] == pytest.approx(sum(vals[2:]) / 10)
    assert s["val_curve"][0] == [100, 0.50] and s["val_curve"][-1] == [1200, 0.60]
    assert "best_val_acc_trained" not in s
    table = levers.markdown([s])
    assert "| 0 " in table and "`ema`" in table and "62.0 / – / 60.0 %" in table and "64.0 % (500)" in table
    assert table.splitlines()[-1].split("|")[-2].strip() == "–"  # no trained-weights column without an average
    write_metrics(tmp_path / "averaged", vals, trained_accs=[v - 0.05 for v in vals[:-1]] + [0.66])
    s = levers.run_summary("ema", 0, "--flags", tmp_path / "averaged")
    assert s["best_val_acc_trained"] == 0.66 and s["last_val_acc_trained"] == 0.66
    assert s["val_curve_trained"][0] == [100, pytest.approx(0.45)]
    assert "66.0 / 66.0 %" in levers.markdown([s])


def test_a_run_with_its_json_is_not_trained_again_and_new_flags_are(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    flags = levers.run_flags("recipe", 200)
    identity = {"data_version": "d1", "code_version": "c1"}
    monkeypatch.setattr(levers.accuracy, "run_identity", lambda module, data: identity)
    saved = {"lever": "recipe", "seed": 0, "flags": flags, "steps": 200, "best_val_acc": 0.6, **identity}
    (results / "seed0_recipe_200.json").write_text(json.dumps(saved))
    calls = []
    monkeypatch.setattr(levers.subprocess, "run", lambda argv, **kw: calls.append(argv) or
                        type("Done", (), {"returncode": 1})())
    assert levers.train_run("recipe", 0, 200, tmp_path / "data", tmp_path / "work", results, 1) == saved
    assert calls == []
    # other flags, other data, other code, or a JSON that does not say: each trained again (a failing stand-in)
    for changed in ({"flags": "--older flags"}, {"data_version": "d2"}, {"code_version": "c0"}, {"code_version": None}):
        (results / "seed0_recipe_200.json").write_text(json.dumps({**saved, **changed}))
        with pytest.raises(SystemExit, match="train_ssgan.py failed"):
            levers.train_run("recipe", 0, 200, tmp_path / "data", tmp_path / "work", results, 1)
    assert len(calls) == 4 and "--resume" not in calls[0] and calls[0][-1] == "2"


def test_a_longer_run_continues_the_shorter_one_unless_the_learning_rate_decays(tmp_path, monkeypatch):
    import engine
    monkeypatch.setattr(levers.accuracy, "run_identity", lambda module, data: {})
    for lever in ("ema", "ema-decay"):
        run = tmp_path / "work" / "seed0" / f"{lever}_100"
        run.mkdir(parents=True)
        engine.save_checkpoint({"format": engine.CHECKPOINT_FORMAT, "epoch": 1}, run / "last.pt")
    calls = []
    monkeypatch.setattr(levers.subprocess, "run", lambda argv, **kw: calls.append(argv) or
                        type("Done", (), {"returncode": 1})())
    for lever in ("ema", "ema-decay"):
        with pytest.raises(SystemExit):
            levers.train_run(lever, 0, 200, tmp_path / "data", tmp_path / "work", tmp_path, 1)
    ema, decay = calls
    assert ema[-3:] == ["--epochs", "2", "--resume"] and (tmp_path / "work" / "seed0" / "ema_200" / "last.pt").exists()
    assert "--resume" not in decay and not (tmp_path / "work" / "seed0" / "ema-decay_200").exists()


def test_steps_must_be_whole_validations(capsys, tmp_path):
    assert levers.main(["--data-src", str(tmp_path), "--steps", "150"]) == 2
    assert "multiple of 100" in capsys.readouterr().err

"""The article's recipe as a benchmark: bench/pack_data.py's pack for it, bench/accuracy.py's
--preset article and bench/gpu_article.py, which runs that preset as GPU jobs of under 10 minutes each."""
import json
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import pack_data  # noqa: E402
from test_bench_accuracy import kaggle_zips, packed_mib  # noqa: E402


def decoded(folder, zip_name: str) -> dict:
    from PIL import Image
    with zipfile.ZipFile(folder / zip_name) as zf:
        return {name: np.asarray(Image.open(zf.open(name))) for name in zf.namelist()}


def test_pack_data_optimize_keeps_every_pixel_in_fewer_bytes_and_pack_json_says_what_is_inside(tmp_path):
    src = kaggle_zips(tmp_path / "src", per_class=8, unlabeled=8, size=(64, 64))
    argv = ["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"), "--size", "48"]
    assert pack_data.main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert pack_data.main([*argv, "--out", str(tmp_path / "opt"), "--optimize"]) == 0
    assert packed_mib(tmp_path / "opt") < packed_mib(tmp_path / "plain")
    for name in ("train.zip", "test1.zip"):
        plain, opt = decoded(tmp_path / "plain", name), decoded(tmp_path / "opt", name)
        assert plain.keys() == opt.keys() and all(np.array_equal(plain[k], opt[k]) for k in plain)
    info = json.loads((tmp_path / "opt" / "pack.json").read_text())
    assert {k: info[k] for k in ("labeled_images", "unlabeled_images", "size", "quality", "optimize")} == {
        "labeled_images": 16, "unlabeled_images": 8, "size": 48, "quality": 90, "optimize": True}
    assert info["mib"] == round(packed_mib(tmp_path / "opt"), 1)


def test_pack_data_quality_steps_of_5_and_the_estimate_that_writes_nothing(tmp_path, capsys):
    src = kaggle_zips(tmp_path / "src", per_class=8, unlabeled=8, size=(64, 64))
    argv = ["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"), "--size", "48"]
    for q in (90, 85):
        assert pack_data.main([*argv, "--out", str(tmp_path / f"q{q}"), "--quality", str(q)]) == 0
    cap = (packed_mib(tmp_path / "q90") + packed_mib(tmp_path / "q85")) / 2  # room for 85, not for 90
    capsys.readouterr()
    assert pack_data.main([*argv, "--out", str(tmp_path / "fit"), "--max-mib", str(cap), "--quality-step", "5"]) == 0
    assert "JPEG quality 85" in capsys.readouterr().out  # steps of 10 would have gone down to 80
    assert pack_data.main([*argv, "--estimate", "--quality-step", "5", "--max-mib", str(cap)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("16 labeled + 8 unlabeled images at 48 px")
    assert [int(line.split()[1].rstrip(":")) for line in lines[1:]] == [90, 85, 80, 75, 70, 65, 60, 55, 50]
    assert lines[1].endswith("(over --max-mib)") and not lines[2].endswith("(over --max-mib)")
    assert pack_data.main(argv) == 2  # without --estimate, --out is required
    assert "--out FOLDER is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# bench/accuracy.py --preset article and bench/gpu_article.py

import accuracy  # noqa: E402
import gpu_article  # noqa: E402


def test_article_preset_trains_the_notebooks_recipe_flag_by_flag():
    args = accuracy.parse_args(["--preset", "article"])
    assert (args.image_size, args.seeds, args.models, args.jobs) == (224, [0, 1, 2], ["supervised-article", "ssgan"], 1)
    ssgan = accuracy.learnt_flags("train_ssgan", args.ssgan_args.split())
    # SemiSupervisedGAN.ipynb, cell 5
    assert {k: ssgan[k] for k in ("batch_size", "labeled_batch_size", "lr", "lr_g", "beta1", "g_loss", "flip",
                                  "translate", "unit_input", "bn_passes", "fake_bn_stats", "g_stride4", "g_width",
                                  "z_dim", "weight_average", "lr_decay_start", "steps_per_epoch", "epochs")} == {
        "batch_size": 64, "labeled_batch_size": 100, "lr": 2e-3, "lr_g": None, "beta1": 0.5, "g_loss": "article",
        "flip": False, "translate": 0, "unit_input": True, "bn_passes": "separate", "fake_bn_stats": True,
        "g_stride4": True, "g_width": 64, "z_dim": 100, "weight_average": 0.0, "lr_decay_start": 1.0,
        "steps_per_epoch": 550, "epochs": 14}
    assert ssgan["steps_per_epoch"] * ssgan["epochs"] == 7_700
    # cell 3: SGD 1e-3, momentum 0.9, weight decay 1e-4 (the optimizer's defaults), 200 steps of all 100 labels
    baseline = accuracy.learnt_flags("train_supervised", args.article_args.split())
    assert {k: baseline[k] for k in ("optimizer", "lr", "batch_size", "epochs", "steps_per_epoch", "flip",
                                     "unit_input", "weight_average")} == {
        "optimizer": "sgd", "lr": 1e-3, "batch_size": 100, "epochs": 200, "steps_per_epoch": None, "flip": False,
        "unit_input": True, "weight_average": 0.0}


def test_next_run_resumes_first_then_starts_the_first_that_fits():
    pending = [(0, "ssgan"), (0, "supervised-article"), (1, "ssgan")]
    expected = {"ssgan": 8.5, "supervised-article": 3.0}
    assert gpu_article.next_run(pending, 9.0, expected, set(), started=False) == (0, "ssgan")
    assert gpu_article.next_run(pending, 5.0, expected, set(), started=True) == (0, "supervised-article")
    assert gpu_article.next_run(pending, 2.0, expected, set(), started=True) is None
    # nothing fits and the call has trained nothing yet: the first starts, a later call goes on with it
    assert gpu_article.next_run(pending, 2.0, expected, set(), started=False) == (0, "ssgan")
    assert gpu_article.next_run(pending, 0.5, expected, {(1, "ssgan")}, started=True) == (1, "ssgan")
    assert gpu_article.next_run([], 9.0, expected, set(), started=False) is None


def test_expected_minutes_are_the_longest_finished_run_plus_overhead(tmp_path):
    assert gpu_article.expected_minutes(tmp_path, "ssgan", 8.5) == 8.5
    for seed, minutes in ((0, 7.0), (1, 7.5)):
        (tmp_path / f"seed{seed}_ssgan.json").write_text(json.dumps({"train_minutes": minutes}))
    (tmp_path / "seed0_supervised-article.json").write_text(json.dumps({"train_minutes": 2.0}))
    assert gpu_article.expected_minutes(tmp_path, "ssgan", 8.5) == 7.5 + gpu_article.OVERHEAD_MINUTES
    assert gpu_article.expected_minutes(tmp_path, "supervised-article", 3.0) == 2.0 + gpu_article.OVERHEAD_MINUTES
    # a run one call trained from start to end: its measured wall minutes, start-up and scoring included
    (tmp_path / "seed2_ssgan.json").write_text(json.dumps({"train_minutes": 6.0, "wall_minutes": 7.2}))
    assert gpu_article.expected_minutes(tmp_path, "ssgan", 8.5) == 7.2


def test_gpu_article_dry_run_stops_at_its_deadline_and_the_next_call_finishes(tmp_path, capsys, monkeypatch):
    """The driver's dry run on tiny data: a call too short for any run stops it and scores nothing;
    the next call goes on, scores every run, writes the tables and copies what comes back. Label
    seed 0's two runs stand for the six (the loop is the same; each run is a few seconds of imports)."""
    monkeypatch.setattr(gpu_article, "ORDER", gpu_article.ORDER[:2])
    src = kaggle_zips(tmp_path / "src", per_class=20, unlabeled=30)
    assert pack_data.main(["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"),
                           "--out", str(tmp_path / "packed"), "--size", "40"]) == 0
    argv = ["--dry-run", "--data-src", str(tmp_path / "packed" / "train.zip"),
            "--unlabeled-src", str(tmp_path / "packed" / "test1.zip"), "--work", str(tmp_path / "w"),
            "--copy-to", str(tmp_path / "out"), "--accuracy-args", "--split 8 8 8 --seeds 0",
            "--ssgan-extra", "--batch-size 4 --labeled-batch-size 4 --epochs 1 --steps-per-epoch 1 --workers 1",
            "--baseline-extra", "--epochs 1 --workers 1"]
    assert gpu_article.main([*argv, "--minutes", "0.02"]) == 0  # about a second: not even torch's import
    out = capsys.readouterr().out
    assert "seed 0 ssgan: starting" in out and "stopped at the deadline" in out
    assert "0 of 2 runs scored; to go: seed 0 ssgan, seed 0 supervised-article" in out
    assert not list((tmp_path / "w" / "results").glob("accuracy_article_runs/*.json"))

    assert gpu_article.main(argv) == 0
    results = tmp_path / "w" / "results"
    report = json.loads((results / "accuracy_article.json").read_text())
    assert sorted((r["seed"], r["model"]) for r in report["runs"]) == sorted(gpu_article.ORDER)
    assert report["config"]["image_size"] == 64 and report["config"]["device"] == "cpu"
    ssgan = next(r for r in report["runs"] if r["model"] == "ssgan")
    assert ssgan["steps"] == 1 and "--bn-passes separate" in ssgan["args"] and "--amp" not in ssgan["args"]
    # each trained start to end by the second call (the first stopped seed 0's SSGAN before its first
    # epoch was saved): their wall minutes are what the next call expects
    assert all(json.loads(p.read_text())["wall_minutes"] > 0 for p in (results / "accuracy_article_runs").iterdir())
    data = json.loads((results / "accuracy_article_data.json").read_text())
    assert data["pack"]["size"] == 40 and data["prepared"]["seed0"]["labeled"] == 8
    assert sorted(p.name for p in (tmp_path / "out" / "results" / "accuracy_article_runs").iterdir()) == sorted(
        f"seed{s}_{m}.json" for s, m in gpu_article.ORDER)
    assert (tmp_path / "out" / "results" / "accuracy_article.md").exists()
    assert (tmp_path / "out" / "logs" / "seed0_supervised-article.log").exists()


def test_the_224_px_samples_grid_is_halved_to_at_most_1024_px(tmp_path):
    from PIL import Image
    Image.new("RGB", (1810, 1810), (200, 30, 30)).save(tmp_path / "grid.png")  # 8 x (224 + 2) + 2
    Image.new("RGB", (274, 274)).save(tmp_path / "small.png")  # 32 px: left alone
    gpu_article.shrink(tmp_path / "grid.png")
    gpu_article.shrink(tmp_path / "small.png")
    gpu_article.shrink(tmp_path / "absent.png")
    assert Image.open(tmp_path / "grid.png").size == (905, 905) and Image.open(tmp_path / "small.png").size == (274, 274)


def test_gpu_article_stops_at_a_failed_run_and_says_so(tmp_path, capsys):
    src = kaggle_zips(tmp_path / "src", per_class=20, unlabeled=30)
    assert gpu_article.main(["--dry-run", "--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"),
                             "--work", str(tmp_path / "w"), "--accuracy-args", "--split 8 8 8",
                             "--ssgan-extra", "--g-width 0"]) == 1
    out = capsys.readouterr().out
    assert "seed 0 ssgan: starting" in out and "FAILED (exit 2)" in out and "--g-width: " in out
    assert "0 of 6 runs scored" in out and "seed 0 supervised-article: starting" not in out

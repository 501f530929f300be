"""bench/accuracy.py (tables, presets, runs side by side) and bench/pack_data.py."""
import io
import json
import sys

import numpy as np

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import accuracy  # noqa: E402


def rows():
    acc = {("supervised", 0): 0.60, ("supervised", 1): 0.58, ("ssgan", 0): 0.66, ("ssgan", 1): 0.61,
           ("supervised-article", 0): 0.63, ("supervised-article", 1): 0.62}
    return [{"seed": s, "model": m, "out": f"/runs/seed{s}/{m}", "args": f"--flags-of {m}", "epochs": 3,
             "steps": 150, "train_minutes": 8.0, "test_acc": a, "test_ci95": [a - 0.03, a + 0.03],
             "best_val_acc": a + 0.01, "best_epoch": 2, "best_step": 100,
             "val_curve": [[50, 1.0, 0.5], [100, 2.0, a + 0.01], [150, 3.0, a]]} for (m, s), a in acc.items()]


def test_gains_are_paired_by_seed():
    summary = accuracy.summarize(rows(), ["supervised", "ssgan", "supervised-article"])
    assert summary["ssgan"]["mean"] == pytest.approx(0.635) and summary["ssgan"]["n"] == 2
    gain = summary["gains"]["ssgan - supervised"]
    assert gain["per_seed"] == pytest.approx([0.06, 0.03])
    assert gain["mean"] == pytest.approx(0.045) and gain["std"] == pytest.approx(0.0212132, abs=1e-6)
    assert summary["gains"]["ssgan - supervised-article"]["per_seed"] == pytest.approx([0.03, -0.01])
    assert list(accuracy.summarize(rows(), ["supervised", "ssgan"])["gains"]) == ["ssgan - supervised"]


def cells(text: str) -> list[list[str]]:
    """The rows of every markdown table in `text`, cells stripped (separator lines left out)."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| ")]


def test_markdown_lists_every_model_gain_and_run():
    report = {"summary": accuracy.summarize(rows(), ["supervised", "ssgan", "supervised-article"]),
              "config": {"image_size": 32, "device": "cpu", "seeds": [0, 1],
                         "models": ["supervised", "ssgan", "supervised-article"]},
              "machine": {"cpu": "test cpu", "cores": 2, "gpu": None, "torch": "x", "date": "today"},
              "runs": rows()}
    for run, cpu in zip(report["runs"], ("box A", "box B", "box A", "box A")):  # the last two: not recorded
        run["machine"] = {"cpu": cpu, "gpu": None}
    text = accuracy.markdown(report)
    assert "\nRuns trained on: box A (3 runs), box B (1 run), not recorded (2 runs).\n" in text
    table = cells(text)
    assert ["ssgan", "`--flags-of ssgan`", "63.5 ± 3.5 % (n=2)"] in table
    assert ["ssgan - supervised", "+4.5 ± 2.1 points", "+6.0, +3.0"] in table
    header = ["seed", "model", "test acc (95 % CI)", "best val acc", "best step", "steps", "train min"]
    assert header in table  # the columns of BENCHMARKS.md's per-run table
    runs = table[table.index(header) + 1:]
    assert len(runs) == 6 + 1 + 6  # the six runs, then the curve table's header and six rows
    assert runs[0] == ["0", "supervised", "60.0 % (57.0–63.0)", "61.0 %", "100", "150", "8.0"]
    # Each curve at 1/4, 1/2, 5/6 and all of its 150 steps: the validations at or before 37.5, 75,
    # 125 and 150 steps are none, step 50, step 100 and step 150; the last sixth (> 125) holds step 150.
    curves = table[table.index(["seed", "model", "val at 1/4, 1/2, 5/6 and all of the steps",
                                "mean val, last sixth of the steps"]) + 1:]
    assert curves[0] == ["0", "supervised", "– / 50.0 / 61.0 / 60.0 %", "60.0 %"]
    assert curves[3] == ["1", "ssgan", "– / 50.0 / 62.0 / 61.0 %", "61.0 %"]


def test_missing_data_is_one_line_naming_the_flag_and_the_file(tmp_path, capsys):
    assert accuracy.main(["--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-src PATH is required" in err[0]
    shared = kaggle_zips(tmp_path / "k", per_class=2, unlabeled=2)
    for argv, named in ((["--data-src", str(tmp_path / "no.zip")], f"--data-src {tmp_path / 'no.zip'}"),
                        (["--data-src", str(shared / "train.zip"), "--unlabeled-src", str(tmp_path / "t.zip")],
                         f"--unlabeled-src {tmp_path / 't.zip'}")):
        assert accuracy.main([*argv, "--work", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"accuracy.py: error: {named}: no such file or folder"]
    assert not (tmp_path / "w").exists()  # nothing prepared


# ----------------------------------------------------------------------------------------------
# Presets, parallel runs, packed data

import zipfile  # noqa: E402

from conftest import jpeg_bytes  # noqa: E402

import pack_data  # noqa: E402


def kaggle_zips(folder, per_class=20, unlabeled=30, size=(40, 40)):
    """train.zip (train/cat.N.jpg, train/dog.N.jpg) and test1.zip (test1/N.jpg), Kaggle's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "train.zip", "w") as zf:
        for k, cls in enumerate(("cat", "dog")):
            for i in range(per_class):
                zf.writestr(f"train/{cls}.{i}.jpg", jpeg_bytes(1000 * k + i, size=size))
    with zipfile.ZipFile(folder / "test1.zip", "w") as zf:
        for i in range(1, unlabeled + 1):
            zf.writestr(f"test1/{i}.jpg", jpeg_bytes(5000 + i, size=size))
    return folder


def test_preset_values_are_defaults_that_explicit_flags_override():
    args = accuracy.parse_args(["--preset", "gpu"])
    assert (args.device, args.jobs, args.threads) == ("cuda", 9, 1)
    assert args.ssgan_args == accuracy.GPU_SSGAN_ARGS and args.work.endswith("bench_accuracy_gpu")
    assert args.supervised_args.endswith(accuracy.KEPT_LEVERS) and "--epochs 120" in args.supervised_args
    args = accuracy.parse_args(["--preset", "gpu-224", "--jobs", "1", "--seeds", "3"])
    assert (args.image_size, args.jobs, args.seeds, args.threads) == (224, 1, [3], 4)
    assert args.ssgan_args.endswith(accuracy.KEPT_LEVERS)
    args = accuracy.parse_args([])  # the CPU default: two single-threaded runs at a time
    assert (args.device, args.jobs, args.threads, args.preset) == ("cpu", 2, 1, None)
    assert "--g-width 16" in args.ssgan_args and "--max-minutes" not in args.ssgan_args
    for flags in (args.ssgan_args, args.supervised_args):  # 24,000 steps with the kept levers, no stale budget
        assert flags.split().count("--epochs") == 1 and "--epochs 240" in flags and flags.endswith(accuracy.KEPT_LEVERS)


def test_a_saved_run_is_reused_only_with_the_same_flags_data_and_code(tmp_path, capsys):
    # a run trained with "--epochs 120 ... --epochs 240" (argparse: the last wins) is the default's run
    typed = accuracy.LONG_SSGAN_ARGS.replace("--epochs 240", "--epochs 120") + " --epochs 240"
    same = {"data_version": "d1", "code_version": "c1"}
    (tmp_path / "seed2_ssgan.json").write_text(json.dumps({"seed": 2, "model": "ssgan", "args": typed,
                                                           "image_size": 32, "test_acc": 0.7, **same}))
    row = accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS, 32, same)
    assert row["test_acc"] == 0.7 and row["args"] == accuracy.LONG_SSGAN_ARGS  # shown as the flags asked for
    assert f"[seed 2] ssgan: reused from {tmp_path / 'seed2_ssgan.json'}" in capsys.readouterr().out
    assert accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS + " --workers 3", 32, same) is not None
    assert accuracy.saved_run(tmp_path, 2, "ssgan", typed.replace(" --epochs 240", ""), 32, same) is None  # 12,000 steps
    assert accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS + " --max-minutes 6", 32, same) is None
    assert accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS, 64, same) is None  # another image size
    assert accuracy.saved_run(tmp_path, 1, "ssgan", accuracy.LONG_SSGAN_ARGS, 32, same) is None  # no such file
    capsys.readouterr()
    assert accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS, 32, {**same, "data_version": "d2"}) is None
    assert accuracy.saved_run(tmp_path, 2, "ssgan", accuracy.LONG_SSGAN_ARGS, 32, {**same, "code_version": "c2"}) is None
    out = capsys.readouterr().out.splitlines()
    assert out == [f"[seed 2] ssgan: not reusing {tmp_path / 'seed2_ssgan.json'}: other data_version",
                   f"[seed 2] ssgan: not reusing {tmp_path / 'seed2_ssgan.json'}: other code_version"]


def test_code_version_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    for name in ("trainer.py", *accuracy.CODE_FILES):
        (tmp_path / name).write_text(f'"""{name}"""\ndef f():\n    return 1\n')
    monkeypatch.setattr(accuracy, "ROOT", tmp_path)
    base = accuracy.code_version("trainer")
    assert len(base) == 16 and base == accuracy.code_version("trainer")
    (tmp_path / "losses.py").write_text('"""Another text."""\n# a comment\ndef f():\n    """f."""\n    return  1\n')
    assert accuracy.code_version("trainer") == base
    (tmp_path / "trainer.py").write_text('def f():\n    return 1\np.add_argument("--x", help="a")\n')
    with_help = accuracy.code_version("trainer")
    (tmp_path / "trainer.py").write_text('def f():\n    return 1\np.add_argument("--x", help="b, reworded")\n')
    assert accuracy.code_version("trainer") == with_help != base
    (tmp_path / "losses.py").write_text("def f():\n    return 2\n")
    assert accuracy.code_version("trainer") != base


def test_data_version_follows_the_images_not_where_they_lay(tmp_path):
    header = "split,path,label,source,sha256\n"
    row = "labeled,labeled/cat/a.jpg,cat,{src}:train/cat.0.jpg,{sha}\n"
    versions = []
    for src, sha, size in (("/a/train.zip", "11", 32), ("/b/train.zip", "11", 32), ("/a/train.zip", "12", 32),
                           ("/a/train.zip", "11", 64)):
        data = tmp_path / f"{len(versions)}"
        data.mkdir()
        (data / "manifest.csv").write_text(header + row.format(src=src, sha=sha))
        (data / "summary.json").write_text(json.dumps({"image_size": size, "grayscale": False}))
        versions.append(accuracy.data_version(data))
    assert versions[0] == versions[1]  # moved: the same images
    assert len({versions[0], versions[2], versions[3]}) == 3  # re-encoded source file, another size


def test_quick_trains_in_its_own_folder_for_200_steps():
    args = accuracy.parse_args(["--quick", "--work", "/w"])
    assert args.work == "/w_quick" and args.seeds == [0]
    assert args.ssgan_args == accuracy.LONG_SSGAN_ARGS + " --epochs 2"  # argparse: the last --epochs wins


def packed_mib(folder) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.zip")) / 2 ** 20


def test_pack_data_reencodes_in_kaggle_layout_and_withholds_labels(tmp_path, capsys):
    from PIL import Image
    src = kaggle_zips(tmp_path / "src", per_class=5, unlabeled=4)
    assert pack_data.main(["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"),
                           "--out", str(tmp_path / "p"), "--size", "16", "--train-per-class", "3",
                           "--unlabeled", "6"]) == 0
    assert "JPEG quality 90" in capsys.readouterr().out  # fits: the quality asked for
    with zipfile.ZipFile(tmp_path / "p" / "train.zip") as zf:
        assert sorted(zf.namelist()) == sorted(f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3))
        assert Image.open(zf.open("train/dog.2.jpg")).size == (16, 16)
    with zipfile.ZipFile(tmp_path / "p" / "test1.zip") as zf:
        # test1.zip's 4 images come first, then 2 of the train images left over (cat.3, cat.4)
        assert sorted(zf.namelist()) == [f"test1/{i}.jpg" for i in (1, 2, 3, 4, 5, 6)]
        pixels = lambda data: np.asarray(Image.open(data).convert("RGB").resize((16, 16)), float)  # noqa: E731
        assert np.abs(pixels(zf.open("test1/1.jpg")) - pixels(io.BytesIO(jpeg_bytes(5001, size=(40, 40))))).mean() < 8
        assert np.abs(pixels(zf.open("test1/5.jpg")) - pixels(io.BytesIO(jpeg_bytes(3, size=(40, 40))))).mean() < 8


def test_pack_data_lowers_the_jpeg_quality_to_fit_max_mib(tmp_path, capsys):
    src = kaggle_zips(tmp_path / "src", per_class=8, unlabeled=8, size=(64, 64))
    argv = ["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"), "--size", "48"]
    assert pack_data.main([*argv, "--out", str(tmp_path / "q90")]) == 0
    assert pack_data.main([*argv, "--out", str(tmp_path / "q50"), "--quality", "50"]) == 0
    at_90, at_50 = packed_mib(tmp_path / "q90"), packed_mib(tmp_path / "q50")
    assert at_50 < 0.8 * at_90
    cap = (at_50 + at_90) / 2  # too small for quality 90, enough for 50
    capsys.readouterr()
    assert pack_data.main([*argv, "--out", str(tmp_path / "fit"), "--max-mib", str(cap)]) == 0
    quality = int(capsys.readouterr().out.split("JPEG quality ")[1])
    assert 50 <= quality < 90 and packed_mib(tmp_path / "fit") <= cap
    with zipfile.ZipFile(tmp_path / "fit" / "test1.zip") as zf:
        assert len(zf.namelist()) == 8


def test_pack_data_stops_with_one_line_when_even_the_lowest_quality_is_too_big(tmp_path, capsys):
    src = kaggle_zips(tmp_path / "src", per_class=5, unlabeled=4)
    with pytest.raises(SystemExit, match=r"14 images at 64 px exceed --max-mib 0.001 even at JPEG quality 50; "
                                         r"lower --size, --train-per-class or --unlabeled"):
        pack_data.main(["--data-src", str(src / "train.zip"), "--unlabeled-src", str(src / "test1.zip"),
                        "--out", str(tmp_path / "p"), "--max-mib", "0.001"])
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == []  # nothing half-written kept
    assert pack_data.main(["--out", str(tmp_path / "p")]) == 2
    assert pack_data.main(["--data-src", str(tmp_path / "train.zip"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["pack_data.py: error: --data-src PATH is required: Kaggle's train.zip",
                   f"pack_data.py: error: --data-src {tmp_path / 'train.zip'}: not found or not a zip file"]


def test_gpu_preset_trains_every_model_side_by_side_and_scores_once(tmp_path):
    """The GPU preset's path on the CPU with tiny budgets: data prepared once, one child process
    per (seed, model), then every best checkpoint scored and the tables written."""
    shared = kaggle_zips(tmp_path / "shared", per_class=20, unlabeled=30)
    tiny = " --epochs 1 --steps-per-epoch 2 --batch-size 4"
    argv = [
        "--preset", "gpu", "--device", "cpu", "--data-src", str(shared / "train.zip"),
        "--unlabeled-src", str(shared / "test1.zip"), "--work", str(tmp_path / "w"),
        "--results", str(tmp_path / "r"), "--seeds", "0", "--split", "8", "8", "8",
        "--ssgan-args", accuracy.GPU_SSGAN_ARGS + tiny + " --labeled-batch-size 4",
        "--supervised-args", accuracy.GPU_SUPERVISED_ARGS + tiny, "--article-args", "--epochs 1 --workers 1"]
    assert accuracy.main(argv) == 0
    report = json.loads((tmp_path / "r" / "accuracy_gpu.json").read_text())
    assert report["config"]["preset"] == "gpu" and report["config"]["jobs"] == 9
    runs = {r["model"]: r for r in report["runs"]}
    assert set(runs) == {"supervised-article", "supervised", "ssgan"}
    assert runs["ssgan"]["steps"] == 2 and runs["supervised"]["steps"] == 2
    assert all(0 <= r["test_acc"] <= 1 for r in runs.values())
    for model in runs:  # each trained in its own child process, its output in a log
        assert "epoch 1/1" in (tmp_path / "w" / "seed0" / f"{model}.log").read_text()
    assert (tmp_path / "r" / "accuracy_gpu_curves.png").stat().st_size > 0
    assert "ssgan - supervised" in [row[0] for row in cells((tmp_path / "r" / "accuracy_gpu.md").read_text())]

    # A rerun with other flags finds the run folder of the old ones: an error, not a reused run.
    changed = argv + ["--supervised-args", accuracy.GPU_SUPERVISED_ARGS + tiny + " --epochs 2"]  # the last one wins
    with pytest.raises(SystemExit, match=r"seed0/supervised was trained as another run: --epochs 1 \(now 2\)"):
        accuracy.main(changed)
    assert "epoch 2/2" not in (tmp_path / "w" / "seed0" / "supervised.log").read_text()

    # The scored runs' JSON is enough for a rerun: no training, no scoring, the same tables.
    saved = json.loads((tmp_path / "r" / "accuracy_gpu_runs" / "seed0_ssgan.json").read_text())
    assert saved["test_acc"] == runs["ssgan"]["test_acc"] and [s for s, _, _ in saved["val_curve"]] == [2]
    assert saved["machine"]["cpu"] == report["machine"]["cpu"] and saved["machine"]["gpu"] is None
    assert saved["data_version"] == accuracy.data_version(tmp_path / "w" / "data_seed0")
    epoch = engine_metrics(tmp_path / "w" / "seed0" / "ssgan")[0]
    assert saved["generator_curve"] == [[2, float(epoch["d_fake"]), float(epoch["loss_g"])]]
    assert "generator_curve" not in json.loads((tmp_path / "r" / "accuracy_gpu_runs" / "seed0_supervised.json").read_text())
    assert saved["code_version"] == accuracy.code_version("train_ssgan")
    import shutil

    import engine
    shutil.rmtree(tmp_path / "w" / "seed0")
    assert accuracy.main(argv) == 0
    assert not (tmp_path / "w" / "seed0").exists()
    assert json.loads((tmp_path / "r" / "accuracy_gpu.json").read_text())["runs"] == report["runs"]

    # The same zips re-encoded in place (other bytes, the same names): prepared again, the run trains.
    kaggle_zips(tmp_path / "shared", per_class=20, unlabeled=30, size=(44, 44))
    one = argv + ["--models", "ssgan", "--jobs", "1"]
    assert accuracy.main(one) == 0
    assert (tmp_path / "w" / "seed0" / "ssgan" / "last.pt").exists()
    again = json.loads((tmp_path / "r" / "accuracy_gpu_runs" / "seed0_ssgan.json").read_text())
    assert again["data_version"] != saved["data_version"]
    assert accuracy.main(one) == 0  # now the same run: reused, not trained
    assert len(engine.read_metrics(tmp_path / "w" / "seed0" / "ssgan" / "metrics.csv")) == 1
    # --no-reuse trains the same run again, from an empty folder
    (tmp_path / "w" / "seed0" / "ssgan" / "marker").write_text("")
    assert accuracy.main(one + ["--no-reuse"]) == 0
    assert not (tmp_path / "w" / "seed0" / "ssgan" / "marker").exists()
    assert (tmp_path / "w" / "seed0" / "ssgan" / "last.pt").exists()


def engine_metrics(run):
    import engine
    return engine.read_metrics(run / "metrics.csv")


def test_mnist_preset_prepares_the_given_test_folder_and_reports_errors(tmp_path):
    """The MNIST preset's path with tiny budgets on drawn one-channel digits in mnist_png.zip's
    layout (train/<digit>/, test/<digit>/): test/ scored as given, errors in the tables."""
    import zipfile

    from PIL import Image
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "digits.zip", "w") as zf:
        for split, n in (("train", 12), ("test", 3)):
            for d in range(3):
                for i in range(n):
                    pixels = rng.integers(0, 30, (28, 28)).astype(np.uint8)
                    pixels[:, 4 + 6 * d:8 + 6 * d] = 230
                    buf = io.BytesIO()
                    Image.fromarray(pixels, "L").save(buf, "PNG")
                    zf.writestr(f"{split}/{d}/{i}.png", buf.getvalue())
    tiny = " --epochs 1 --steps-per-epoch 2 --batch-size 6 --workers 1"
    code = accuracy.main([
        "--preset", "mnist", "--jobs", "1", "--data-src", str(tmp_path / "digits.zip"), "--work", str(tmp_path / "w"),
        "--results", str(tmp_path / "r"), "--seeds", "0", "--split", "6", "6", "0",
        "--ssgan-args", f"{accuracy.MNIST_COMMON} {accuracy.MNIST_SSGAN}{tiny}",
        "--supervised-args", accuracy.MNIST_COMMON + tiny + " --optimizer adam"])
    assert code == 0
    summary = json.loads((tmp_path / "w" / "data_seed0" / "summary.json").read_text())
    assert summary["counts"]["test"]["total"] == 9 and summary["grayscale"] and summary["test_folder"] == "test"
    report = json.loads((tmp_path / "r" / "accuracy_mnist.json").read_text())
    assert {r["model"] for r in report["runs"]} == {"supervised", "ssgan"} and report["config"]["image_size"] == 28
    table = cells((tmp_path / "r" / "accuracy_mnist.md").read_text())
    ssgan = next(row for row in table if row[0] == "ssgan")
    error = 100 * (1 - report["summary"]["ssgan"]["mean"])
    assert ssgan[2].startswith(f"{error:.2f} ± 0.00 %") and ssgan[3] == f"{error:.2f}"
    assert (tmp_path / "r" / "accuracy_mnist_curves.png").stat().st_size > 0
    assert (tmp_path / "r" / "accuracy_mnist_samples.png").stat().st_size > 0


def test_mnist_presets_run_one_at_a_time_on_both_cores_and_differ_only_in_steps():
    short, long = accuracy.parse_args(["--preset", "mnist"]), accuracy.parse_args(["--preset", "mnist-long"])
    assert (short.jobs, short.threads) == (long.jobs, long.threads) == (1, 2)
    assert short.supervised_args == long.supervised_args and short.work != long.work
    steps = {}
    for name, args in (("mnist", short), ("mnist-long", long)):
        flags = train_ssgan_parser().parse_args([*args.ssgan_args.split(), "--data", "d"])
        steps[name] = flags.epochs * flags.steps_per_epoch
        assert (flags.fm_target, flags.mlp_init, flags.lr_decay_start) == ("fresh", "default", 0.67)
    assert steps == {"mnist": 28_800, "mnist-long": 72_000}


def train_ssgan_parser():
    import train_ssgan
    return train_ssgan.get_args_parser()

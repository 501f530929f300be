"""bench/throughput.py: the loader table on a few generated Kaggle-named JPEGs, the ResNet18 step
table's ratios (the step itself is in test_runtime.py)."""
import json
import sys
from types import SimpleNamespace

import pytest

import dali_loaders
from conftest import ROOT, write_kaggle_folder

sys.path.insert(0, str(ROOT / "bench"))
import throughput  # noqa: E402


def test_loader_bench_prints_the_benchmarks_columns_and_ratios(tmp_path, capsys):
    write_kaggle_folder(tmp_path / "src", 6, size=(40, 40))
    out = tmp_path / "loader.json"
    assert throughput.main(["loader", "--data-src", str(tmp_path / "src"), "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["contender"]: r for r in report["rows"]}
    assert rows["decode ceiling"]["vs_ceiling"] == 1.0 and rows["baseline"]["vs_baseline"] == 1.0
    assert {"torch fallback (ours)", "decode ceiling, files pre-resized to 64"} <= set(rows)
    assert all(len(r["runs_images_per_s"]) == 2 for r in rows.values())  # --quick: 2 timed rounds
    if dali_loaders.dali_available():  # DALI on the pre-resized files: against the ceiling on those files
        pre = rows["DALI (ours), files pre-resized to 64"]
        assert pre["ceiling_images_per_s"] == rows["decode ceiling, files pre-resized to 64"]["images_per_s"]
    torch_row = rows["torch fallback (ours)"]
    assert torch_row["vs_baseline"] == torch_row["images_per_s"] / rows["baseline"]["images_per_s"]
    printed = capsys.readouterr().out
    assert "## Image loading: 12 JPEGs of src, 1 thread(s)" in printed  # --quick: up to 200, half per class
    header = next(line for line in printed.splitlines() if line.startswith("| output"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["output", "contender", "images/s", "vs ceiling",
                                                            "vs baseline"]


def test_loader_bench_names_a_missing_data_src(tmp_path, capsys):
    assert throughput.main(["loader", "--data-src", str(tmp_path / "train.zip")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"throughput.py: error: --data-src {tmp_path / 'train.zip'}: no such file or folder"]


def test_step_table_gives_rates_against_the_articles_step():
    def step(name, labeled, seconds):  # what step_table reads of a contender
        return SimpleNamespace(name=name, flags="", labeled=labeled, batch=64, times=seconds,
                               a=SimpleNamespace(consistency_weight=0, g_width=64))

    cells, rows = throughput.step_table("resnet18", [step("article's step", 100, [8.0, 6.0, 7.0]),
                                                     step("ours", 64, [5.0, 3.0, 3.5])])
    assert cells[0] == ["contender", "labeled + unlabeled per step", "step",
                        "steps/s (= unlabeled images/s) vs article", "images/s incl. labeled vs article"]
    assert cells[2] == ["ours", "64 + 64", "3.50 s", "2.00", f"{2 * 128 / 164:.2f}"]
    assert rows[1]["images_vs_first"] == pytest.approx(2 * 128 / 164)


def test_mlp_bench_times_the_same_arithmetic_at_every_depth():
    """The bare contender is the arithmetic of ssgan_step written out: from the same weights, inputs
    and noise, one step of each leaves the same weights."""
    import torch
    bare, step = throughput.MnistStep("bare", "bare"), throughput.MnistStep("step", "step")
    for contender in (bare, step):
        torch.manual_seed(5)
        contender.step()
    for a, b in ((bare.C, step.C), (bare.G, step.G)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), name
    assert not torch.equal(bare.C.layers[0].bias, throughput.MnistStep("fresh", "bare").C.layers[0].bias)


def test_mlp_bench_table_has_both_thread_counts(capsys):
    assert throughput.main(["step", "--arch", "mlp", "--quick"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 6 and all(row.split("|")[5].strip() for row in rows)
    assert [row.split("|")[5].strip() for row in rows[::3]] == ["1.00", "1.00"]  # each against its own bare row

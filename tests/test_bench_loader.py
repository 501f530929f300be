"""bench/loader_throughput.py on a few generated Kaggle-named JPEGs."""
import json
import sys

from conftest import ROOT, write_kaggle_folder

sys.path.insert(0, str(ROOT / "bench"))
import loader_throughput  # noqa: E402


def test_loader_bench_prints_the_benchmarks_columns_and_ratios(tmp_path, capsys):
    write_kaggle_folder(tmp_path / "src", 6, size=(40, 40))
    out = tmp_path / "loader.json"
    assert loader_throughput.main(["--data-src", str(tmp_path / "src"), "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 12  # --quick: up to 200 images, half cats, half dogs
    rows = {r["contender"]: r for r in report["rows"]}
    assert rows["decode ceiling"]["vs_ceiling"] == 1.0 and rows["baseline"]["vs_baseline"] == 1.0
    assert {"torch fallback (ours)", "decode ceiling, files pre-resized to 64"} <= set(rows)
    assert all(len(r["runs_images_per_s"]) == 2 for r in rows.values())  # --quick: 2 timed rounds
    torch_row = rows["torch fallback (ours)"]
    assert torch_row["vs_baseline"] == torch_row["images_per_s"] / rows["baseline"]["images_per_s"]
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| output"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["output", "contender", "images/s", "vs ceiling",
                                                            "vs baseline"]


def test_loader_bench_names_a_missing_data_src(tmp_path, capsys):
    assert loader_throughput.main(["--data-src", str(tmp_path / "train.zip")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"loader_throughput.py: error: --data-src {tmp_path / 'train.zip'}: no such file or folder"]

"""The article's recipe as a benchmark: bench/pack_data.py's pack for it, bench/accuracy.py's
--preset article and bench/gpu_article.py, which runs that preset over device calls."""
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

"""bench/reference_labels.py: the reference codes' labeled MNIST digits, as prepare_data.py's --labeled-list."""
import sys
import zipfile

import numpy as np
import pytest

import prepare_data
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import reference_labels  # noqa: E402

# 60 "digits" whose label is their position mod 10, 2 per class drawn. The expected positions were
# worked out by hand from the two generators' outputs:
# RandomState(1).permutation(60) starts 39 41 2 48 50 44 33 35 40 27 24 53 46 3 26 36 21 10 52 19 ...;
# paper: the first two of each class in that order (class 0: 50 then 40, class 1: 41 then 21, ...);
# port: one RandomState(0) shuffling class 0's positions [0, 10, ..., 50], then class 1's, ...
LABELS = np.arange(60) % 10
PAPER = [50, 40, 41, 21, 2, 52, 33, 53, 44, 24, 35, 55, 46, 26, 27, 17, 48, 38, 39, 19]
PORT = [50, 20, 11, 31, 32, 52, 53, 23, 24, 44, 35, 15, 6, 16, 57, 27, 38, 18, 19, 39]


def test_the_permutation_the_paper_comment_quotes():
    assert list(np.random.RandomState(1).permutation(60)[:6]) == [39, 41, 2, 48, 50, 44]


@pytest.mark.parametrize("code, expected", [("paper", PAPER), ("port", PORT)])
def test_each_code_draws_its_own_digits(code, expected):
    assert reference_labels.reference_positions(LABELS, code, count=2) == expected


def _mnist_like_zip(path, n=200):
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            zf.writestr(f"train/{i % 10}/{i}.png", b"")
        zf.writestr("test/3/0.png", b"")  # the test split never counts
    return path


def test_writes_a_list_of_member_paths_with_the_right_labels(tmp_path):
    out = tmp_path / "labels.txt"
    reference_labels.main(["--src", str(_mnist_like_zip(tmp_path / "m.zip")), "--code", "paper", "--out", str(out)])
    names = prepare_data.read_labeled_list(str(out))  # the comment line is not a name
    assert len(names) == len(set(names)) == 100
    for name in names:
        _, digit, file = name.split("/")
        assert int(file[:-4]) % 10 == int(digit)
    assert [name.split("/")[1] for name in names] == [str(c) for c in range(10) for _ in range(10)]


def test_refuses_a_zip_whose_names_are_not_idx_positions(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        zf.writestr("train/0/0.png", b"")
        zf.writestr("train/1/2.png", b"")  # position 1 missing
    with pytest.raises(SystemExit, match="without gaps"):
        reference_labels.main(["--src", str(tmp_path / "m.zip"), "--code", "port"])

"""prepare_data.py on the real Kaggle copy in ../shared, then every split through both loaders."""
import csv
import json

import pytest
import torch

import dali_loaders
import prepare_data
from conftest import SHARED_DATA, needs_shared_data

pytestmark = needs_shared_data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "data"
    assert prepare_data.main(["--src", str(SHARED_DATA / "train.zip"),
                              "--unlabeled-src", str(SHARED_DATA / "test1.zip"),
                              "--out", str(out)]) == 0
    return out


def test_real_data_splits(prepared):
    summary = json.loads((prepared / "summary.json").read_text())
    c = summary["counts"]
    assert c["labeled"] == {"total": 100, "cat": 50, "dog": 50}
    assert c["val"] == {"total": 1000, "cat": 500, "dog": 500}
    assert c["test"] == {"total": 1000, "cat": 500, "dog": 500}
    # 12,000 + 5,000 files, minus 2,100 drawn, minus the 13 exact duplicates of the shared copy
    assert summary["duplicates_dropped"] == 13 and summary["skipped"] == 0
    assert c["unlabeled"]["total"] == 17000 - 2100 - 13
    with open(prepared / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 17000 - 13
    assert len({r["sha256"] for r in rows}) == len(rows)  # so no image sits in two splits


@pytest.mark.parametrize("backend", ["torch"] + (["dali"] if dali_loaders.dali_available() else []))
def test_every_split_iterates(prepared, backend):
    expected = {"labeled": 100, "val": 1000, "test": 1000}
    for split, n in expected.items():
        loader = dali_loaders.labeled_loader(prepared / split, batch_size=256, image_size=32,
                                             train=False, backend=backend)
        labels = torch.cat([y for _, y in loader])
        assert labels.bincount().tolist() == [n // 2, n // 2], split
    loader = dali_loaders.unlabeled_loader(prepared / "unlabeled", batch_size=256, image_size=32,
                                           train=True, backend=backend)
    seen = 0
    for images in loader:
        assert images.shape == (256, 3, 32, 32)
        seen += images.shape[0]
    assert seen == (17000 - 2100 - 13) // 256 * 256

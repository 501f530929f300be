import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import the flat scripts (prepare_data, dali_loaders, ...)

@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Small models on 2 cores run faster on one thread: OpenMP threads that wait for each other
    make a 32 px ResNet forward up to 30x slower when anything else runs on the machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# Kaggle's train.zip and test1.zip: the folder DOGS_VS_CATS names, or ../shared/data/dogs-vs-cats.
SHARED_DATA = Path(os.environ.get("DOGS_VS_CATS", ROOT.parent / "shared" / "data" / "dogs-vs-cats"))
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "train.zip").exists(),
    reason=f"Kaggle's train.zip not found in {SHARED_DATA}: set DOGS_VS_CATS to the folder holding it to run "
           "these tests on the real photos")


def jpeg_bytes(seed: int, size=(24, 20), mode="RGB", fmt="JPEG", **save_kwargs) -> bytes:
    """A small random image with a per-seed colour, encoded in memory."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.integers(-40, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def write_kaggle_folder(folder: Path, n_per_class: int, classes=("cat", "dog"), size=(24, 20),
                        seed0=0) -> list[Path]:
    """cat.0.jpg, cat.1.jpg, ..., dog.0.jpg, ... each a distinct image."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, c in enumerate(classes):
        for i in range(n_per_class):
            p = folder / f"{c}.{i}.jpg"
            p.write_bytes(jpeg_bytes(seed0 + 1000 * k + i, size=size))
            paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared dataset: 8 labeled, 8 val, 8 test, 40 unlabeled images at 40x40."""
    root = tmp_path_factory.mktemp("tiny")
    write_kaggle_folder(root / "src", 32, size=(40, 40))
    import prepare_data
    assert prepare_data.main(["--src", str(root / "src"), "--out", str(root / "data"),
                              "--n-labeled", "8", "--n-val", "8", "--n-test", "8",
                              "--workers", "1"]) == 0
    return root / "data"

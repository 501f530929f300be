import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import prepare_data
from conftest import jpeg_bytes, write_kaggle_folder


def run(*argv) -> int:
    return prepare_data.main([str(a) for a in argv])


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="") as f:
        return {r["file"]: r["reason"] for r in csv.DictReader(f)}


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def small_split(src, out, *extra):
    return run("--src", src, "--out", out, "--n-labeled", 4, "--n-val", 4, "--n-test", 4,
               "--workers", 1, *extra)


def exif_rotated_jpeg() -> bytes:
    img = Image.open(io.BytesIO(jpeg_bytes(77, size=(30, 10))))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_splits_are_balanced_disjoint_and_complete(tmp_path):
    src = tmp_path / "src"
    write_kaggle_folder(src, 20)
    assert small_split(src, tmp_path / "out") == 0
    out = tmp_path / "out"
    rows = read_manifest(out)
    assert len(rows) == 40
    by_split = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r)
        assert (out / r["path"]).is_file()
    for split in ("labeled", "val", "test"):
        labels = [r["label"] for r in by_split[split]]
        assert labels.count("cat") == 2 and labels.count("dog") == 2
        assert len(list((out / split / "cat").iterdir())) == 2
    assert len(by_split["unlabeled"]) == 28
    assert all(r["label"] == "" for r in by_split["unlabeled"])
    # unlabeled names must not give the withheld label away
    assert not any("cat" in r["path"] or "dog" in r["path"] for r in by_split["unlabeled"])
    shas = [r["sha256"] for r in rows]
    assert len(set(shas)) == len(shas)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["labeled"] == {"total": 4, "cat": 2, "dog": 2}
    assert summary["counts"]["unlabeled"]["total"] == 28
    assert summary["classes"] == ["cat", "dog"]


def test_same_seed_same_manifest_and_label_seed_keeps_val_test(tmp_path):
    src = tmp_path / "src"
    write_kaggle_folder(src, 20)
    assert small_split(src, tmp_path / "a", "--seed", 3) == 0
    assert small_split(src, tmp_path / "b", "--seed", 3) == 0
    assert small_split(src, tmp_path / "c", "--seed", 3, "--label-seed", 9) == 0
    a, b, c = (read_manifest(tmp_path / x) for x in "abc")
    assert a == b

    def pick(rows, split):
        return sorted(r["source"] for r in rows if r["split"] == split)
    assert pick(a, "val") == pick(c, "val") and pick(a, "test") == pick(c, "test")
    assert pick(a, "labeled") != pick(c, "labeled")


def test_broken_files_are_listed_good_ones_kept_and_source_untouched(tmp_path):
    src = tmp_path / "src"
    good = write_kaggle_folder(src, 8)
    jpeg = jpeg_bytes(5)
    broken = {
        "cat.100.jpg": (b"", "empty file"),
        "cat.101.jpg": (jpeg[: len(jpeg) // 2], "cannot decode"),
        "dog.100.jpg": (b"this is not an image\n" * 10, "not a readable image"),
        "notes.txt": (b"hello", "unsupported file type .txt"),
        "._cat.5.jpg": (b"\x00\x05\x16\x07", "macOS resource fork"),
    }
    for name, (data, _) in broken.items():
        (src / name).write_bytes(data)
    converted = {  # readable but not RGB JPEG: kept, re-encoded as RGB JPEG
        "cat.200.jpg": jpeg_bytes(200, mode="L"),
        "cat.201.jpg": jpeg_bytes(201, mode="CMYK"),
        "dog.200.jpg": jpeg_bytes(202, fmt="PNG"),
        "dog.201.jpg": jpeg_bytes(203, mode="P", fmt="GIF"),
        "dog.202.jpg": exif_rotated_jpeg(),
    }
    for name, data in converted.items():
        (src / name).write_bytes(data)
    before = tree_digest(src)

    out = tmp_path / "out"
    assert small_split(src, out) == 0
    assert tree_digest(src) == before

    skipped = {Path(k.split(":", 1)[1]).name: v for k, v in read_skipped(out).items()}
    assert set(skipped) == set(broken)
    for name, (_, reason) in broken.items():
        assert skipped[name].startswith(reason), (name, skipped[name])

    rows = read_manifest(out)
    kept = {Path(r["source"].split(":", 1)[1]).name for r in rows}
    assert kept == {p.name for p in good} | set(converted)
    for r in rows:
        with Image.open(out / r["path"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            img.load()
    rotated = next(r for r in rows if r["source"].endswith("dog.202.jpg"))
    with Image.open(out / rotated["path"]) as img:
        assert img.size == (10, 30)  # upright: the EXIF rotation was applied once, here
        assert img.getexif().get(0x0112, 1) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == len(broken) and summary["reencoded"] == len(converted)


def test_duplicates_never_land_in_two_splits(tmp_path):
    src = tmp_path / "src"
    write_kaggle_folder(src, 10)
    (src / "cat.50.jpg").write_bytes((src / "cat.3.jpg").read_bytes())   # same label
    (src / "dog.50.jpg").write_bytes((src / "cat.4.jpg").read_bytes())   # conflicting label
    unl = tmp_path / "unl"
    unl.mkdir()
    (unl / "1.jpg").write_bytes((src / "dog.5.jpg").read_bytes())         # labeled copy wins
    (unl / "2.jpg").write_bytes(jpeg_bytes(999))
    (unl / "3.jpg").write_bytes(jpeg_bytes(999))                          # duplicate in unlabeled
    out = tmp_path / "out"
    assert small_split(src, out, "--unlabeled-src", unl) == 0
    rows = read_manifest(out)
    shas = [r["sha256"] for r in rows]
    assert len(shas) == len(set(shas)) == 20 + 1
    skipped = {Path(k.split(":", 1)[1]).name: v for k, v in read_skipped(out).items()}
    assert skipped["cat.50.jpg"].startswith("duplicate of") and "different label" not in skipped["cat.50.jpg"]
    assert "different label" in skipped["dog.50.jpg"]
    assert "dog.5.jpg" in skipped["1.jpg"]
    assert skipped["3.jpg"].endswith("2.jpg")
    assert json.loads((out / "summary.json").read_text())["duplicates_dropped"] == 4


def test_class_folders_in_a_zip_with_three_classes(tmp_path):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k, c in enumerate(["bird", "fish", "frog"]):
            for i in range(6):
                zf.writestr(f"photos/{c}/img_{i:03d}.jpg", jpeg_bytes(100 * k + i))
        zf.writestr("__MACOSX/photos/bird/._img_000.jpg", b"junk")
        zf.writestr("photos/README.txt", b"about")
    out = tmp_path / "out"
    assert run("--src", archive, "--out", out, "--n-labeled", 3, "--n-val", 6, "--n-test", 3,
               "--workers", 2) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["bird", "fish", "frog"]
    assert summary["counts"]["val"] == {"total": 6, "bird": 2, "fish": 2, "frog": 2}
    assert summary["counts"]["unlabeled"]["total"] == 18 - 12
    assert len(read_skipped(out)) == 2


def test_labeled_list_and_image_size(tmp_path):
    src = tmp_path / "src"
    write_kaggle_folder(src, 10, size=(40, 30))
    listing = tmp_path / "picked.txt"
    listing.write_text("# hand-picked\ncat.1.jpg\ncat.2.jpg\ndog.7.jpg\n")
    out = tmp_path / "out"
    assert small_split(src, out, "--labeled-list", listing, "--image-size", 16) == 0
    labeled = sorted(p.name for p in (out / "labeled").rglob("*.jpg"))
    assert labeled == ["cat.1.jpg", "cat.2.jpg", "dog.7.jpg"]
    for p in out.rglob("*.jpg"):
        with Image.open(p) as img:
            assert img.size == (16, 16)

    listing.write_text("cat.1.jpg\ncat.999.jpg\n")
    assert small_split(src, tmp_path / "out2", "--labeled-list", listing) == 2
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("case, message", [
    ("no_class", "cannot tell the class"),
    ("too_few", "too few images"),
    ("one_class", "need at least 2"),
    ("empty", "holds no image files"),
    ("missing", "does not exist"),
])
def test_bad_input_gives_a_clear_error_and_writes_nothing(tmp_path, capsys, case, message):
    src = tmp_path / "src"
    if case == "no_class":
        write_kaggle_folder(src, 10)
        (src / "IMG_001.jpg").write_bytes(jpeg_bytes(1))
    elif case == "too_few":
        write_kaggle_folder(src, 5)
    elif case == "one_class":
        write_kaggle_folder(src, 20, classes=("cat",))
    elif case == "empty":
        src.mkdir()
        (src / "notes.txt").write_text("x")
    out = tmp_path / "out"
    assert small_split(src, out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.glob(".out.*")) == []


def test_refuses_non_empty_out_without_force(tmp_path, capsys):
    src = tmp_path / "src"
    write_kaggle_folder(src, 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert small_split(src, out) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"
    assert small_split(src, out, "--force") == 0
    assert not (out / "precious.txt").exists() and (out / "manifest.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_run_leaves_no_half_written_output(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_kaggle_folder(src, 20)
    calls = []
    real_writer = prepare_data.write_member

    def dying_writer(job):  # Ctrl-C after 10 images written (workers=1 runs it in-process)
        calls.append(job)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_writer(job)

    monkeypatch.setattr(prepare_data, "write_member", dying_writer)
    with pytest.raises(KeyboardInterrupt):
        small_split(src, tmp_path / "out")
    assert len(calls) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_synthetic_source_runs_the_kaggle_code_path(tmp_path):
    out = tmp_path / "demo"
    assert run("--synthetic", 10, "--out", out, "--n-labeled", 4, "--n-val", 4, "--n-test", 4,
               "--workers", 1) == 0
    src = tmp_path / "demo-synthetic-src"
    assert sorted(p.name for p in src.iterdir())[:3] == ["cat.0.jpg", "cat.1.jpg", "cat.2.jpg"]
    assert len(list(src.iterdir())) == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["unlabeled"]["total"] == 8 and summary["classes"] == ["cat", "dog"]
    assert run("--synthetic", 10, "--src", src, "--out", tmp_path / "x") == 2


def edge_balance(img: Image.Image) -> float:
    """> 0 when horizontal edges dominate (a wide shape), < 0 when vertical ones do (a tall one)."""
    import numpy as np
    a = np.asarray(img.convert("L"), dtype=float)
    return float(np.abs(np.diff(a, axis=0)).sum() - np.abs(np.diff(a, axis=1)).sum())


def test_synthetic_image_is_seeded_and_its_class_is_the_shape_not_the_colour():
    import numpy as np
    draw = prepare_data.synthetic_image
    same = [draw(1, np.random.default_rng(7), 32) for _ in range(2)]
    assert same[0].size == (32, 32) and same[0].mode == "RGB"
    assert same[0].tobytes() == same[1].tobytes()
    rng = np.random.default_rng(0)
    cats = [draw(0, rng, 64) for _ in range(30)]
    dogs = [draw(1, rng, 64) for _ in range(30)]
    # The shape separates the classes almost always (wide: horizontal edges, tall: vertical)...
    assert sum(edge_balance(im) > 0 for im in cats) >= 27
    assert sum(edge_balance(im) < 0 for im in dogs) >= 27
    # ...while the mean colour does not: both classes spread over the same range of tints.
    def mean_rgb(ims):
        return np.array([np.asarray(im, dtype=float).mean(axis=(0, 1)) for im in ims])
    cat_rgb, dog_rgb = mean_rgb(cats), mean_rgb(dogs)
    assert np.all(np.abs(cat_rgb.mean(0) - dog_rgb.mean(0)) < 25)
    assert np.all(cat_rgb.std(0) > 25) and np.all(dog_rgb.std(0) > 25)

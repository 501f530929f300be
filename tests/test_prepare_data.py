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


# ----------------------------------------------------------------------------------------------
# A given test folder and one-channel PNGs (MNIST's layout: train/<digit>/<n>.png, test/<digit>/<n>.png)

DIGITS = ("0", "1", "2")
MNIST_ZIP = Path(__file__).resolve().parents[1].parent / "shared/data/mnist/mnist_png.zip"


def digit_png(seed: int, mode: str = "L", size: int = 28) -> bytes:
    """A distinct 28x28 grey 'digit' (a bar whose slant follows the seed, plus speckle) as a PNG."""
    import numpy as np
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), dtype=np.uint8)
    for y in range(4, size - 4):
        x = 6 + (y * (seed % 5)) // 8 % (size - 10)
        a[y, x:x + 3] = 255
    a[rng.integers(0, size, 20), rng.integers(0, size, 20)] = rng.integers(1, 255, 20)
    img = Image.fromarray(a, "L")
    if mode == "RGB":  # colour: a red tint on the digit
        img = Image.merge("RGB", (img, img.point(lambda v: v // 2), img.point(lambda v: v // 3)))
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def digit_members(n_train=12, n_test=4, classes=DIGITS, splits=("train", "test")) -> dict[str, bytes]:
    """{member: PNG bytes}: <split>/<class>/<n>.png, every image distinct."""
    members = {}
    for s, split in enumerate(splits):
        for k, c in enumerate(classes):
            for i in range(n_train if split == "train" else n_test):
                members[f"{split}/{c}/{i}.png"] = digit_png(10_000 * s + 100 * k + i)
    return members


def write_zip(path: Path, members: dict[str, bytes], extra_dirs=()) -> Path:
    """A zip that lists its folders as entries (train/, train/0/, ...) before the files, as MNIST's does."""
    folders = {m.rsplit("/", 1)[0] for m in members} | {m.split("/", 1)[0] for m in members} | set(extra_dirs)
    with zipfile.ZipFile(path, "w") as zf:
        for folder in sorted(folders):
            zf.writestr(folder + "/", b"")
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def mnist_split(src, out, *extra):
    return run("--src", src, "--out", out, "--test-folder", "test", "--grayscale", "--n-labeled", 6,
               "--n-val", 6, "--workers", 1, *extra)


def source_member(row: dict) -> str:
    return row["source"].rsplit(":", 1)[1]


def pixels(data: bytes):
    import numpy as np
    with Image.open(io.BytesIO(data)) as img:
        return img.mode, img.size, np.asarray(img).copy()


def test_test_folder_is_the_test_split_and_the_rest_is_drawn_from_train(tmp_path):
    members = digit_members()
    src = write_zip(tmp_path / "digits.zip", members)
    out = tmp_path / "out"
    assert mnist_split(src, out) == 0
    rows = read_manifest(out)
    by_split = {s: [r for r in rows if r["split"] == s] for s in prepare_data.SPLITS}
    # the test split is the test folder, all of it, under its own names and classes
    test_members = sorted(m for m in members if m.startswith("test/"))
    assert sorted(source_member(r) for r in by_split["test"]) == test_members
    assert sorted(r["path"] for r in by_split["test"]) == sorted(test_members)
    assert all(r["label"] == source_member(r).split("/")[1] for r in by_split["test"])
    # val, labeled and unlabeled come from train/ only: 6 + 6 drawn, class-balanced, the rest unlabeled
    for split, n in (("val", 6), ("labeled", 6), ("unlabeled", 36 - 12)):
        assert len(by_split[split]) == n
        assert all(source_member(r).startswith("train/") for r in by_split[split])
    assert {r["path"].rsplit(".", 1)[1] for r in rows} == {"png"}
    assert all(r["path"].startswith("unlabeled/") and len(Path(r["path"]).stem) == 20 for r in by_split["unlabeled"])
    # one channel, same pixels; clean 8-bit grey PNGs are copied as they are
    for r in rows:
        written = (out / r["path"]).read_bytes()
        assert written == members[source_member(r)]
        mode, size, _ = pixels(written)
        assert (mode, size) == ("L", (28, 28))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_folder"] == "test" and summary["grayscale"] is True
    assert summary["classes"] == list(DIGITS)
    assert summary["counts"]["test"] == {"total": 12, "0": 4, "1": 4, "2": 4}
    assert summary["counts"]["val"] == summary["counts"]["labeled"] == {"total": 6, "0": 2, "1": 2, "2": 2}
    assert summary["counts"]["unlabeled"]["total"] == 24
    assert summary["arguments"]["n_test"] is None
    assert summary["skipped"] == summary["duplicates_dropped"] == summary["reencoded"] == 0
    assert summary["files_seen"] == 48 and read_skipped(out) == {}
    # the labeled draw follows --label-seed and never touches the given test split or val
    assert mnist_split(src, tmp_path / "b", "--label-seed", 7) == 0
    other = read_manifest(tmp_path / "b")

    def pick(rs, split):
        return sorted(r["source"] for r in rs if r["split"] == split)
    assert pick(other, "test") == pick(rows, "test") and pick(other, "val") == pick(rows, "val")
    assert pick(other, "labeled") != pick(rows, "labeled")


def test_grayscale_keeps_grey_images_of_any_mode_and_skips_colour(tmp_path):
    import numpy as np
    members = digit_members()
    with Image.open(io.BytesIO(digit_png(502))) as img:  # R = G = B: grey, stored as RGB
        grey_rgb = io.BytesIO()
        img.convert("RGB").save(grey_rgb, "PNG")
    wide = io.BytesIO()
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) * 80).astype(np.uint16)).save(wide, "PNG")
    members.update({
        "train/0/colour.png": digit_png(500, mode="RGB"),
        "train/1/grey_rgb.png": grey_rgb.getvalue(),
        "train/2/alpha.png": digit_png(503, mode="LA"),
        "train/2/sixteen_bit.png": wide.getvalue(),
        "test/1/colour.png": digit_png(504, mode="RGB"),
    })
    src = write_zip(tmp_path / "digits.zip", members)
    out = tmp_path / "out"
    assert mnist_split(src, out) == 0
    skipped = read_skipped(out)
    assert {k.rsplit(":", 1)[1] for k in skipped} == {"train/0/colour.png", "test/1/colour.png"}
    assert all(v.startswith("colour image (mode RGB) in a --grayscale set") for v in skipped.values())
    rows = {source_member(r): r for r in read_manifest(out)}
    assert len(rows) == 48 + 3
    for member in ("train/1/grey_rgb.png", "train/2/alpha.png"):
        mode, _, got = pixels((out / rows[member]["path"]).read_bytes())
        assert mode == "L" and np.array_equal(got, pixels(digit_png(502 if "rgb" in member else 503))[2])
    mode, _, got = pixels((out / rows["train/2/sixteen_bit.png"]["path"]).read_bytes())
    assert mode == "L" and got.max() == round(783 * 80 / 257) and got[0, 1] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 2 and summary["reencoded"] == 3
    assert summary["counts"]["test"]["total"] == 12
    # --image-size resizes (bicubic) and stays one-channel
    assert mnist_split(src, tmp_path / "small", "--image-size", 14) == 0
    written = list((tmp_path / "small").rglob("*.png"))
    assert len(written) == 51
    for p in written:
        with Image.open(p) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (14, 14))


@pytest.mark.parametrize("kind", ["zip_entry", "folder"])
def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, capsys, kind):
    members = digit_members()
    if kind == "zip_entry":
        src = write_zip(tmp_path / "digits.zip", members, extra_dirs=["train/3"])
    else:
        src = tmp_path / "digits"
        for member, data in members.items():
            (src / member).parent.mkdir(parents=True, exist_ok=True)
            (src / member).write_bytes(data)
        (src / "train" / "3").mkdir()
    out = tmp_path / "out"
    assert mnist_split(src, out) == 2
    err = capsys.readouterr().err
    assert f"class folder train/3/ in {src} holds no images" in err and "remove the folder" in err
    assert not out.exists()


def test_kaggle_names_in_a_zip_with_folder_entries_are_not_class_folders(tmp_path):
    members = {f"train/{c}.{i}.jpg": jpeg_bytes(100 * k + i) for k, c in enumerate(("cat", "dog")) for i in range(10)}
    src = write_zip(tmp_path / "train.zip", members, extra_dirs=["train/extras"])
    out = tmp_path / "out"
    assert small_split(src, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog"] and summary["counts"]["unlabeled"]["total"] == 8
    assert summary["test_folder"] is None and summary["grayscale"] is False
    assert {p.suffix for p in out.rglob("*") if p.is_file() and p.parent != out} == {".jpg"}


@pytest.mark.parametrize("case, message", [
    ("missing_class", "test folder test/ in {src} has no images of class '2'"),
    ("extra_class", "test folder test/ in {src} has images of class '9', which the training images lack"),
    ("no_folder", "--test-folder exam: no folder exam/ at the top of {src} (top-level folders: test/, train/)"),
    ("colour_class", "test folder test/ in {src} has no usable images of class '2', which the training images have"),
])
def test_test_folder_classes_must_match_the_training_classes(tmp_path, capsys, case, message):
    members = digit_members()
    flags = ["--test-folder", "test"]
    if case == "missing_class":
        members = {m: d for m, d in members.items() if not m.startswith("test/2/")}
    elif case == "extra_class":
        members["test/9/0.png"] = digit_png(999)
    elif case == "colour_class":  # found by name, but every one is skipped as colour
        members.update({f"test/2/{i}.png": digit_png(900 + i, mode="RGB") for i in range(4)})
    else:
        flags = ["--test-folder", "exam"]
    src = write_zip(tmp_path / "digits.zip", members)
    out = tmp_path / "out"
    assert run("--src", src, "--out", out, "--grayscale", "--n-labeled", 6, "--n-val", 6, "--workers", 1,
               *flags) == 2
    assert message.format(src=src) in capsys.readouterr().err
    assert not out.exists()


def test_n_test_with_test_folder_is_a_usage_error(tmp_path, capsys):
    src = write_zip(tmp_path / "digits.zip", digit_members())
    with pytest.raises(SystemExit) as exc:
        mnist_split(src, tmp_path / "out", "--n-test", 1000)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--n-test" in err and "--test-folder" in err
    assert not (tmp_path / "out").exists()
    help_text = " ".join(prepare_data.get_args_parser().format_help().split())
    assert "not with --test-folder, which gives the test split) (default: 1000)" in help_text


def test_a_test_copy_wins_over_a_training_copy_and_test_duplicates_keep_the_first(tmp_path):
    train = {m: d for m, d in digit_members().items() if m.startswith("train/")}
    test = {m: d for m, d in digit_members().items() if m.startswith("test/")}
    train["train/1/copy_of_test.png"] = test["test/1/2.png"]   # in the first --src: listed first
    test["test/0/9.png"] = test["test/0/3.png"]                 # a duplicate inside the test folder
    first = write_zip(tmp_path / "a_train.zip", train)
    second = write_zip(tmp_path / "b_test.zip", test)
    out = tmp_path / "out"
    assert run("--src", first, "--src", second, "--out", out, "--test-folder", "test", "--grayscale",
               "--n-labeled", 6, "--n-val", 6, "--workers", 1) == 0
    skipped = read_skipped(out)
    assert skipped == {f"{first}:train/1/copy_of_test.png": f"duplicate of {second}:test/1/2.png",
                       f"{second}:test/0/9.png": f"duplicate of {second}:test/0/3.png"}
    rows = read_manifest(out)
    test_rows = sorted(r["source"] for r in rows if r["split"] == "test")
    assert test_rows == sorted(f"{second}:{m}" for m in test if m != "test/0/9.png")
    assert len({r["sha256"] for r in rows}) == len(rows) == 36 + 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duplicates_dropped"] == 2 and summary["counts"]["test"]["total"] == 12


def test_real_mnist_digits(tmp_path):
    if not MNIST_ZIP.exists():
        pytest.skip(f"MNIST not found at {MNIST_ZIP} (only present on the project's machines)")
    per_split = {"train": 30, "test": 10}
    picked: dict[str, bytes] = {}
    counts: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(MNIST_ZIP) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            split, digit, _ = info.filename.split("/")
            if counts.get((split, digit), 0) < per_split[split]:
                counts[(split, digit)] = counts.get((split, digit), 0) + 1
                picked[info.filename] = zf.read(info)
    assert len(picked) == 10 * (30 + 10)
    src = write_zip(tmp_path / "mnist_small.zip", picked)
    out = tmp_path / "out"
    assert run("--src", src, "--out", out, "--test-folder", "test", "--grayscale", "--n-labeled", 20,
               "--n-val", 50, "--workers", 1) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [str(d) for d in range(10)]
    assert summary["counts"]["test"] == {"total": 100, **{str(d): 10 for d in range(10)}}
    assert summary["counts"]["val"] == {"total": 50, **{str(d): 5 for d in range(10)}}
    assert summary["counts"]["labeled"] == {"total": 20, **{str(d): 2 for d in range(10)}}
    assert summary["counts"]["unlabeled"]["total"] == 300 - 70
    rows = read_manifest(out)
    assert len(rows) == 400
    for r in rows:
        written = (out / r["path"]).read_bytes()
        assert written == picked[source_member(r)]
        mode, size, _ = pixels(written)
        assert (mode, size) == ("L", (28, 28))

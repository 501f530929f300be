from collections import Counter

import pytest
import torch

import dali_loaders
from conftest import jpeg_bytes
from dali_loaders import epoch_indices, labeled_loader, unlabeled_loader

BACKENDS = ["torch"] + (["dali"] if dali_loaders.dali_available() else [])


@pytest.fixture
def image_folders(tmp_path):
    """labeled/{a,b}/ with 5 and 6 images, unlabeled/ with 9; sizes vary to exercise resizing."""
    for k, (c, n) in enumerate([("a", 5), ("b", 6)]):
        (tmp_path / "labeled" / c).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "labeled" / c / f"{i}.jpg").write_bytes(
                jpeg_bytes(10 * k + i, size=(40 + 3 * i, 36), quality=95))
    (tmp_path / "unlabeled").mkdir()
    for i in range(9):
        (tmp_path / "unlabeled" / f"u{i}.jpg").write_bytes(jpeg_bytes(500 + i, size=(32, 32)))
    return tmp_path


@pytest.mark.parametrize("n, shards", [(10, 1), (10, 3), (7, 2), (3, 4)])
def test_train_shards_cover_every_sample_with_equal_steps(n, shards):
    parts = [epoch_indices(n, train=True, epoch=2, seed=1, shard_id=s, num_shards=shards)
             for s in range(shards)]
    assert len({len(p) for p in parts}) == 1                     # same number of samples per rank
    union = Counter(i for p in parts for i in p)
    assert set(union) == set(range(n))                           # everyone is seen
    assert sum(union.values()) - n == (-n) % shards              # padding only, at most shards-1


def test_eval_shards_are_disjoint_and_exact():
    parts = [epoch_indices(10, train=False, epoch=5, seed=0, shard_id=s, num_shards=3) for s in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))
    assert parts[0] == [0, 3, 6, 9]


def test_epoch_order_is_seeded_and_changes_per_epoch():
    e0 = epoch_indices(50, train=True, epoch=0, seed=7)
    assert e0 == epoch_indices(50, train=True, epoch=0, seed=7)
    assert e0 != epoch_indices(50, train=True, epoch=1, seed=7)
    assert sorted(e0) == list(range(50))
    with pytest.raises(ValueError):
        epoch_indices(5, train=True, epoch=0, seed=0, shard_id=2, num_shards=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_loader_yields_every_sample_once_in_fixed_order(image_folders, backend):
    loader = labeled_loader(image_folders / "labeled", batch_size=4, image_size=16, train=False,
                            backend=backend, num_threads=1)
    assert loader.classes == ["a", "b"] and len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 3]
    labels = torch.cat([y for _, y in batches])
    assert labels.dtype == torch.int64 and labels.tolist() == [0] * 5 + [1] * 6
    images = torch.cat([x for x, _ in batches])
    assert images.shape == (11, 3, 16, 16) and images.dtype == torch.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    again = torch.cat([x for x, _ in loader])  # second epoch, same order
    assert torch.equal(images, again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_loader_drops_last_and_reshuffles_reproducibly(image_folders, backend):
    def epoch_images(epoch):
        loader = unlabeled_loader(image_folders / "unlabeled", batch_size=4, image_size=8,
                                  backend=backend, num_threads=1, seed=3)
        loader.set_epoch(epoch)
        return [x for x in loader]
    e0 = epoch_images(0)
    assert [x.shape[0] for x in e0] == [4, 4]          # 9 images, batch 4: the last 1 is dropped
    assert all(torch.equal(a, b) for a, b in zip(e0, epoch_images(0)))
    e1 = epoch_images(1)
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))


def test_train_batch_larger_than_the_set_shrinks_to_it(image_folders):
    loader = labeled_loader(image_folders / "labeled", batch_size=100, image_size=8, train=True,
                            backend="torch", num_threads=1)
    assert loader.batch_size == 11 and len(loader) == 1
    (images, labels), = list(loader)
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 6


@pytest.mark.skipif(not dali_loaders.dali_available(), reason="NVIDIA DALI is not installed")
def test_dali_and_torch_give_the_same_pixels(image_folders):
    kw = dict(batch_size=16, image_size=24, train=False, num_threads=1)
    (x_dali, y_dali), = list(labeled_loader(image_folders / "labeled", backend="dali", **kw))
    (x_torch, y_torch), = list(labeled_loader(image_folders / "labeled", backend="torch", **kw))
    assert torch.equal(y_dali, y_torch) and y_dali.dtype == y_torch.dtype
    assert x_dali.shape == x_torch.shape and x_dali.dtype == x_torch.dtype
    # Both decoders are exact on these JPEGs; only the antialiased resize filters differ slightly.
    assert (x_dali - x_torch).abs().mean() < 0.02
    assert (x_dali - x_torch).abs().max() < 0.35


def test_shards_of_a_loader_partition_the_eval_set(image_folders):
    seen = []
    for shard in range(2):
        loader = labeled_loader(image_folders / "labeled", batch_size=4, image_size=8, train=False,
                                backend="torch", num_threads=1, shard_id=shard, num_shards=2)
        seen += [y for _, y in loader]
    assert sum(len(y) for y in seen) == 11


def test_missing_folder_and_unknown_backend_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        labeled_loader(tmp_path / "nope", batch_size=2, image_size=8, train=False)
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="class subfolders"):
        labeled_loader(tmp_path / "flat", batch_size=2, image_size=8, train=False)
    with pytest.raises(ValueError, match="backend"):
        unlabeled_loader(tmp_path, batch_size=2, image_size=8, backend="pillow")


def test_dali_requested_but_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(dali_loaders, "dali_available", lambda: False)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "x.jpg").write_bytes(jpeg_bytes(1))
    with pytest.raises(ImportError, match="--loader torch"):
        unlabeled_loader(tmp_path / "u", batch_size=1, image_size=8, backend="dali")
    assert isinstance(unlabeled_loader(tmp_path / "u", batch_size=1, image_size=8),
                      dali_loaders.TorchLoader)


def test_in_memory_loader_matches_the_streaming_order_and_flips(image_folders):
    kw = dict(batch_size=4, image_size=16, backend="torch", num_threads=1, seed=5)
    memory = dali_loaders.in_memory_loader(image_folders / "labeled", labeled=True, **kw)
    assert len(memory) == 2 and memory.classes == ["a", "b"]
    reference = labeled_loader(image_folders / "labeled", train=False, **kw)
    (all_images, all_labels), = list(labeled_loader(image_folders / "labeled", train=False,
                                                    **{**kw, "batch_size": 64}))
    order = epoch_indices(11, train=True, epoch=3, seed=5)
    memory.set_epoch(3)
    for i, (images, labels) in enumerate(memory):
        idx = order[4 * i: 4 * i + 4]
        assert labels.tolist() == all_labels[idx].tolist()
        for x, k in zip(images, idx):  # each image is the stored one, mirrored or not
            assert torch.equal(x, all_images[k]) or torch.equal(x, all_images[k].flip(-1))
    a, _ = memory.batch(3, 1)
    b, _ = memory.batch(3, 1)
    assert torch.equal(a, b)  # random access is reproducible
    flips = sum(not torch.equal(x, all_images[k]) for e in range(6) for x, k in
                zip(memory.batch(e, 0)[0], epoch_indices(11, train=True, epoch=e, seed=5)[:4]))
    assert 0 < flips < 24
    assert reference.classes == memory.classes


def test_random_translate_shifts_each_image_within_the_reflection():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = dali_loaders.random_translate(images, 2, g)
    assert out.shape == images.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    for n in range(2):  # each output is one 6x6 window of its own padded image
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[n], padded[n, :, dy:dy + 6, dx:dx + 6])]
        assert len(windows) == 1
    assert torch.equal(dali_loaders.random_translate(images, 0, g), images)


def test_in_memory_unlabeled_set_is_uint8_and_gives_the_streamed_pixels(image_folders):
    kw = dict(batch_size=4, image_size=8, backend="torch", num_threads=1, seed=2)
    memory = dali_loaders.in_memory_loader(image_folders / "unlabeled", labeled=False, **kw)
    assert memory.images.dtype == torch.uint8 and memory.labels_tensor is None
    (streamed,) = list(unlabeled_loader(image_folders / "unlabeled", train=False,
                                        **{**kw, "batch_size": 64}))
    order = epoch_indices(len(streamed), train=True, epoch=1, seed=2)
    batch = memory.batch(1, 0)
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 8, 8)
    for x, k in zip(batch, order[:4]):  # uint8 storage loses nothing
        assert torch.equal(x, streamed[k]) or torch.equal(x, streamed[k].flip(-1))
    shifted = dali_loaders.in_memory_loader(image_folders / "unlabeled", labeled=False, translate=2, **kw)
    assert not torch.equal(shifted.batch(1, 0), batch) and torch.equal(shifted.batch(1, 0), shifted.batch(1, 0))
    with pytest.raises(ValueError, match="translate 4"):
        dali_loaders.in_memory_loader(image_folders / "unlabeled", labeled=False, translate=4, **kw)

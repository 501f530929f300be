"""Batches of prepared images for PyTorch: NVIDIA DALI (GPU 'mixed' decoding, or CPU) or plain torch.

    from dali_loaders import labeled_loader, unlabeled_loader
    train = labeled_loader("data/labeled", batch_size=100, image_size=224, train=True, device=device)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for images, labels in train:      # images float32 [N, 3, S, S] in [-1, 1], labels int64 [N]
            ...
    for images in unlabeled_loader("data/unlabeled", batch_size=64, image_size=224, train=True):
        ...

Both backends read the same files in the same order and give the same tensors (up to resize
filter differences): float32 NCHW, pixel/127.5 - 1 (the generator's Tanh range), labels int64, on
`device`; RGB by default, one channel with channels=1 (grayscale sets such as MNIST, written as
PNGs by prepare_data.py --grayscale; `image_channels` tells which a prepared folder holds). The
sample order of an epoch is drawn here, from (seed, epoch), and identical for both backends:
training loaders reshuffle every epoch (`set_epoch`, as with DistributedSampler) and drop the last
incomplete batch; evaluation loaders keep a fixed order and yield every sample exactly once.

Multi-GPU: each process passes shard_id=rank, num_shards=world_size. Training shards are padded
by repeating samples so every rank runs the same number of steps; evaluation shards are disjoint
and unpadded (sum the per-rank counts).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Images are scaled to [-1, 1]: the generator ends in Tanh, and real and fake must share one range.
# One value for all channels (from_uint8 relies on it).
NORMALIZE_MEAN = (0.5, 0.5, 0.5)
NORMALIZE_STD = (0.5, 0.5, 0.5)
BACKENDS = ("auto", "dali", "torch")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Listing files and drawing the order of an epoch (shared by both backends)

def _prepared_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; run prepare_data.py first "
                                "(e.g. python prepare_data.py --src train.zip --out data)")
    return folder


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = _prepared_folder(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_labeled(folder: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageFolder layout: one subfolder per class. Returns ([(path, class_index)], class_names)."""
    folder = _prepared_folder(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder} has no class subfolders (expected {folder}/<class>/*.jpg)")
    samples = [(p, k) for k, c in enumerate(classes) for p in list_images(folder / c)]
    if not samples:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class subfolders")
    return samples, classes


def image_channels(folder: str | os.PathLike) -> int:
    """1 if the first image of a prepared folder (class subfolders or flat) is grayscale, else 3:
    prepare_data.py writes a whole set in one mode."""
    from PIL import Image

    folder = _prepared_folder(folder)
    for sub in [folder] + sorted(d for d in folder.iterdir() if d.is_dir()):
        images = list_images(sub)
        if images:
            with Image.open(images[0]) as img:
                return 1 if img.mode in ("L", "I;16", "I", "1") else 3
    raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")


def seed_sequence(*parts: int) -> np.random.SeedSequence:
    """The one way a random stream is derived from (seed, epoch, rank, ...): each combination gets
    its own stream, rebuilt from the same numbers on resume."""
    return np.random.SeedSequence([int(p) for p in parts])


def derived_seed(*parts: int) -> int:
    """seed_sequence as one 32-bit seed, for torch and DALI generators."""
    return int(seed_sequence(*parts).generate_state(1)[0])


def epoch_indices(n: int, *, train: bool, epoch: int, seed: int, shard_id: int = 0,
                  num_shards: int = 1) -> list[int]:
    """Sample indices this shard reads in this epoch.

    train: a fresh permutation per (seed, epoch), padded by wrapping around to a multiple of
    num_shards so all ranks take the same number of steps. Eval: 0..n-1 split round-robin, no
    padding, so every sample is scored exactly once over all ranks.
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} out of range for num_shards {num_shards}")
    if not train:
        return list(range(shard_id, n, num_shards))
    order = np.random.default_rng(seed_sequence(seed, epoch)).permutation(n).tolist()
    total = math.ceil(n / num_shards) * num_shards
    order += order[: total - n]
    return order[shard_id::num_shards]


class _Loader:
    """What both backends share: the file list, the epoch order and the batch count."""

    def __init__(self, files: list[Path], labels: list[int] | None, *, batch_size: int,
                 image_size: int, train: bool, device: torch.device | str = "cpu",
                 num_threads: int = 2, seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                 classes: list[str] | None = None, channels: int = 3, flip: bool = True):
        if not files:
            raise ValueError("no images to load")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.files = [str(f) for f in files]
        self.labels = labels
        self.classes = classes
        self.image_size = image_size
        self.train = train
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels, self.flip = channels, flip
        self.device = torch.device(device)
        self.num_threads = max(1, num_threads)
        self.seed = seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.epoch = 0
        self.num_samples = len(epoch_indices(len(self.files), train=train, epoch=0, seed=seed,
                                             shard_id=shard_id, num_shards=num_shards))
        # A training batch larger than the shard would never fill: shrink it to the shard.
        self.batch_size = min(batch_size, self.num_samples) if train else batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:  # drop the last incomplete batch: a tiny batch upsets BatchNorm
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _epoch_files(self) -> tuple[list[str], list[int]]:
        idx = epoch_indices(len(self.files), train=self.train, epoch=self.epoch, seed=self.seed,
                            shard_id=self.shard_id, num_shards=self.num_shards)
        idx = idx[: len(self) * self.batch_size] if self.train else idx
        labels = self.labels or [0] * len(self.files)
        return [self.files[i] for i in idx], [labels[i] for i in idx]

    def _output(self, images: torch.Tensor, labels: torch.Tensor):
        # Labels follow the images onto `device`: DALI's file reader is CPU-only, so with 'mixed'
        # decoding its labels would otherwise arrive on the CPU beside CUDA images.
        if self.labels is None:
            return images
        labels = labels.reshape(-1).to(device=self.device, dtype=torch.int64, non_blocking=True)
        return images, labels


# ----------------------------------------------------------------------------------------------
# DALI backend

class DaliLoader(_Loader):
    """DALI pipeline: fn.readers.file -> fn.decoders.image -> fn.resize -> fn.crop_mirror_normalize.

    On CUDA the JPEGs are decoded on the GPU (device='mixed', nvJPEG) and resized there; on a CPU
    box the same pipeline runs with device_id=None. The reader gets this epoch's file list, so the
    pipeline is rebuilt when the order changes (once per training epoch, once in all for eval).
    Images leave the pipeline as HWC and are handed over as an NCHW view of it, which is already
    channels_last: the trainers' channels_last conversion then copies nothing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pipe_epoch = None
        self._iterator = None
        self._epoch_done = False  # the iterator ran to its end and can be reset for another pass

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device.type == "cuda"
        files, labels = self._epoch_files()
        train = self.train
        size = self.image_size
        mirror_images = train and self.flip
        gray = self.channels == 1

        @pipeline_def
        def image_pipeline():
            jpegs, labels_ = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                             pad_last_batch=True, name="reader")
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu",
                                       output_type=types.GRAY if gray else types.RGB)
            images = fn.resize(images, size=[size, size], antialias=True)
            mirror = fn.random.coin_flip(probability=0.5) if mirror_images else 0
            images = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT, output_layout="HWC", mirror=mirror,
                mean=[255 * m for m in NORMALIZE_MEAN[:1 if gray else 3]],
                std=[255 * s for s in NORMALIZE_STD[:1 if gray else 3]])
            return images, labels_

        device_id = (self.device.index if self.device.index is not None
                     else torch.cuda.current_device()) if gpu else None
        pipe = image_pipeline(batch_size=self.batch_size, num_threads=self.num_threads,
                              device_id=device_id, seed=derived_seed(self.seed, self.epoch, self.shard_id),
                              prefetch_queue_depth=2)
        pipe.build()
        # PARTIAL: the padded samples of the last batch are cut off, never returned twice.
        # No auto_reset: it would start decoding the next pass at once, wasted on a training
        # pipeline that is rebuilt for the next epoch; the eval pipeline is reset in __iter__.
        return DALIGenericIterator([pipe], ["images", "labels"], reader_name="reader",
                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)

    def __iter__(self):
        # Eval order never changes, so its pipeline is built once and reset after a full pass;
        # training rebuilds per epoch, as does a pass that was left unfinished.
        key = self.epoch if self.train else 0
        if self._iterator is not None and self._pipe_epoch == key and self._epoch_done:
            self._iterator.reset()
        else:
            self._iterator = None  # release the previous pipeline's buffers first
            self._iterator = self._build()
            self._pipe_epoch = key
        self._epoch_done = False
        for batch in self._iterator:
            images = batch[0]["images"].permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W] view
            yield self._output(images, batch[0]["labels"])
        self._epoch_done = True


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch backend

class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, files, labels, image_size, flips, channels):
        self.files, self.labels, self.image_size, self.flips = files, labels, image_size, flips
        self.channels = channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2 import functional as TF

        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        image = decode_image(read_file(self.files[i]), mode=mode)  # uint8 [C, H, W]
        image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        if self.flips[i]:
            image = image.flip(-1)
        return from_uint8(image), self.labels[i]


class TorchLoader(_Loader):
    """torchvision decode + resize in a DataLoader: the fallback where DALI is not installed."""

    def __iter__(self):
        files, labels = self._epoch_files()
        if self.train and self.flip:
            g = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, self.shard_id))
            flips = (torch.rand(len(files), generator=g) < 0.5).tolist()
        else:
            flips = [False] * len(files)
        dataset = _ImageFiles(files, labels, self.image_size, flips, self.channels)
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, drop_last=self.train,
            num_workers=self.num_threads if self.num_threads > 1 else 0,
            pin_memory=cuda)
        for images, labels_ in loader:
            yield self._output(images.to(self.device, non_blocking=cuda),
                               labels_.to(self.device, non_blocking=cuda))


# ----------------------------------------------------------------------------------------------
# Small labeled sets live in memory

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the loaders' scaling: [-1, 1] floats back to the decoded uint8 pixels (exact,
    since both backends scale uint8 pixels)."""
    return images.add(1.0).mul_(127.5).round_().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], as the loaders give them (same arithmetic as _ImageFiles)."""
    return images.float().mul_(1 / (255 * NORMALIZE_STD[0])).sub_(NORMALIZE_MEAN[0] / NORMALIZE_STD[0])


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -max_shift..max_shift pixels in x and y, filling with the reflection
    (a reflect-padded random crop), all images at once. [N, C, H, W] -> [N, C, H, W] channels_last."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="reflect")  # [N, C, H + 2s, W + 2s]
    shifts = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=images.device)
    rows = shifts[0, :, None] + torch.arange(h, device=images.device)  # [N, H]
    cols = shifts[1, :, None] + torch.arange(w, device=images.device)  # [N, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [N,H,W,C] -> NCHW


class InMemoryLoader:
    """A set decoded once and kept as uint8 tensors on `device` (the article's 100 labels at 224 px:
    15 MB; 15,000 unlabeled images at 64 px: 180 MB), so training steps only compute.

    The article's labeled set is one batch: streaming it from disk would decode the same 100 files
    every step; at 32-64 px the unlabeled set fits too, and decoding it every epoch would cost a CPU
    more than the training step. Same interface and the same epoch order as the streaming loaders
    (epoch_indices), with random horizontal flips (none with flip=False, e.g. for digits) and
    optional random translations (`translate` pixels, reflect-padded) for training, and random
    access to any batch of any epoch (`batch(epoch, index)`) so a trainer can cycle a set from its
    global step alone. Yields
    (images, labels) for a labeled source, images alone for an unlabeled one.

    A batch is drawn on the device without host-to-device copies: the orders of the next
    ORDER_BLOCK epochs move there in one copy (the article's labeled set is one batch, so an epoch
    is one step), and flips and shifts come from a generator on the device (so CPU and CUDA draw
    different ones).
    """

    ORDER_BLOCK = 256

    def __init__(self, source: _Loader, *, batch_size: int, seed: int, shard_id: int = 0,
                 num_shards: int = 1, translate: int = 0, flip: bool = True):
        assert not source.train
        images, labels = [], []
        for batch in source:
            x, y = batch if source.labels is not None else (batch, None)
            images.append(to_uint8(x))
            labels.append(y)
        self.images = torch.cat(images)  # uint8 [N, 3, S, S], on the source's device
        self.labels_tensor = torch.cat(labels) if source.labels is not None else None  # [N]
        if not 0 <= translate < self.images.shape[-1] // 2:
            raise ValueError(f"translate {translate} must be in 0..{self.images.shape[-1] // 2 - 1} "
                             f"for {self.images.shape[-1]} px images")
        self.translate, self.flip = translate, flip
        self.device = self.images.device
        self.classes = source.classes
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self.epoch = 0
        self.num_samples = len(epoch_indices(len(self.images), train=True, epoch=0, seed=seed,
                                             shard_id=shard_id, num_shards=num_shards))
        self.batch_size = min(batch_size, self.num_samples)
        self._orders = (None, None)  # (first epoch, [ORDER_BLOCK, shard size] orders on the device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        first, orders = self._orders
        # Up to ORDER_BLOCK epochs, fewer for a large set (at most ~1M indices drawn at a time).
        block = max(1, min(self.ORDER_BLOCK, 2 ** 20 // len(self.images)))
        if first is None or not first <= epoch < first + block:
            first = epoch
            orders = torch.from_numpy(np.array([
                epoch_indices(len(self.images), train=True, epoch=e, seed=self.seed, shard_id=self.shard_id,
                              num_shards=self.num_shards) for e in range(first, first + block)])).to(self.device)
            self._orders = (first, orders)
        return orders[epoch - first]

    def batch(self, epoch: int, index: int, view: int = 0):
        """Batch `index` of `epoch`; another `view` gives the same images with other flips and
        shifts (the second view of a consistency loss)."""
        idx = self._epoch_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        # Not seed_sequence: make demo's and the benchmarks' published numbers were drawn this way.
        g = torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + epoch * 1009 + index + 7919 * self.shard_id + 104_729 * view)
        images = self.images[idx]
        if self.flip:
            flip = torch.rand(len(idx), generator=g, device=self.device) < 0.5
            # out= keeps the stored memory format (channels_last from DALI); a plain where would not.
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images,
                                 out=torch.empty_like(images))
        if self.translate:
            images = random_translate(images, self.translate, g)
        images = from_uint8(images)
        return images if self.labels_tensor is None else (images, self.labels_tensor[idx])

    def __iter__(self):
        for i in range(len(self)):
            yield self.batch(self.epoch, i)


def in_memory_loader(folder, *, labeled: bool, batch_size: int, image_size: int,
                     backend: str = "auto", device="cpu", num_threads: int = 2, seed: int = 0,
                     shard_id: int = 0, num_shards: int = 1, translate: int = 0, channels: int = 3,
                     flip: bool = True) -> InMemoryLoader:
    """A training loader over `folder/<class>/*.jpg` (labeled) or `folder/*.jpg`, decoded once
    (see InMemoryLoader)."""
    make = labeled_loader if labeled else unlabeled_loader
    source = make(folder, batch_size=256, image_size=image_size, train=False, backend=backend,
                  device=device, num_threads=num_threads, channels=channels)
    return InMemoryLoader(source, batch_size=batch_size, seed=seed, shard_id=shard_id,
                          num_shards=num_shards, translate=translate, flip=flip)


# ----------------------------------------------------------------------------------------------

def resolve_backend(backend: str) -> str:
    """'dali' or 'torch': what `backend` (one of BACKENDS) means on this machine."""
    if backend not in BACKENDS:
        raise ValueError(f"loader backend {backend!r} not in {BACKENDS}")
    if backend == "dali" and not dali_available():
        raise ImportError("--loader dali: NVIDIA DALI is not installed (pip install "
                          "nvidia-dali-cuda120; Linux x86-64 only). Use --loader torch instead.")
    if backend == "torch" or (backend == "auto" and not dali_available()):
        return "torch"
    return "dali"


def _backend_class(backend: str):
    return TorchLoader if resolve_backend(backend) == "torch" else DaliLoader


def labeled_loader(folder, *, batch_size: int, image_size: int, train: bool, backend: str = "auto",
                   device="cpu", num_threads: int = 2, seed: int = 0, shard_id: int = 0,
                   num_shards: int = 1, channels: int = 3, flip: bool = True) -> _Loader:
    """Yields (images [N,C,S,S] float32, labels [N] int64) from `folder/<class>/*.jpg` (or .png).

    `.classes` holds the class names (sorted folder names; label k is classes[k])."""
    loader_class = _backend_class(backend)
    samples, classes = list_labeled(folder)
    return loader_class(
        [p for p, _ in samples], [k for _, k in samples], batch_size=batch_size,
        image_size=image_size, train=train, device=device, num_threads=num_threads, seed=seed,
        shard_id=shard_id, num_shards=num_shards, classes=classes, channels=channels, flip=flip)


def unlabeled_loader(folder, *, batch_size: int, image_size: int, train: bool = True,
                     backend: str = "auto", device="cpu", num_threads: int = 2, seed: int = 0,
                     shard_id: int = 0, num_shards: int = 1, channels: int = 3, flip: bool = True) -> _Loader:
    """Yields images [N,C,S,S] float32 from the flat folder `folder/*.jpg` (or .png)."""
    loader_class = _backend_class(backend)
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return loader_class(
        files, None, batch_size=batch_size, image_size=image_size, train=train, device=device,
        num_threads=num_threads, seed=seed, shard_id=shard_id, num_shards=num_shards, channels=channels,
        flip=flip)

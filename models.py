"""Models for the semi-supervised GAN (SSGAN) of "Semi-Supervised Learning with GANs: a Tale of Cats
and Dogs": a ResNet classifier whose K logits double as the discriminator, and a DCGAN-style
generator scaled up to the classifier's image size.

Only model definitions live here: no training logic and no work at import time.
"""

from __future__ import annotations

from http.client import HTTPException

import torch
from torch import nn
from torchvision import models as tvm

# Torchvision constructor and ImageNet weights for each supported backbone. Adding an entry is all
# it takes to support another ResNet: the feature width is read from the backbone's fc.
_BACKBONES = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
}
ARCHS = tuple(_BACKBONES) + ("cnn",)


# ---------------------------------------------------------------------------------------------
# Classifier / discriminator
# ---------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """ResNet with a K-way linear head; its logits are the SSGAN discriminator's logits.

    The backbone is kept whole as ``self.backbone`` (head included, as ``backbone.fc``) so the
    state_dict keys are torchvision's, prefixed with ``backbone.``.
    """

    def __init__(self, num_classes: int, arch: str = "resnet18", pretrained: bool = False):
        super().__init__()
        if arch not in _BACKBONES:
            raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(_BACKBONES)} "
                             "(and 'cnn': use build_classifier or SmallCNN)")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = str(arch)
        self.num_classes = int(num_classes)

        constructor, imagenet_weights = _BACKBONES[arch]
        # Random init (weights=None) is the article's setting; ImageNet weights are opt-in.
        backbone = constructor(weights=None)
        if pretrained:
            backbone.load_state_dict(_fetch_imagenet_state_dict(arch, imagenet_weights))
        self.feature_dim = backbone.fc.in_features  # 512 for resnet18/34, 2048 for resnet50
        # Fresh head in both cases: the ImageNet 1000-way fc is of no use for K classes.
        backbone.fc = nn.Linear(self.feature_dim, self.num_classes)
        self.backbone = backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate pooled features [N, feature_dim] (what feature matching compares)."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # [N, 64, H/4, W/4]
        x = b.layer1(x)  # [N, 64, H/4, W/4] (x4 channels for resnet50)
        x = b.layer2(x)  # [N, 128, H/8, W/8]
        x = b.layer3(x)  # [N, 256, H/16, W/16]
        x = b.layer4(x)  # [N, 512, H/32, W/32], e.g. [N, 512, 7, 7] at 224 px, [N, 512, 1, 1] at 32
        # Adaptive pooling is what makes every input size from 32 px up work.
        return torch.flatten(b.avgpool(x), 1)  # [N, 512]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x [N, 3, H, W] -> logits [N, K], or (logits, features [N, 512]) if return_features."""
        features = self.features(x)  # [N, 512]
        logits = self.backbone.fc(features)  # [N, K]
        return (logits, features) if return_features else logits


SMALL_CNN_WIDTHS = (32, "pool", 64, 64, "pool", 64)


class SmallCNN(nn.Module):
    """A small all-convolutional classifier for 32-64 px images on a CPU budget, in the style of
    Salimans et al.'s CIFAR discriminator: 3x3 weight-normalised convolutions with LeakyReLU(0.2),
    2x2 max-pooling with dropout between stages, global mean pooling and a weight-normalised linear
    head with K logits.

    No BatchNorm: generated batches then cannot disturb statistics used at evaluation, and eval
    mode differs from train mode only by dropout. Same interface as Classifier
    (``features``, ``forward(x, return_features)``, ``feature_dim``).
    """

    def __init__(self, num_classes: int, widths=SMALL_CNN_WIDTHS, dropout: float = 0.3):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = "cnn"
        self.num_classes = int(num_classes)
        self.widths = [w if w == "pool" else int(w) for w in widths]
        self.dropout = float(dropout)
        wn = nn.utils.parametrizations.weight_norm
        layers: list[nn.Module] = []
        channels = 3
        for w in self.widths:
            if w == "pool":  # [N, C, H, W] -> [N, C, H/2, W/2]
                layers += [nn.MaxPool2d(2), nn.Dropout(self.dropout)]
            else:  # [N, C, H, W] -> [N, w, H, W]
                layers += [wn(nn.Conv2d(channels, w, 3, padding=1)), nn.LeakyReLU(0.2)]
                channels = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels
        self.fc = wn(nn.Linear(channels, self.num_classes))
        self._register_load_state_dict_pre_hook(self._renumber_old_layers)

    def _renumber_old_layers(self, state_dict, prefix, *_):
        """Checkpoints written before the noise layers went (they added 0 in every command) number
        the body's layers with one noise layer first and one after each dropout: renumber them."""
        if any(k.startswith(f"{prefix}body.0.") for k in state_dict):
            return
        old, new, mapping = 1, 0, {}
        for w in self.widths:
            if w == "pool":
                old, new = old + 3, new + 2
            else:
                mapping[old], old, new = new, old + 2, new + 2
        for key in [k for k in state_dict if k.startswith(f"{prefix}body.")]:
            index, rest = key[len(prefix) + 5:].split(".", 1)
            if int(index) in mapping:
                state_dict[f"{prefix}body.{mapping[int(index)]}.{rest}"] = state_dict.pop(key)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> pooled features [N, feature_dim] (e.g. [N, 64] at any size)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)  # [N, 64]
        logits = self.fc(features)  # [N, K]
        return (logits, features) if return_features else logits


def _fetch_imagenet_state_dict(arch: str, weights) -> dict:
    # Looked up on torch.hub at call time (not through torchvision's import of it) so there is a
    # single download point, which is also what tests replace to stay offline.
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except (OSError, HTTPException) as err:  # URLError, socket and SSL errors are OSErrors
        filename = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not fetch the pretrained ImageNet weights for {arch} from {weights.url} "
            f"(offline? {type(err).__name__}: {err}). torch caches them in "
            f"{torch.hub.get_dir()}/checkpoints/{filename}; put the file there to use --pretrained "
            f"offline, or train without --pretrained (random initialisation, the article's setting)."
        ) from err


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------

SUPPORTED_SIZES_HINT = (
    "4·2^k or 7·2^k pixels with k >= 1, e.g. 8, 14, 16, 28, 32, 56, 64, 112, 128, 224, 256"
)


def upsampling_plan(image_size: int) -> list[int]:
    """Spatial sizes the generator goes through, from the projected z map to the image.

    The map starts at 7x7 when the size is a multiple of 7 (the article's 224 px = 7·32) and at
    4x4 otherwise (standard DCGAN), then doubles until it reaches image_size.
    For 224 we use x2 steps only, 7 -> 14 -> 28 -> 56 -> 112 -> 224, instead of the article's
    single x4 step (28 -> 112): every block is then the same overlapping k=4, s=2 transposed conv,
    whereas a x4 step with a stride-4 kernel-4 conv has no overlap and tends to draw 4x4 tiles.
    """
    if isinstance(image_size, bool) or int(image_size) != image_size:
        raise ValueError(f"image_size must be an int, got {image_size!r}; supported: {SUPPORTED_SIZES_HINT}")
    image_size = int(image_size)
    start = 7 if image_size % 7 == 0 else 4
    ratio = image_size // start
    if image_size <= 0 or image_size % start or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"unsupported image_size {image_size}; supported sizes: {SUPPORTED_SIZES_HINT}")
    sizes = [start]
    while sizes[-1] < image_size:
        sizes.append(sizes[-1] * 2)
    return sizes


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation of one module (use as ``model.apply(dcgan_init_)``): conv weights
    ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """DCGAN generator: z [N, z_dim] -> images [N, 3, S, S] in [-1, 1].

    z is projected to a [C0, s0, s0] map (s0 = 7 or 4, see ``upsampling_plan``), then each block
    doubles the size and halves the channels: at 224 px, with base_channels=64,
    [N, 512, 7, 7] -> [N, 256, 14, 14] -> [N, 128, 28, 28] -> [N, 64, 56, 56] -> [N, 32, 112, 112]
    -> [N, 3, 224, 224].
    """

    def __init__(self, image_size: int, z_dim: int = 100, base_channels: int = 64):
        super().__init__()
        self.spatial_sizes = upsampling_plan(image_size)  # e.g. [7, 14, 28, 56, 112, 224]
        self.image_size = int(image_size)
        self.z_dim = int(z_dim)
        self.base_channels = int(base_channels)

        # Channels of each hidden map: base*8 halving per step, floored at base/2 so the large
        # late maps (112x112 at 224 px) stay cheap but not starved.
        num_hidden = len(self.spatial_sizes) - 1
        floor = max(self.base_channels // 2, 1)
        widths = [max((self.base_channels * 8) >> i, floor) for i in range(num_hidden)]

        start = self.spatial_sizes[0]
        # A kernel of the start size on a 1x1 input is a dense projection of z to the start map.
        self.project = nn.Sequential(
            nn.ConvTranspose2d(self.z_dim, widths[0], start, 1, 0, bias=False),  # [N, 512, s0, s0]
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),  # [N, c_out, 2s, 2s]
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.upsample = nn.Sequential(*blocks)
        # Last doubling straight to RGB, without batch norm (as in DCGAN) so the output scale is free.
        self.to_rgb = nn.Sequential(
            nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False),  # [N, 3, S, S]
            nn.Tanh(),  # images in [-1, 1], the classifier's input range
        )
        self.apply(dcgan_init_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, z_dim] (or [N, z_dim, 1, 1]) -> images [N, 3, S, S] in [-1, 1]."""
        x = z.reshape(z.shape[0], self.z_dim, 1, 1)  # [N, z_dim, 1, 1]
        x = self.project(x)  # [N, 512, s0, s0]
        x = self.upsample(x)  # [N, C, S/2, S/2]
        return self.to_rgb(x)  # [N, 3, S, S]


# ---------------------------------------------------------------------------------------------
# Checkpoint metadata: plain-Python dicts from which the models are rebuilt before load_state_dict
# ---------------------------------------------------------------------------------------------


def make_classifier(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The classifier named by a trainer's --arch: a torchvision ResNet (the article's resnet18) or
    the small CNN. pretrained: ImageNet weights, ResNets only (the trainers refuse --pretrained
    with --arch cnn as a usage error)."""
    if arch == "cnn":
        return SmallCNN(num_classes)
    return Classifier(num_classes, arch=arch, pretrained=pretrained)


def classifier_meta(model: nn.Module) -> dict:
    # No "pretrained": the state_dict carries the weights, rebuilding must not download anything.
    meta = {"arch": str(model.arch), "num_classes": int(model.num_classes)}
    if isinstance(model, SmallCNN):
        meta.update(widths=list(model.widths), dropout=model.dropout)
    return meta


def generator_meta(model: Generator) -> dict:
    return {
        "image_size": int(model.image_size),
        "z_dim": int(model.z_dim),
        "base_channels": int(model.base_channels),
    }


def build_classifier(meta: dict) -> nn.Module:
    if meta.get("arch") == "cnn":
        # Older checkpoints also hold "noise": always 0, the layers it named are gone.
        return SmallCNN(int(meta["num_classes"]), widths=meta["widths"], dropout=float(meta["dropout"]))
    return Classifier(num_classes=int(meta["num_classes"]), arch=str(meta.get("arch", "resnet18")))

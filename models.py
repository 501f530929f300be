"""Models for the semi-supervised GAN (SSGAN) of "Semi-Supervised Learning with GANs: a Tale of Cats
and Dogs": a ResNet classifier whose K logits double as the discriminator, and a DCGAN-style
generator scaled up to the classifier's image size. Also the networks of Salimans et al. 2016 for
MNIST (--arch mlp): a weight-normalised MLP discriminator with Gaussian noise and an MLP generator.

Only model definitions live here: no training logic and no work at import time.
"""

from __future__ import annotations

import math
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
ARCHS = tuple(_BACKBONES) + ("cnn", "mlp")


# ---------------------------------------------------------------------------------------------
# Classifier / discriminator
# ---------------------------------------------------------------------------------------------


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: (x + 1) / 2. The loaders give real images as pixel / 127.5 - 1 and the
    generator draws through tanh; the article's notebook fed its classifier pixel / 255 (DALI) and
    (G(z) + 1) / 2, which is this map applied to both. A classifier built with unit_input applies it
    first, so checkpoints record it and evaluation needs no other preprocessing."""
    return (x + 1) * 0.5


class Classifier(nn.Module):
    """ResNet with a K-way linear head; its logits are the SSGAN discriminator's logits.

    The backbone is kept whole as ``self.backbone`` (head included, as ``backbone.fc``) so the
    state_dict keys are torchvision's, prefixed with ``backbone.``. unit_input: the network sees
    its [-1, 1] inputs mapped to [0, 1] (``to_unit_range``), the article's notebook's range.
    """

    def __init__(self, num_classes: int, arch: str = "resnet18", pretrained: bool = False, unit_input: bool = False):
        super().__init__()
        if arch not in _BACKBONES:
            raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(_BACKBONES)} "
                             "(and 'cnn': use build_classifier or SmallCNN)")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = str(arch)
        self.num_classes = int(num_classes)
        self.unit_input = bool(unit_input)

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
        x = to_unit_range(x) if self.unit_input else x
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
    (``features``, ``forward(x, return_features)``, ``feature_dim``). input_dropout: dropout on the
    input image, before the first convolution (Salimans et al.'s CIFAR-10 discriminator: 0.2, with
    0.5 between stages).
    """

    def __init__(self, num_classes: int, widths=SMALL_CNN_WIDTHS, dropout: float = 0.3, in_channels: int = 3,
                 input_dropout: float = 0.0, unit_input: bool = False):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = "cnn"
        self.num_classes = int(num_classes)
        self.widths = [w if w == "pool" else int(w) for w in widths]
        self.dropout = float(dropout)
        self.in_channels = int(in_channels)
        self.input_dropout = float(input_dropout)
        self.unit_input = bool(unit_input)  # see Classifier
        self.drop_input = nn.Dropout(self.input_dropout)  # no parameters: the state_dict keys stay
        wn = nn.utils.parametrizations.weight_norm
        layers: list[nn.Module] = []
        channels = self.in_channels
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
        """[N, C, H, W] -> pooled features [N, feature_dim] (e.g. [N, 64] at any size)."""
        x = to_unit_range(x) if self.unit_input else x
        return self.body(self.drop_input(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)  # [N, 64]
        logits = self.fc(features)  # [N, K]
        return (logits, features) if return_features else logits


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise in training mode; the identity in eval mode."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0:
            return x
        return x + self.sigma * torch.randn_like(x)


MLP_WIDTHS = (1000, 500, 250, 250, 250)


class MLPClassifier(nn.Module):
    """Salimans et al.'s MNIST discriminator (2016, openai/improved-gan): 784-1000-500-250-250-250-K,
    ReLU, every layer weight-normalised, Gaussian noise of std 0.3 on the input and 0.5 after every
    hidden layer (training mode only), no BatchNorm. Its K logits are classifier and discriminator.

    It sees pixels in [0, 1], as in the paper (the loaders' [-1, 1] is mapped back), so the noise
    is the paper's. Weight norm as there: w = g * v / ||v||, v ~ N(0, 0.1); the hidden layers' g and
    the biases are set once by `data_dependent_init` (unit variance, zero mean on a batch of real
    images) and only the output layer's g is trained afterwards (data_init=False instead keeps
    nn.Linear's initialisation, g = ||v||, trains every g and skips data_dependent_init). `features` is the last hidden
    layer's output (before its noise), what feature matching compares.
    """

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 1, widths=MLP_WIDTHS,
                 input_noise: float = 0.3, hidden_noise: float = 0.5, data_init: bool = True):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = "mlp"
        self.num_classes, self.image_size, self.in_channels = int(num_classes), int(image_size), int(in_channels)
        self.widths = [int(w) for w in widths]
        self.input_noise, self.hidden_noise = float(input_noise), float(hidden_noise)
        sizes = [self.in_channels * self.image_size ** 2, *self.widths, self.num_classes]  # 784, ..., 10
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.data_init = bool(data_init)
        for layer in self.layers:
            if self.data_init:
                nn.init.normal_(layer.weight, 0.0, 0.1)
                nn.init.zeros_(layer.bias)
            nn.utils.parametrizations.weight_norm(layer)  # g = ||v|| (until data_dependent_init)
        for layer in self.layers[:-1] if self.data_init else ():
            layer.parametrizations.weight.original0.requires_grad_(False)  # hidden g: not trained
        self.noise = nn.ModuleList([GaussianNoise(self.input_noise)]
                                   + [GaussianNoise(self.hidden_noise) for _ in self.widths])
        self.feature_dim = self.widths[-1]

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.layers[0].in_features:
            raise ValueError(f"the MLP takes {self.in_channels}x{self.image_size}x{self.image_size} images "
                             f"({self.layers[0].in_features} inputs), got {list(x.shape[1:])}")
        return x.reshape(x.shape[0], -1) * 0.5 + 0.5  # [N, C*S*S] in [0, 1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] in [-1, 1] -> the last hidden layer's output [N, 250]."""
        h = self.noise[0](self._inputs(x))
        for i, layer in enumerate(self.layers[:-1]):
            h = torch.relu(layer(h))
            if i < len(self.layers) - 2:
                h = self.noise[i + 1](h)
        return h

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)  # [N, 250]
        logits = self.layers[-1](self.noise[-1](features))  # [N, K]
        return (logits, features) if return_features else logits

    @torch.no_grad()
    def data_dependent_init(self, x: torch.Tensor) -> None:
        """Each layer in turn, on the batch x as the previous layers now map it (noise on, as in
        training): g and b such that every pre-activation has mean 0 and variance 1."""
        if not self.data_init:
            return
        h = self.noise[0](self._inputs(x))
        for i, layer in enumerate(self.layers):
            weight_norm = layer.parametrizations.weight
            weight_norm.original0.fill_(1.0)
            pre = h @ layer.weight.t()  # unit-norm rows
            mean, std = pre.mean(0), pre.var(0, unbiased=False).add(1e-8).sqrt()
            weight_norm.original0.copy_((1.0 / std).unsqueeze(1))
            layer.bias.copy_(-mean / std)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.noise[i + 1](torch.relu(h))


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


def upsampling_plan(image_size: int, stride4: bool = False) -> list[int]:
    """Spatial sizes the generator goes through, from the projected z map to the image.

    The map starts at 7x7 when the size is a multiple of 7 (the article's 224 px = 7·32) and at
    4x4 otherwise (standard DCGAN), then doubles until it reaches image_size.
    For 224 we use x2 steps only, 7 -> 14 -> 28 -> 56 -> 112 -> 224, instead of the article's
    single x4 step (28 -> 112): every block is then the same overlapping k=4, s=2 transposed conv,
    whereas a x4 step with a stride-4 kernel-4 conv has no overlap and tends to draw 4x4 tiles.
    stride4: the article's plan, S/8 -> S/2 in one step (7 -> 14 -> 28 -> 112 -> 224 at 224 px;
    4 -> 16 -> 32 at 32), for sizes of at least 8x the start map.
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
    if stride4:
        if ratio < 8:
            raise ValueError(f"image_size {image_size}: the article's x4 step needs at least 8x the start map "
                             f"({start} px); supported sizes with it: 4·2^k or 7·2^k pixels with k >= 3, e.g. "
                             "32, 56, 64, 112, 128, 224, 256")
        del sizes[-3]  # S/4: S/8 -> S/2 becomes one step
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
    -> [N, 3, 224, 224]. stride4: the article's notebook's generator, whose 28 -> 112 block is one
    kernel-4 stride-4 transposed convolution: [N, 512, 7, 7] -> [N, 256, 14, 14] -> [N, 128, 28, 28]
    -> [N, 64, 112, 112] -> [N, 3, 224, 224] (5,266,304 parameters, as in the notebook).
    """

    def __init__(self, image_size: int, z_dim: int = 100, base_channels: int = 64, channels: int = 3,
                 stride4: bool = False):
        super().__init__()
        self.channels = int(channels)
        self.stride4 = bool(stride4)
        self.spatial_sizes = upsampling_plan(image_size, self.stride4)  # e.g. [7, 14, 28, 56, 112, 224]
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
        for c_in, c_out, s_in, s_out in zip(widths, widths[1:], self.spatial_sizes, self.spatial_sizes[1:]):
            stride = s_out // s_in  # 2, or 4 for the article's step: kernel 4, no padding, no overlap
            blocks += [
                # [N, c_out, s_out, s_out]
                nn.ConvTranspose2d(c_in, c_out, 4, stride, 1 if stride == 2 else 0, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.upsample = nn.Sequential(*blocks)
        # Last doubling straight to RGB, without batch norm (as in DCGAN) so the output scale is free.
        self.to_rgb = nn.Sequential(
            nn.ConvTranspose2d(widths[-1], self.channels, 4, 2, 1, bias=False),  # [N, C, S, S]
            nn.Tanh(),  # images in [-1, 1], the classifier's input range
        )
        self.apply(dcgan_init_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, z_dim] (or [N, z_dim, 1, 1]) -> images [N, 3, S, S] in [-1, 1]."""
        x = z.reshape(z.shape[0], self.z_dim, 1, 1)  # [N, z_dim, 1, 1]
        x = self.project(x)  # [N, 512, s0, s0]
        x = self.upsample(x)  # [N, C, S/2, S/2]
        return self.to_rgb(x)  # [N, 3, S, S]


class MLPGenerator(nn.Module):
    """Salimans et al.'s MNIST generator: z in [0, 1)^100 -> 500 -> 500 (softplus, BatchNorm without
    scale) -> C*S*S sigmoid, the output layer weight-normalised (g starts at 1 and is trained).

    It takes z ~ N(0, 1) like the DCGAN generator and maps it through the normal CDF to the paper's
    uniform z; images come out in [-1, 1] ([N, C, S, S]), the loaders' range.
    """

    def __init__(self, image_size: int, channels: int = 1, z_dim: int = 100, width: int = 500,
                 bn_scale: bool = False):
        super().__init__()
        self.image_size, self.channels, self.z_dim, self.width = int(image_size), int(channels), int(z_dim), int(width)
        hidden = []
        for n_in in (self.z_dim, self.width):
            linear = nn.Linear(n_in, self.width, bias=False)  # BatchNorm's shift is the bias
            norm = nn.BatchNorm1d(self.width)
            norm.weight.requires_grad_(bn_scale)  # False: no scale, as in the paper (stays 1)
            hidden += [linear, norm, nn.Softplus()]
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(self.width, self.channels * self.image_size ** 2)
        for linear in (*hidden[::3], self.out):
            nn.init.xavier_uniform_(linear.weight)  # Lasagne's default
        nn.init.zeros_(self.out.bias)
        nn.utils.parametrizations.weight_norm(self.out)
        self.out.parametrizations.weight.original0.data.fill_(1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        uniform = 0.5 * (1 + torch.erf(z.reshape(z.shape[0], self.z_dim) / math.sqrt(2)))  # [N, z_dim]
        pixels = torch.sigmoid(self.out(self.hidden(uniform)))  # [N, C*S*S] in [0, 1]
        return (pixels * 2 - 1).view(-1, self.channels, self.image_size, self.image_size)


# ---------------------------------------------------------------------------------------------
# Checkpoint metadata: plain-Python dicts from which the models are rebuilt before load_state_dict
# ---------------------------------------------------------------------------------------------


def make_classifier(arch: str, num_classes: int, pretrained: bool = False, *, image_size: int = 224,
                    channels: int = 3, dropout: float | None = None, input_dropout: float | None = None,
                    mlp_init: str = "data", unit_input: bool = False) -> nn.Module:
    """The classifier named by a trainer's --arch: a torchvision ResNet (the article's resnet18), the
    small CNN or Salimans et al.'s MLP. pretrained: ImageNet weights, ResNets only (the trainers
    refuse --pretrained otherwise as a usage error). ResNets take 3 channels only. dropout and
    input_dropout: the small CNN's between stages and on its input (None: SmallCNN's defaults).
    unit_input: inputs mapped to [0, 1] first (ResNet and small CNN; the MLP always does it)."""
    if arch == "cnn":
        given = {k: v for k, v in (("dropout", dropout), ("input_dropout", input_dropout)) if v is not None}
        return SmallCNN(num_classes, in_channels=channels, unit_input=unit_input, **given)
    if arch == "mlp":
        return MLPClassifier(num_classes, image_size, in_channels=channels, data_init=mlp_init == "data")
    if channels != 3:
        raise ValueError(f"--arch {arch} takes RGB images; these have {channels} channel(s): use --arch cnn "
                         "or mlp, or prepare the data without --grayscale")
    return Classifier(num_classes, arch=arch, pretrained=pretrained, unit_input=unit_input)


def make_generator(arch: str, image_size: int, *, channels: int, z_dim: int, g_width: int,
                   mlp_init: str = "data", stride4: bool = False) -> nn.Module:
    """The generator that goes with the classifier: Salimans et al.'s MLP for --arch mlp (g_width
    and stride4 unused: the paper's 500 units; with mlp_init "default" its BatchNorm scales train),
    the DCGAN generator otherwise (stride4: the article's x4 block, see Generator)."""
    if arch == "mlp":
        return MLPGenerator(image_size, channels=channels, z_dim=z_dim, bn_scale=mlp_init == "default")
    return Generator(image_size, z_dim=z_dim, base_channels=g_width, channels=channels, stride4=stride4)


def classifier_meta(model: nn.Module) -> dict:
    # No "pretrained": the state_dict carries the weights, rebuilding must not download anything.
    meta = {"arch": str(model.arch), "num_classes": int(model.num_classes)}
    if getattr(model, "unit_input", False):  # checkpoints without it keep the keys they always had
        meta["unit_input"] = True
    if isinstance(model, SmallCNN):
        meta.update(widths=list(model.widths), dropout=model.dropout)
        if model.in_channels != 3:  # RGB checkpoints keep the keys they always had
            meta["in_channels"] = model.in_channels
        if model.input_dropout:
            meta["input_dropout"] = model.input_dropout
    if isinstance(model, MLPClassifier):
        meta.update(image_size=model.image_size, in_channels=model.in_channels, widths=list(model.widths),
                    input_noise=model.input_noise, hidden_noise=model.hidden_noise)
    return meta


def generator_meta(model: nn.Module) -> dict:
    if isinstance(model, MLPGenerator):
        return {"arch": "mlp", "image_size": model.image_size, "channels": model.channels,
                "z_dim": model.z_dim, "width": model.width}
    meta = {"image_size": int(model.image_size), "z_dim": int(model.z_dim),
            "base_channels": int(model.base_channels)}
    if model.channels != 3:
        meta["channels"] = model.channels
    if model.stride4:  # checkpoints without it keep the keys they always had
        meta["stride4"] = True
    return meta


def build_generator(meta: dict) -> nn.Module:
    meta = dict(meta)
    return MLPGenerator(**meta) if meta.pop("arch", None) == "mlp" else Generator(**meta)


def build_classifier(meta: dict) -> nn.Module:
    if meta.get("arch") == "cnn":
        # Older checkpoints also hold "noise": always 0, the layers it named are gone.
        return SmallCNN(int(meta["num_classes"]), widths=meta["widths"], dropout=float(meta["dropout"]),
                        in_channels=int(meta.get("in_channels", 3)), input_dropout=float(meta.get("input_dropout", 0)),
                        unit_input=bool(meta.get("unit_input", False)))
    if meta.get("arch") == "mlp":
        return MLPClassifier(int(meta["num_classes"]), int(meta["image_size"]), in_channels=int(meta["in_channels"]),
                             widths=meta["widths"], input_noise=float(meta["input_noise"]),
                             hidden_noise=float(meta["hidden_noise"]))
    return Classifier(num_classes=int(meta["num_classes"]), arch=str(meta.get("arch", "resnet18")),
                      unit_input=bool(meta.get("unit_input", False)))

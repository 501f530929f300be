"""The article's notebook (opetrova/SemiSupervisedPytorchGAN, SemiSupervisedGAN.ipynb) where it
departs from today's SSGAN: pixels in [0, 1], its stride-4 generator, unlabeled / generated /
labeled images in separate classifier passes with generated ones moving the BatchNorm running
statistics, all labeled images every step and no augmentation."""
import math

import pytest
import torch
from torch import nn

import dali_loaders
import engine
import train_ssgan
from models import Classifier, Generator, SmallCNN, build_classifier, build_generator, classifier_meta, generator_meta
from models import upsampling_plan


# --- Input range -------------------------------------------------------------------------------


def first_layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def test_unit_input_feeds_the_first_layer_pixel_over_255_and_mapped_tanh_output():
    # Real images come from the loaders as pixel / 127.5 - 1; the notebook fed pixel / 255.
    pixels = torch.tensor([0, 51, 102, 255], dtype=torch.uint8).repeat(1, 3, 8, 8)  # [1, 3, 8, 32]
    real = dali_loaders.from_uint8(pixels)
    resnet = Classifier(2, unit_input=True)
    seen = first_layer_input(resnet, resnet.backbone.conv1, real)
    torch.testing.assert_close(seen[0, 0, 0, :4], torch.tensor([0.0, 0.2, 0.4, 1.0]))
    # The generator's tanh output x: the notebook's (x + 1) / 2, so -1 -> 0, 0 -> 0.5, 1 -> 1.
    tanh = torch.tensor([-1.0, -0.5, 0.0, 1.0]).repeat(1, 3, 32, 8)
    cnn = SmallCNN(2, unit_input=True)
    seen = first_layer_input(cnn, cnn.body[0], tanh)
    torch.testing.assert_close(seen[0, 0, 0, :4], torch.tensor([0.0, 0.25, 0.5, 1.0]))
    # Today's default passes [-1, 1] through unchanged.
    plain = Classifier(2)
    torch.testing.assert_close(first_layer_input(plain, plain.backbone.conv1, real), real)


def test_unit_input_is_the_same_network_on_mapped_inputs_and_survives_its_metadata():
    torch.manual_seed(0)
    unit = Classifier(2, unit_input=True).eval()
    plain = Classifier(2).eval()
    plain.load_state_dict(unit.state_dict())  # same keys: the map has no parameters
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(unit(x), plain((x + 1) / 2))
    meta = classifier_meta(unit)
    assert meta == {"arch": "resnet18", "num_classes": 2, "unit_input": True}
    assert "unit_input" not in classifier_meta(plain)  # older checkpoints keep their keys
    rebuilt = build_classifier(meta).eval()
    rebuilt.load_state_dict(unit.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), unit(x))
    assert build_classifier(classifier_meta(SmallCNN(2, unit_input=True))).unit_input


# --- The notebook's generator ------------------------------------------------------------------


def test_stride4_generator_has_the_notebooks_layers_and_parameter_count():
    generator = Generator(224, stride4=True)
    assert generator.spatial_sizes == [7, 14, 28, 112, 224]
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    # SemiSupervisedGAN.ipynb, cell 5: ConvTranspose2d(nz, ngf*8, 7, 1, 0), (ngf*8, ngf*4, 4, 2, 1),
    # (ngf*4, ngf*2, 4, 2, 1), (ngf*2, ngf, 4, 4, 0), (ngf, nc, 4, 2, 1) with nz 100, ngf 64, nc 3
    assert convs == [(100, 512, 7, 1, 0), (512, 256, 4, 2, 1), (256, 128, 4, 2, 1), (128, 64, 4, 4, 0),
                     (64, 3, 4, 2, 1)]
    conv_weights = 100 * 512 * 49 + 512 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 3 * 16
    bn_weights_and_biases = 2 * (512 + 256 + 128 + 64)
    assert sum(p.numel() for p in generator.parameters()) == conv_weights + bn_weights_and_biases == 5_266_304
    assert Generator(224).spatial_sizes == [7, 14, 28, 56, 112, 224]  # today's default unchanged
    meta = generator_meta(generator)
    assert meta["stride4"] is True and "stride4" not in generator_meta(Generator(32))
    assert build_generator(meta).spatial_sizes == generator.spatial_sizes


def test_stride4_at_small_sizes_and_where_it_cannot_be():
    assert upsampling_plan(32, stride4=True) == [4, 16, 32]
    assert upsampling_plan(64, stride4=True) == [4, 8, 32, 64]
    assert Generator(32, base_channels=8, stride4=True)(torch.randn(2, 100)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="x4 step needs at least 8x the start map"):
        upsampling_plan(28, stride4=True)  # 7 -> 14 -> 28: nothing to merge


# --- BatchNorm passes --------------------------------------------------------------------------


class OneBatchNorm(nn.Module):
    """A classifier whose logits are w * (f, -f), f = BatchNorm(x) of one scalar per image: what each
    pass's batch statistics and the running statistics become can be worked out by hand."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(1, affine=False)  # momentum 0.1, running mean 0 and var 1 at start
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, return_features=False):
        f = self.bn(x)  # [N, 1]
        logits = self.w * torch.cat([f, -f], 1)  # [N, 2]
        return (logits, f) if return_features else logits


class FixedImages(nn.Module):
    """A 'generator' that draws the same two images, -4 and 4, whatever z."""

    def __init__(self):
        super().__init__()
        self.images = nn.Parameter(torch.tensor([[-4.0], [4.0]]))

    def forward(self, z):
        return self.images * 1.0


X_LAB, Y_LAB = torch.tensor([[0.0], [2.0]]), torch.tensor([1, 0])
X_UNL = torch.tensor([[10.0], [14.0]])
EPS = 1e-5  # BatchNorm's


def one_step(bn_passes: str, fake_bn_stats: bool):
    classifier, generator = OneBatchNorm().train(), FixedImages()
    d_passes = train_ssgan.DiscriminatorPasses(classifier, separate=bn_passes == "separate",
                                               fake_bn_stats=fake_bn_stats)
    rt = engine.Runtime(torch.device("cpu"))
    stats = train_ssgan.ssgan_step(
        d_passes, classifier, generator, torch.optim.SGD(classifier.parameters(), lr=0.0),
        torch.optim.SGD(generator.parameters(), lr=0.0), rt.grad_scaler(), X_LAB, Y_LAB, X_UNL,
        torch.zeros(2, 1), "article", rt, fake_bn_stats=fake_bn_stats)
    return stats, classifier.bn


def test_separate_passes_normalise_each_kind_of_image_alone():
    # Separate: the labeled pass normalises [0, 2] by its own mean 1 and variance 1: f = [-1, 1], so
    # label 1 gets logits (-1, 1) and label 0 (1, -1): cross-entropy log(1 + e^-2) for both.
    stats, _ = one_step("separate", fake_bn_stats=False)
    f = 1 / math.sqrt(1 + EPS)
    assert stats["loss_labeled"] == pytest.approx(math.log1p(math.exp(-2 * f)), rel=1e-5)
    # The unlabeled pass alone ([10, 14]: f = [-1, 1]) and the generated one ([-4, 4]: f = [-1, 1]):
    # D(x) = sigmoid(logsumexp(f, -f)) = sigmoid(log(e + 1/e)) for every image.
    d = 1 / (1 + 1 / (math.exp(f) + math.exp(-f)))
    assert stats["d_real"] == pytest.approx(d, rel=1e-5) and stats["d_fake"] == pytest.approx(d, rel=1e-5)
    # Joint (today): labeled and unlabeled images share one pass, mean 6.5 and variance
    # (6.5^2 + 4.5^2 + 3.5^2 + 7.5^2) / 4 = 32.75, so the labeled images get f = -6.5 / s (label 1:
    # cross-entropy log(1 + e^(2f))) and f = -4.5 / s (label 0: log(1 + e^(-2f))).
    stats, _ = one_step("joint", fake_bn_stats=False)
    s = math.sqrt(32.75 + EPS)
    expected = (math.log1p(math.exp(-2 * 6.5 / s)) + math.log1p(math.exp(2 * 4.5 / s))) / 2
    assert stats["loss_labeled"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bn_passes, fake_bn_stats, mean, var", [
    # joint, generated images frozen: one update by [0, 2, 10, 14] (mean 6.5, unbiased var 131 / 3)
    ("joint", False, 0.1 * 6.5, 0.9 + 0.1 * 131 / 3),
    # separate, frozen: [10, 14] (mean 12, var 8), then [0, 2] (mean 1, var 2)
    ("separate", False, 0.9 * 1.2 + 0.1 * 1, 0.9 * 1.7 + 0.1 * 2),
    # the notebook: [10, 14], then the generated [-4, 4] (mean 0, var 32), then [0, 2], then the
    # generated images again in the generator's step: 1.2 / 1.7 -> 1.08 / 4.73 -> 1.072 / 4.457 -> ...
    ("separate", True, 0.9 * 1.072, 0.9 * 4.457 + 0.1 * 32),
])
def test_running_statistics_after_one_step(bn_passes, fake_bn_stats, mean, var):
    _, bn = one_step(bn_passes, fake_bn_stats)
    assert bn.running_mean.item() == pytest.approx(mean, rel=1e-5)
    assert bn.running_var.item() == pytest.approx(var, rel=1e-5)


def test_separate_passes_give_the_notebooks_gradient_sum():
    """Three backward passes then one update (the notebook) is one backward of the summed losses."""
    torch.manual_seed(0)
    classifier = OneBatchNorm().train()
    d_passes = train_ssgan.DiscriminatorPasses(classifier, separate=True, fake_bn_stats=True)
    fake = torch.tensor([[-4.0], [4.0]])
    logits_real, _, logits_fake = d_passes(torch.cat([X_LAB, X_UNL]), fake, 2)
    import losses
    total = (losses.supervised_loss(logits_real[:2], Y_LAB) + losses.unlabeled_loss(logits_real[2:])
             + losses.fake_loss(logits_fake))
    grad_sum, = torch.autograd.grad(total, classifier.w)
    parts = []
    for x, loss in ((X_UNL, losses.unlabeled_loss), (fake, losses.fake_loss)):
        parts.append(torch.autograd.grad(loss(classifier(x)), classifier.w)[0])
    parts.append(torch.autograd.grad(losses.supervised_loss(classifier(X_LAB), Y_LAB), classifier.w)[0])
    torch.testing.assert_close(grad_sum, sum(parts))


# --- The trainer with the notebook's flags -----------------------------------------------------

ARTICLE_FLAGS = ["--image-size", "32", "--batch-size", "8", "--labeled-batch-size", "8", "--no-flip",
                 "--unit-input", "--bn-passes", "separate", "--fake-bn-stats", "--g-stride4",
                 "--g-width", "8", "--steps-per-epoch", "2", "--epochs", "1", "--loader", "torch",
                 "--workers", "1", "--device", "cpu"]


def reference_images(folder, labeled: bool) -> torch.Tensor:
    make = dali_loaders.labeled_loader if labeled else dali_loaders.unlabeled_loader
    loader = make(folder, batch_size=256, image_size=32, train=False, backend="torch", num_threads=1)
    return torch.cat([batch[0] if labeled else batch for batch in loader])


def index_in(images: torch.Tensor, image: torch.Tensor) -> int:
    """The index of the image in `images` equal to `image`, -1 if none."""
    return next((k for k, ref in enumerate(images) if torch.equal(ref, image)), -1)


def test_every_step_takes_all_labeled_images_and_nothing_is_augmented(tiny_data, tmp_path, monkeypatch):
    seen, step = [], train_ssgan.ssgan_step

    def spy(*args, **kwargs):
        seen.append((args[6].clone(), args[8].clone(), kwargs["fake_bn_stats"]))
        return step(*args, **kwargs)

    monkeypatch.setattr(train_ssgan, "ssgan_step", spy)
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(tmp_path / "run"), *ARTICLE_FLAGS]) == 0
    labeled, unlabeled = reference_images(tiny_data / "labeled", True), reference_images(tiny_data / "unlabeled", False)
    assert len(seen) == 2 and len(labeled) == 8
    for x_lab, x_unl, fake_bn_stats in seen:
        # all 8 labeled images, each once, exactly as decoded: neither flipped nor shifted
        assert sorted(index_in(labeled, image) for image in x_lab) == list(range(8))
        assert all(index_in(unlabeled, image) >= 0 for image in x_unl) and len(x_unl) == 8
        assert fake_bn_stats
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["classifier_meta"]["unit_input"] and state["generator_meta"]["stride4"]
    assert state["args"]["bn_passes"] == "separate"
    # Rebuilt from its metadata (as evaluate.py does), the classifier maps its inputs itself and
    # scores val as the run recorded
    classifier = build_classifier(state["classifier_meta"])
    classifier.load_state_dict(state["classifier"])
    rt = engine.setup_runtime("cpu")
    val = engine.val_loader(tiny_data, rt, batch_size=8, image_size=32, loader="torch", workers=1)
    assert engine.evaluate(classifier, val, 2, rt)["loss"] == pytest.approx(state["val"]["loss"], rel=1e-5)


def test_stride4_at_a_size_it_cannot_draw_is_one_line(tiny_data, tmp_path, capsys):
    flags = list(ARTICLE_FLAGS)
    flags[flags.index("--image-size") + 1] = "28"
    assert train_ssgan.main(["--data", str(tiny_data), "--out", str(tmp_path / "run"), *flags, "--arch", "cnn"]) == 1
    assert "--g-stride4: image_size 28" in capsys.readouterr().err


def test_unit_input_is_refused_for_the_mlp(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_ssgan.main(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--arch", "mlp",
                          "--image-size", "28", "--unit-input"])
    assert "--arch mlp maps its inputs to [0, 1] already" in capsys.readouterr().err


def test_streamed_training_images_above_64_px_are_not_flipped_with_no_flip(tiny_data):
    """At 224 px the unlabeled images are streamed (not held in memory): --no-flip reaches that loader."""
    reference = reference_images(tiny_data / "unlabeled", False)  # fixed order, never flipped

    def as_decoded(flip: bool) -> tuple[int, int]:
        loader = dali_loaders.unlabeled_loader(tiny_data / "unlabeled", batch_size=8, image_size=32, train=True,
                                               backend="torch", num_threads=1, flip=flip)
        loader.set_epoch(1)
        images = torch.cat(list(loader))
        return sum(index_in(reference, image) >= 0 for image in images), len(images)

    assert as_decoded(False) == (40, 40)
    unchanged, n = as_decoded(True)
    assert n == 40 and unchanged < 30  # about half flipped

import json
import os
import sys
import urllib.error

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from models import (  # noqa: E402
    ARCHS,
    Classifier,
    Generator,
    build_classifier,
    classifier_meta,
    dcgan_init_,
    generator_meta,
)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- Classifier -----------------------------------------------------------------------------


def test_archs_lists_resnet18():
    assert "resnet18" in ARCHS


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_classifier_logits_and_features_shapes(num_classes, size):
    model = Classifier(num_classes)
    x = torch.randn(4, 3, size, size)
    logits = model(x)
    assert logits.shape == (4, num_classes)
    logits, features = model(x, return_features=True)
    assert logits.shape == (4, num_classes)
    assert features.shape == (4, 512)
    assert model.feature_dim == 512


def test_classifier_at_224_px():
    model = Classifier(3).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 224, 224), return_features=True)
    assert logits.shape == (1, 3)
    assert features.shape == (1, 512)


def test_return_features_gives_the_same_logits_in_eval_mode():
    model = Classifier(2).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        logits, features = model(x, return_features=True)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    # The logits are the head applied to those very features.
    torch.testing.assert_close(model.backbone.fc(features), plain)


def test_classifier_state_dict_keys_are_torchvision_keys_under_backbone():
    keys = Classifier(2).state_dict().keys()
    assert "backbone.conv1.weight" in keys
    assert "backbone.fc.weight" in keys
    assert all(k.startswith("backbone.") for k in keys)
    assert Classifier(2).state_dict()["backbone.fc.weight"].shape == (2, 512)


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="resnet18"):
        Classifier(2, arch="vgg11")


def test_pretrained_offline_raises_clear_runtime_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        Classifier(2, pretrained=True)
    message = str(info.value)
    assert "pretrained" in message
    assert "offline" in message
    assert "without --pretrained" in message
    assert torch.hub.get_dir() in message


def test_pretrained_loads_imagenet_weights_then_replaces_the_head(monkeypatch):
    # Stand-in for the downloaded file: a ResNet18 state dict with recognisable values.
    fake = models.tvm.resnet18(weights=None).state_dict()
    fake["conv1.weight"] = torch.full_like(fake["conv1.weight"], 0.5)
    requested = []

    def fake_download(url, *args, **kwargs):
        requested.append(url)
        return fake

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = Classifier(3, pretrained=True)
    assert requested == [models.tvm.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.backbone.conv1.weight, fake["conv1.weight"])
    assert model.backbone.fc.out_features == 3


# --- Generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_generator_output_shape_and_range(size):
    generator = Generator(size)
    images = generator(torch.randn(2, 100))
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert num_params(generator) < 15_000_000


def test_generator_224_goes_through_7x7_by_doublings():
    assert Generator(224).spatial_sizes == [7, 14, 28, 56, 112, 224]
    assert Generator(64).spatial_sizes == [4, 8, 16, 32, 64]


def test_generator_accepts_other_z_dim_and_widths():
    generator = Generator(28, z_dim=16, base_channels=8)
    assert generator(torch.randn(3, 16)).shape == (3, 3, 28, 28)
    assert generator(torch.randn(3, 16, 1, 1)).shape == (3, 3, 28, 28)


@pytest.mark.parametrize("size", [0, 4, 7, 48, 100, 225])
def test_unsupported_generator_size_raises_naming_supported_sizes(size):
    with pytest.raises(ValueError, match="supported sizes") as info:
        Generator(size)
    for supported in ("32", "64", "128", "224"):
        assert supported in str(info.value)


def test_dcgan_init_statistics():
    generator = Generator(64)
    conv_weights = torch.cat(
        [m.weight.flatten() for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    )
    assert abs(conv_weights.mean().item()) < 1e-3
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.02)
    bn_weights = torch.cat([m.weight for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_biases = torch.cat([m.bias for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.all(bn_biases == 0)


def test_dcgan_init_zeroes_conv_biases_and_leaves_other_modules_alone():
    conv = nn.Conv2d(8, 8, 3, bias=True)
    nn.init.constant_(conv.bias, 1.0)
    linear = nn.Linear(4, 4)
    before = linear.weight.clone()
    nn.Sequential(conv, linear).apply(dcgan_init_)
    assert torch.all(conv.bias == 0)
    assert torch.equal(linear.weight, before)


# --- Checkpoint metadata round trip ----------------------------------------------------------


def _assert_plain(meta):
    assert all(type(v) in (int, str, float, bool) for v in meta.values())
    assert json.loads(json.dumps(meta)) == meta


def test_classifier_round_trip_through_meta_and_state_dict():
    original = Classifier(3).eval()
    meta = classifier_meta(original)
    assert meta == {"arch": "resnet18", "num_classes": 3}
    _assert_plain(meta)
    rebuilt = build_classifier(meta)
    rebuilt.load_state_dict(original.state_dict())
    rebuilt.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), original(x))


def test_generator_round_trip_through_meta_and_state_dict():
    original = Generator(32, z_dim=64, base_channels=32)
    original.train()(torch.randn(8, 64))  # move BN running stats away from their defaults
    original.eval()
    meta = generator_meta(original)
    assert meta == {"image_size": 32, "z_dim": 64, "base_channels": 32}
    _assert_plain(meta)
    rebuilt = Generator(**meta)  # the metadata are the constructor's arguments
    rebuilt.load_state_dict(original.state_dict())
    rebuilt.eval()
    z = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(z), original(z))


# --- G -> D graph ------------------------------------------------------------------------------


def test_gradients_flow_from_classifier_logits_into_the_generator():
    generator = Generator(32, z_dim=16, base_channels=16)
    classifier = Classifier(2)
    logits = classifier(generator(torch.randn(4, 16)))
    # Generator loss of the SSGAN flavour: push log-sum-exp of the K logits up.
    loss = -torch.logsumexp(logits, dim=1).mean()
    loss.backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert generator.project[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [32, 64])
def test_small_cnn_shapes_and_no_batchnorm(size):
    from models import SmallCNN, make_classifier
    model = make_classifier("cnn", 3)
    assert isinstance(model, SmallCNN) and model.feature_dim == 64
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    logits, features = model(torch.randn(4, 3, size, size), return_features=True)
    assert logits.shape == (4, 3) and features.shape == (4, 64)
    model.eval()  # eval mode: no dropout, so deterministic
    x = torch.randn(2, 3, size, size)
    assert torch.equal(model(x), model(x))


def test_small_cnn_dropout_on_the_input_and_between_stages_rebuilds_from_its_metadata():
    from models import SmallCNN, build_classifier, classifier_meta, make_classifier
    model = make_classifier("cnn", 2, dropout=0.5, input_dropout=0.2)
    assert (model.dropout, model.input_dropout) == (0.5, 0.2)
    assert [m.p for m in model.body if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    meta = classifier_meta(model)
    assert meta["dropout"] == 0.5 and meta["input_dropout"] == 0.2
    rebuilt = build_classifier(meta)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.input_dropout == 0.2 and rebuilt.dropout == 0.5
    # Input dropout zeroes about a fifth of the pixels in training mode, none in eval mode.
    x = torch.ones(1, 3, 32, 32)
    dropped = (model.drop_input.train()(x) == 0).float().mean().item()
    assert 0.15 < dropped < 0.25
    assert torch.equal(model.drop_input.eval()(x), x)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    # The default network keeps the metadata keys it always had, and its state_dict keys.
    default = make_classifier("cnn", 2)
    assert "input_dropout" not in classifier_meta(default) and default.dropout == 0.3
    assert set(default.state_dict()) == set(SmallCNN(2).state_dict()) == set(model.state_dict())


def test_small_cnn_loads_a_state_dict_saved_with_the_old_noise_layers():
    """Checkpoints written while the body held identity noise layers (std 0) still load, and the
    rebuilt network computes what the saved one did."""
    from models import SmallCNN
    model = SmallCNN(2).eval()
    # Old numbering: a noise layer first and one after each dropout (widths 32, pool, 64, 64, pool, 64).
    renumber = {0: 1, 4: 6, 6: 8, 10: 13}
    old = {}
    for key, value in model.state_dict().items():
        if key.startswith("body."):
            index, rest = key[5:].split(".", 1)
            key = f"body.{renumber[int(index)]}.{rest}"
        old[key] = value
    meta = {**classifier_meta(model), "noise": 0.0}  # old metadata held the std
    rebuilt = build_classifier(meta).eval()
    rebuilt.load_state_dict(old)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model(x))


def test_small_cnn_round_trip_through_meta_and_a_weights_only_checkpoint(tmp_path):
    from models import SmallCNN
    model = SmallCNN(2, widths=(16, "pool", 32), dropout=0.1).eval()
    meta = classifier_meta(model)
    assert meta == {"arch": "cnn", "num_classes": 2, "widths": [16, "pool", 32], "dropout": 0.1}
    torch.save({"meta": meta, "state": model.state_dict()}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    rebuilt = build_classifier(saved["meta"]).eval()
    rebuilt.load_state_dict(saved["state"])
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(rebuilt(x), model(x))

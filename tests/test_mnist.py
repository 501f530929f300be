"""Salimans et al.'s MNIST networks (--arch mlp), grayscale loading, the weight average and the
learning-rate schedule: the parts the MNIST benchmark adds to the trainers."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dali_loaders
import engine
import evaluate
import train_ssgan
import train_supervised
from conftest import ROOT
from models import MLPClassifier, MLPGenerator, build_classifier, build_generator, classifier_meta, generator_meta

# mnist_png.zip (README's snippet writes one): the path MNIST_PNG_ZIP names, or ../shared's copy.
MNIST_ZIP = Path(os.environ.get("MNIST_PNG_ZIP", ROOT.parent / "shared" / "data" / "mnist" / "mnist_png.zip"))
MLP_FAST = ["--arch", "mlp", "--image-size", "16", "--no-flip", "--batch-size", "10", "--lr", "3e-3",
            "--loader", "torch", "--workers", "1", "--device", "cpu"]


def digit(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A drawn 'digit': a bright bar whose position is the class, plus noise."""
    pixels = rng.integers(0, 40, (size, size))
    pixels[:, 2 + 3 * label:4 + 3 * label] = 220
    return pixels.astype(np.uint8)


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory):
    """A prepared-data layout of 16x16 grayscale PNGs: 3 classes, 4 labeled + 4 val + 4 test each,
    60 unlabeled."""
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(0)
    for split, n in (("labeled", 4), ("val", 4), ("test", 4)):
        for c in range(3):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(digit(c, rng), "L").save(root / split / str(c) / f"{i}.png")
    (root / "unlabeled").mkdir()
    for i in range(60):
        Image.fromarray(digit(i % 3, rng), "L").save(root / "unlabeled" / f"{i:03d}.png")
    return root


def test_mlp_has_the_papers_layer_sizes_noise_and_trainable_scales():
    model = MLPClassifier(10, 28)
    sizes = [(layer.in_features, layer.out_features) for layer in model.layers]
    assert sizes == [(784, 1000), (1000, 500), (500, 250), (250, 250), (250, 250), (250, 10)]
    assert [n.sigma for n in model.noise] == [0.3, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    scales = [layer.parametrizations.weight.original0 for layer in model.layers]
    assert [g.requires_grad for g in scales] == [False] * 5 + [True]  # only the output layer's g trains
    assert model.feature_dim == 250


def test_mlp_noise_is_active_in_training_only_and_on_pixels_in_0_1():
    torch.manual_seed(0)
    model = MLPClassifier(3, 4, widths=(5,))
    x = torch.full((2000, 1, 4, 4), -1.0)  # black in [-1, 1] = 0 in the paper's [0, 1]
    model.eval()
    assert torch.equal(model(x[:1]), model(x[:1]))
    model.train()
    noisy_input = model.noise[0](model._inputs(x))
    assert abs(noisy_input.mean().item()) < 0.01 and abs(noisy_input.std().item() - 0.3) < 0.01
    assert not torch.equal(model(x[:1]), model(x[:1]))


def test_data_dependent_init_normalises_every_pre_activation():
    torch.manual_seed(0)
    model = MLPClassifier(10, 8, widths=(40, 30), input_noise=0.0, hidden_noise=0.0)
    x = torch.rand(500, 1, 8, 8) * 2 - 1
    model.data_dependent_init(x)
    h = model._inputs(x)
    for i, layer in enumerate(model.layers):
        pre = layer(h)
        assert torch.allclose(pre.mean(0), torch.zeros(pre.shape[1]), atol=1e-4)
        assert torch.allclose(pre.var(0, unbiased=False), torch.ones(pre.shape[1]), atol=1e-3)
        h = torch.relu(pre)


def test_mlp_rejects_images_of_another_size():
    with pytest.raises(ValueError, match="784 inputs"):
        MLPClassifier(10, 28)(torch.zeros(2, 3, 28, 28))


def test_mlp_generator_maps_normal_noise_to_the_papers_uniform_z_and_images_in_range():
    torch.manual_seed(0)
    gen = MLPGenerator(28)
    out = gen(torch.randn(64, 100))
    assert out.shape == (64, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    z = torch.randn(100_000)
    uniform = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs(uniform.var().item() - 1 / 12) < 0.002
    assert gen.out.parametrizations.weight.original0.eq(1).all()  # weight-normed output, g from 1
    norms = [m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and not any(n.weight.requires_grad for n in norms)  # BN without scale


def test_mlp_round_trips_through_meta_and_state_dict():
    torch.manual_seed(0)
    model, gen = MLPClassifier(10, 28), MLPGenerator(28)
    model.eval()
    copy = build_classifier(classifier_meta(model))
    copy.load_state_dict(model.state_dict())
    copy.eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(copy(x), model(x))
    gen_copy = build_generator(generator_meta(gen))
    gen_copy.load_state_dict(gen.state_dict())
    assert isinstance(gen_copy, MLPGenerator) and gen_copy.z_dim == 100


def test_weight_average_is_corrected_for_its_start_and_copies_buffers():
    model = torch.nn.BatchNorm1d(1)
    average = engine.WeightAverage(model, decay=0.5)
    for step, value in enumerate([1.0, 3.0], start=1):
        model.weight.data.fill_(value)
        model.running_mean.fill_(10 * value)
        average.update(step)
    # (0.5 * 1 + 3) / (1 + 0.5): weights 0.5^(t - s), normalised; a zero start would give 1.75.
    assert average.module.weight.item() == pytest.approx(7 / 3)
    assert average.module.running_mean.item() == 30.0  # copied, not averaged
    assert engine.WeightAverage(model, decay=0.0).module is model


def test_lr_schedule_is_constant_then_linear_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = engine.LrSchedule({"c": opt}, {"c": 2.0}, total_steps=10, decay_start=0.6)
    assert [schedule.factor(s) for s in (0, 5, 6, 8, 9)] == [1.0, 1.0, 1.0, 0.5, 0.25]
    schedule.apply(8)
    assert opt.param_groups[0]["lr"] == 1.0
    constant = engine.LrSchedule({"c": opt}, {"c": 2.0}, total_steps=10, decay_start=1.0)
    constant.apply(9)
    assert opt.param_groups[0]["lr"] == 1.0  # untouched


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_grayscale_pngs_stay_one_channel_with_their_pixels(gray_data, backend):
    if backend == "dali" and not dali_loaders.dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    assert dali_loaders.image_channels(gray_data / "val") == 1
    loader = dali_loaders.labeled_loader(gray_data / "val", batch_size=12, image_size=16, train=False,
                                         backend=backend, channels=1)
    images, labels = next(iter(loader))
    assert images.shape == (12, 1, 16, 16)
    first = np.asarray(Image.open(gray_data / "val" / "0" / "0.png"))
    assert torch.equal(dali_loaders.to_uint8(images[0, 0]), torch.from_numpy(first.copy()))


def test_no_flip_keeps_training_images_as_they_are(gray_data):
    source = dali_loaders.unlabeled_loader(gray_data / "unlabeled", batch_size=60, image_size=16,
                                           train=False, backend="torch", channels=1)
    held = dali_loaders.InMemoryLoader(source, batch_size=60, seed=0, flip=False)
    batch = dali_loaders.to_uint8(held.batch(1, 0))
    order = held._epoch_order(1)
    assert torch.equal(batch, held.images[order])
    flipped = dali_loaders.InMemoryLoader(source, batch_size=60, seed=0)
    assert not torch.equal(dali_loaders.to_uint8(flipped.batch(1, 0)), batch)


def test_mlp_ssgan_trains_saves_the_average_and_resumes_as_if_uninterrupted(gray_data, tmp_path, monkeypatch):
    # Chainer's Adam form: its step count, which sets the step size, must come back too
    flags = [*MLP_FAST, "--data", str(gray_data), "--g-loss", "feature-matching", "--weight-average", "0.9",
             "--lr-decay-start", "0.5", "--steps-per-epoch", "3", "--epochs", "2",
             "--adam-eps-form", "inside-uncorrected"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train_ssgan.main([*flags, "--out", str(whole)]) == 0
    with monkeypatch.context() as m:  # the budget runs out after epoch 1's three steps
        calls = iter(range(100))
        m.setattr(engine.Budget, "exhausted", lambda self: next(calls) >= 3)
        assert train_ssgan.main([*flags, "--out", str(part)]) == 0
    after_one = torch.load(part / "last.pt", weights_only=True)
    assert after_one["epoch"] == 1
    assert train_ssgan.main([*flags, "--out", str(part), "--resume"]) == 0
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (whole, part))
    for name in ("classifier", "classifier_trained", "generator"):
        assert a[name].keys() == b[name].keys() and all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert a["classifier_meta"]["arch"] == "mlp" and a["classifier_meta"]["in_channels"] == 1
    assert a["generator_meta"]["arch"] == "mlp"
    # The hidden layers' scales, set from the data once, are never trained; the output layer's is.
    for i, trained in ((0, False), (4, False), (5, True)):
        g = f"layers.{i}.parametrizations.weight.original0"
        assert torch.equal(after_one["classifier_trained"][g], a["classifier_trained"][g]) is not trained
    # evaluate.py scores the saved average and reads grayscale test digits as one channel.
    assert not all(torch.equal(a["classifier"][k], a["classifier_trained"][k]) for k in a["classifier"])
    model = evaluate.load_model(whole / "last.pt", "ssgan")
    assert model.state["channels"] == 1
    assert torch.equal(model.classifier.state_dict()["layers.5.bias"], a["classifier"]["layers.5.bias"])


def test_supervised_mlp_learns_the_drawn_digits_and_evaluate_reads_a_zip_of_them(gray_data, tmp_path, capsys):
    out = tmp_path / "sup"
    assert train_supervised.main([*MLP_FAST, "--data", str(gray_data), "--out", str(out), "--optimizer", "adam",
                                  "--weight-average", "0.9", "--steps-per-epoch", "20", "--epochs", "2"]) == 0
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val"]["accuracy"] == 1.0 and set(best) >= {"classifier", "classifier_trained"}
    # metrics.csv logs the trained weights' val accuracy beside the average's
    last = torch.load(out / "last.pt", weights_only=True)
    trained = build_classifier(last["classifier_meta"])
    trained.load_state_dict(last["classifier_trained"])
    rt = engine.setup_runtime("cpu")
    val = engine.val_loader(gray_data, rt, batch_size=8, image_size=16, loader="torch", workers=1, channels=1)
    row = engine.read_metrics(out / "metrics.csv")[-1]
    assert float(row["val_acc_trained"]) == pytest.approx(engine.evaluate(trained, val, 3, rt)["accuracy"], abs=1e-6)
    # A zip of test digits with one colour PNG among them: scored in one channel, the colour one listed.
    import zipfile
    with zipfile.ZipFile(tmp_path / "digits.zip", "w") as zf:
        for png in sorted((gray_data / "test").rglob("*.png")):
            zf.write(png, f"digits/{png.parent.name}/{png.name}")
        colour = Image.fromarray(np.dstack([digit(0, np.random.default_rng(1))] * 2 + [np.zeros((16, 16), np.uint8)]))
        zf.writestr("digits/0/colour.png", _png_bytes(colour))
    assert evaluate.main([str(out / "best.pt"), "--data", str(tmp_path / "digits.zip"), "--workers", "1",
                          "--loader", "torch", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    import json
    result = json.loads((tmp_path / "r.json").read_text())["models"][0]
    assert result["count"] == 12 and result["accuracy"] == 1.0
    assert "digits/0/colour.png: colour image (mode RGB)" in capsys.readouterr().err


def _png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("trainer", [train_supervised, train_ssgan])
def test_resnet_refuses_grayscale_data_in_one_line(gray_data, tmp_path, capsys, trainer):
    assert trainer.main(["--data", str(gray_data), "--out", str(tmp_path / "r"), "--arch", "resnet18",
                         "--image-size", "32", "--loader", "torch", "--device", "cpu", "--epochs", "1"]) == 1
    assert "--arch resnet18 takes RGB images" in capsys.readouterr().err


@pytest.mark.skipif(not MNIST_ZIP.exists(), reason=f"{MNIST_ZIP} not found: set MNIST_PNG_ZIP to a mnist_png.zip to run this test on the real digits")
def test_mlp_on_a_few_hundred_real_digits_beats_chance_by_far(tmp_path):
    import zipfile
    with zipfile.ZipFile(MNIST_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("train/") and n.endswith(".png"))
        by_digit = {}
        for n in names:
            by_digit.setdefault(n.split("/")[1], []).append(n)
        for d, members in by_digit.items():
            for split, chosen in (("labeled", members[:10]), ("val", members[10:30])):
                (tmp_path / "data" / split / d).mkdir(parents=True, exist_ok=True)
                for n in chosen:
                    (tmp_path / "data" / split / d / Path(n).name).write_bytes(zf.read(n))
    out = tmp_path / "sup"
    assert train_supervised.main(["--data", str(tmp_path / "data"), "--out", str(out), "--arch", "mlp",
                                  "--image-size", "28", "--no-flip", "--batch-size", "100", "--optimizer", "adam",
                                  "--lr", "3e-3", "--loader", "torch", "--workers", "1", "--device", "cpu",
                                  "--steps-per-epoch", "100", "--epochs", "1"]) == 0
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val"]["count"] == 200 and best["val"]["accuracy"] > 0.5  # chance: 0.1


def test_readme_snippet_writes_the_zip_layout_that_prepare_data_reads(tmp_path, monkeypatch):
    """README's torchvision snippet, run with a stand-in for torchvision's MNIST (no download)."""
    import json
    import torchvision.datasets

    import prepare_data
    code = (ROOT / "README.md").read_text().split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]

    class FakeMNIST:
        def __init__(self, root, train, download):
            rng = np.random.default_rng(int(train))
            self.items = [(Image.fromarray(digit(n % 3, rng, 28), "L"), n % 3) for n in range(15 if train else 6)]

        def __iter__(self):
            return iter(self.items)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    assert prepare_data.main(["--src", "mnist_png.zip", "--test-folder", "test", "--grayscale", "--out", "d",
                              "--n-labeled", "3", "--n-val", "3", "--workers", "1"]) == 0
    counts = json.loads((tmp_path / "d" / "summary.json").read_text())["counts"]
    assert [counts[s]["total"] for s in ("labeled", "val", "test", "unlabeled")] == [3, 3, 6, 9]
    assert Image.open(next((tmp_path / "d" / "test" / "2").iterdir())).mode == "L"


def test_default_init_keeps_torch_linear_weights_and_trains_every_scale():
    torch.manual_seed(0)
    model = MLPClassifier(10, 16, data_init=False)
    for layer in model.layers:  # weight norm with g = ||v||: the weights nn.Linear drew
        wn = layer.parametrizations.weight
        assert wn.original0.requires_grad and torch.allclose(wn.original0, wn.original1.norm(dim=1, keepdim=True))
        bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.data_dependent_init(torch.rand(20, 1, 16, 16) * 2 - 1)  # nothing to set
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    norms = [m.weight.requires_grad for m in MLPGenerator(16, bn_scale=True).modules()
             if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms == [True, True]
    assert [m.weight.requires_grad for m in MLPGenerator(16).modules() if isinstance(m, torch.nn.BatchNorm1d)] == [False] * 2


@pytest.mark.parametrize("fm_target", ["reused", "fresh"])
def test_feature_matching_target_by_hand(fm_target):
    """loss_g against its definition: reused matches the unlabeled features the classifier step saw
    (before its update) with the images it judged; fresh matches a second batch and new images,
    both through the updated classifier. Noise off, so every pass can be recomputed."""
    import copy
    torch.manual_seed(0)
    classifier = MLPClassifier(3, 16, input_noise=0.0, hidden_noise=0.0, data_init=False)
    netG = MLPGenerator(16, z_dim=8)
    opt_d = torch.optim.Adam(classifier.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(netG.parameters(), lr=1e-2, betas=(0.5, 0.999))
    x_lab, y_lab = torch.rand(6, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    x_unl, fm_real = torch.rand(8, 1, 16, 16) * 2 - 1, torch.rand(8, 1, 16, 16) * 2 - 1
    z, z_g = torch.randn(8, 8), torch.randn(8, 8)
    before_c, before_g = copy.deepcopy(classifier), copy.deepcopy(netG)
    fresh = fm_target == "fresh"
    rt = engine.Runtime(torch.device("cpu"))
    stats = train_ssgan.ssgan_step(train_ssgan.DiscriminatorPasses(classifier), classifier, netG, opt_d, opt_g,
                                   torch.amp.GradScaler("cpu", enabled=False), x_lab, y_lab, x_unl, z,
                                   "feature-matching", rt, fm_real=fm_real if fresh else None,
                                   z_g=z_g if fresh else None)
    with torch.no_grad():
        if fresh:  # the classifier after its update (the generator step leaves it alone), G before its own
            target, generated = classifier.features(fm_real), classifier.features(before_g(z_g))
        else:
            target, generated = before_c.features(x_unl), classifier.features(before_g(z))
        expected = ((target.mean(0) - generated.mean(0)) ** 2).mean().item()
    assert stats["loss_g"] == pytest.approx(expected, rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(before_c.parameters(), classifier.parameters()))


def test_a_collapsed_generator_is_named_in_the_log(gray_data, tmp_path, monkeypatch, capsys):
    flags = [*MLP_FAST, "--data", str(gray_data), "--g-loss", "feature-matching", "--fm-target", "fresh",
             "--mlp-init", "default", "--steps-per-epoch", "2", "--epochs", "1"]
    assert train_ssgan.main([*flags, "--out", str(tmp_path / "healthy")]) == 0
    assert "collapsed" not in capsys.readouterr().err
    monkeypatch.setattr(train_ssgan, "COLLAPSED_D_FAKE", 1.0)  # every D(G(z)) is under 1
    assert train_ssgan.main([*flags, "--out", str(tmp_path / "collapsed")]) == 0
    err = capsys.readouterr().err
    assert "warning: epoch 1: the generator has collapsed: mean D(G(z))" in err and "< 1.0" in err
    article = ["article" if a == "feature-matching" else a for a in flags]
    assert train_ssgan.main([*article, "--out", str(tmp_path / "x")]) == 1
    assert "--fm-target fresh is a form of feature matching" in capsys.readouterr().err


def test_adam_eps_reaches_both_optimizers_and_resumes(gray_data, tmp_path, capsys):
    flags = [*MLP_FAST, "--data", str(gray_data), "--g-loss", "feature-matching", "--steps-per-epoch", "2",
             "--out", str(tmp_path / "run"), "--adam-eps", "1e-4"]
    assert train_ssgan.main([*flags, "--epochs", "1", "--adam-eps-form", "inside-uncorrected"]) == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizers"]
    groups = [group for name in ("classifier", "generator") for group in saved[name]["param_groups"]]
    assert [(group["eps"], group["corrected"]) for group in groups] == [(1e-4, False), (1e-4, False)]
    with pytest.raises(SystemExit):  # another optimizer would make it another run
        train_ssgan.main([*flags, "--epochs", "2", "--resume", "--adam-eps-form", "inside"])
    assert "--adam-eps-form cannot change on --resume" in capsys.readouterr().err
    assert train_ssgan.main([*flags, "--epochs", "2", "--resume"]) == 0  # goes on with its own form
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["args"]["adam_eps_form"] == "inside-uncorrected"
    generator = saved["optimizers"]["generator"]
    assert generator["param_groups"][0]["eps"] == 1e-4 and generator["param_groups"][0]["corrected"] is False
    assert generator["state"][0]["step"] == 4


@pytest.mark.parametrize("form, moved", [
    # g = 1e-3 after no step: m = 0.5e-3, v = 1e-9; bias-corrected m_hat = 1e-3, v_hat = 1e-6
    ("outside", 0.1 * 1e-3 / (1e-3 + 1e-8)),  # 0.099999
    ("inside", 0.1 * 1e-3 / math.sqrt(1e-6 + 1e-8)),  # 0.099504
    # Chainer's step size lr sqrt(1 - 0.999) / (1 - 0.5) = 0.0063246 times m / sqrt(v + eps) = 4.7673
    ("inside-uncorrected", 0.1 * math.sqrt(1 - 0.999) / (1 - 0.5) * 0.5e-3 / math.sqrt(1e-9 + 1e-8)),  # 0.030151
])
def test_adam_eps_forms_by_hand(form, moved):
    """One step of each --adam-eps-form on one weight (lr 0.1, betas 0.5 / 0.999, eps 1e-8): on a
    gradient of 1e-3 Chainer's first step is a third of the others' (its warm-up)."""
    w = torch.nn.Parameter(torch.ones(1))
    opt = train_ssgan.make_adam([w], 0.1, (0.5, 0.999), 1e-8, form)
    w.grad = torch.full((1,), 1e-3)
    opt.step()
    assert 1 - w.item() == pytest.approx(moved, rel=1e-4)


def test_chainer_adam_becomes_salimans_adam():
    """After 10,000 steps of the same gradient (0.999^t = 4.5e-5) the two root forms take the same
    step, lr m_hat / sqrt(v_hat + eps): Chainer's is lr m_hat / sqrt(v_hat + eps / (1 - 0.999^t)),
    here 2.2e-7 shorter (eps 1e-8 against v_hat 1e-6)."""
    late = {}
    for name in ("inside", "inside-uncorrected"):
        w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = train_ssgan.make_adam([w], 1e-6, (0.5, 0.999), 1e-8, name)
        for _ in range(10_000):
            w.grad = torch.full((1,), 1e-3, dtype=torch.float64)
            opt.step()
        w0 = w.item()
        opt.step()
        late[name] = w0 - w.item()
    assert late["inside"] == pytest.approx(1e-6 * 1e-3 / math.sqrt(1e-6 + 1e-8), rel=1e-9)
    assert late["inside-uncorrected"] / late["inside"] == pytest.approx(1 - 2.2e-7, abs=1e-8)


def _reference_adam(params: list, grads: list, state: dict, lr: float, eps: float) -> None:
    """openai/improved-gan's nn.adam_updates (mom1 0.5, mom2 0.999): ε = 1e-8 under the root of the
    bias-corrected v (`--adam-eps-form inside`)."""
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    for i, (p, g) in enumerate(zip(params, grads)):
        m, v = state.setdefault(("m", i), torch.zeros_like(p)), state.setdefault(("v", i), torch.zeros_like(p))
        m.mul_(0.5).add_(0.5 * g)
        v.mul_(0.999).add_(0.001 * g * g)
        with torch.no_grad():
            p -= lr * (m / (1 - 0.5 ** t)) / (v / (1 - 0.999 ** t) + eps).sqrt()


@pytest.fixture
def float64():
    """In float32 two correct implementations part after a step or two: a rounding difference flips
    a ReLU or a near-cancelling generator gradient, and Adam turns it into a step of ~lr."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def test_paper_recipe_step_equals_the_reference_code_written_out(float64):
    """`--mlp-init data --fm-target fresh` against train_mnist_feature_matching.py and nn.py of
    openai/improved-gan, transcribed here as plain tensors (theta [in, out], weight_scale, b;
    W = theta * scale / ||theta|| per output unit): the data-dependent init on 500 images, then
    three steps of D update, G update; every parameter must match. Same Gaussian noise on both
    sides (one seed, drawn in the trainer's order: the labeled and unlabeled batches' passes as one).
    One departure, documented: BatchNorm's ε 1e-5 (theirs 1e-6)."""
    torch.manual_seed(0)
    # the paper's layers, narrower (the transcription does not depend on the widths)
    classifier, netG = MLPClassifier(10, 28, widths=(60, 50, 40, 30, 20)), MLPGenerator(28, width=50)
    wn = [layer.parametrizations.weight for layer in classifier.layers]
    theta = [w.original1.detach().t().clone().requires_grad_() for w in wn]  # their theta ~ N(0, 0.1)
    scale = [torch.ones(w.original1.shape[0]) for w in wn]
    bias = [torch.zeros(w.original1.shape[0], requires_grad=True) for w in wn]
    g_w = [netG.hidden[0].weight.detach().t().clone().requires_grad_(),  # Glorot, as Lasagne's DenseLayer
           netG.hidden[3].weight.detach().t().clone().requires_grad_(),
           netG.out.parametrizations.weight.original1.detach().t().clone().requires_grad_()]
    g_b = [torch.zeros(50, requires_grad=True), torch.zeros(50, requires_grad=True),
           torch.zeros(784, requires_grad=True)]  # BatchNorm's b (no g), the output layer's b
    g_scale = torch.ones(784, requires_grad=True)  # nn.l2normalize's W_scale, trained

    def ref_dense(h, i):
        return h @ (theta[i] * (scale[i] / theta[i].pow(2).sum(0).sqrt())) + bias[i]

    def ref_features(x01):  # get_output(layers[-3], deterministic=False): the last hidden layer's output
        h = x01 + 0.3 * torch.randn_like(x01)
        for i in range(5):
            h = torch.relu(ref_dense(h, i))
            if i < 4:
                h = h + 0.5 * torch.randn_like(h)
        return h

    def ref_disc(x01):  # get_output(layers[-1], deterministic=False): (features, logits)
        h = ref_features(x01)
        return h, ref_dense(h + 0.5 * torch.randn_like(h), 5)

    def ref_gen(u):
        h = u
        for i in range(2):
            a = h @ g_w[i]
            h = torch.nn.functional.softplus((a - a.mean(0)) / (a.var(0, unbiased=False) + 1e-5).sqrt() + g_b[i])
        w = g_w[2] * (g_scale / (1e-6 + g_w[2].pow(2).sum(0)).sqrt())
        return torch.sigmoid(h @ w + g_b[2])  # [N, 784] in [0, 1]

    def lse(logits):
        return torch.logsumexp(logits, 1)

    # data-dependent init: init=True pass on trainx[:500], noise on
    x500 = torch.rand(500, 1, 28, 28) * 2 - 1
    torch.manual_seed(1)
    classifier.data_dependent_init(x500)
    torch.manual_seed(1)
    with torch.no_grad():
        h = (x500.reshape(500, -1) + 1) / 2 + 0.3 * torch.randn(500, 784)
        for i in range(6):
            a = h @ (theta[i] / theta[i].pow(2).sum(0).sqrt())
            ma, stdv = a.mean(0), (a - a.mean(0)).pow(2).mean(0).sqrt()
            scale[i], bias[i].data = 1 / stdv, -ma / stdv
            h = (a - ma) / stdv
            if i < 5:
                h = torch.relu(h) + 0.5 * torch.randn_like(h)
    for i in range(6):
        assert torch.allclose(wn[i].original0.flatten(), scale[i], rtol=1e-4)
        assert torch.allclose(classifier.layers[i].bias, bias[i], rtol=1e-4, atol=1e-5)
    scale[5].requires_grad_()  # the output layer's scale trains (train_scale=True), the hidden ones do not

    lr, eps = 3e-3, 1e-8
    opt_d = train_ssgan.make_adam(classifier.parameters(), lr, (0.5, 0.999), eps, "inside")
    opt_g = train_ssgan.make_adam(netG.parameters(), lr, (0.5, 0.999), eps, "inside")
    d_params, g_params, state_d, state_g = [*theta, *bias, scale[5]], [*g_w, *g_b, g_scale], {}, {}
    rt = engine.Runtime(torch.device("cpu"))
    for step in range(3):
        x_lab, y_lab = torch.rand(100, 1, 28, 28) * 2 - 1, torch.arange(100) % 10
        x_unl, fm_real = torch.rand(100, 1, 28, 28) * 2 - 1, torch.rand(100, 1, 28, 28) * 2 - 1
        z, z_g = torch.randn(100, 100), torch.randn(100, 100)
        torch.manual_seed(10 + step)
        stats = train_ssgan.ssgan_step(train_ssgan.DiscriminatorPasses(classifier), classifier, netG, opt_d, opt_g,
                                       torch.amp.GradScaler("cpu", enabled=False), x_lab, y_lab, x_unl, z,
                                       "feature-matching", rt, fm_real=fm_real, z_g=z_g)
        torch.manual_seed(10 + step)
        u, u_g = (0.5 * (1 + torch.erf(n / math.sqrt(2))) for n in (z, z_g))  # their z ~ U[0, 1)
        gen_dat = ref_gen(u)
        out = ref_disc(torch.cat([x_lab, x_unl]).reshape(200, -1) * 0.5 + 0.5)[1]
        out_lab, out_unl, out_fake = out[:100], out[100:], ref_disc(gen_dat.detach())[1]
        loss_lab = -out_lab[torch.arange(100), y_lab].mean() + lse(out_lab).mean()
        loss_unl = (-0.5 * lse(out_unl).mean() + 0.5 * torch.nn.functional.softplus(lse(out_unl)).mean()
                    + 0.5 * torch.nn.functional.softplus(lse(out_fake)).mean())
        _reference_adam(d_params, torch.autograd.grad(loss_lab + loss_unl, d_params), state_d, lr, eps)
        mom_real = ref_features(fm_real.reshape(100, -1) * 0.5 + 0.5).mean(0)
        mom_gen = ref_disc(ref_gen(u_g))[0].mean(0)  # the trainer's pass also draws the logits' noise
        loss_gen = (mom_gen - mom_real.detach()).pow(2).mean()
        _reference_adam(g_params, torch.autograd.grad(loss_gen, g_params), state_g, lr, eps)

        # float64 (the trainer's losses in float32): equal to rounding, where one step moves a weight
        # by up to lr = 3e-3 and a wrong noise, loss or target would move many by that much. Adam's
        # 1 / sqrt(1e-8) multiplies a near-zero gradient's float32 rounding: up to 1.1e-6 here.
        assert stats["loss_labeled"] == pytest.approx(loss_lab.item(), rel=1e-5, abs=1e-7)
        assert stats["loss_g"] == pytest.approx(loss_gen.item(), rel=1e-5)
        ours = [*(w.original1 for w in wn), *(layer.bias for layer in classifier.layers), wn[5].original0,
                netG.hidden[0].weight, netG.hidden[3].weight, netG.out.parametrizations.weight.original1,
                netG.hidden[1].bias, netG.hidden[4].bias, netG.out.bias, netG.out.parametrizations.weight.original0]
        theirs = [*(t.t() for t in theta), *bias, scale[5], *(w.t() for w in g_w), *g_b, g_scale]
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert (a.detach().flatten() - b.detach().flatten()).abs().max() < 2e-6, (step, k)

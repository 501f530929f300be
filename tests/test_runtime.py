"""Device handling that a CPU box can still check (labels follow the loader's device, CUDA RNG
state on resume, the run's first line), bad flag values, and gpu_check.py."""
import json
import sys

import pytest
import torch

import dali_loaders
import engine
import evaluate
import gpu_check
import prepare_data
import train_ssgan
import train_supervised
import two_rings
from conftest import ROOT, write_kaggle_folder
from test_training import FAST

needs_dali = pytest.mark.skipif(not dali_loaders.dali_available(), reason="NVIDIA DALI not installed")


# ----------------------------------------------------------------------------------------------
# Bad flags: one usage line (exit 2) before any data is read. --data/--src point nowhere, so a
# check that ran after reading data would fail differently.

NOWHERE = "/nonexistent/data"
BAD_FLAGS = [
    (train_ssgan, ["--image-size", "100"], "--image-size: '100': the generator cannot draw"),
    (train_ssgan, ["--batch-size", "0"], "--batch-size: 0 is not an integer >= 2"),
    (train_ssgan, ["--labeled-batch-size", "1"], "--labeled-batch-size: 1 is not an integer >= 2"),
    (train_ssgan, ["--lr-g", "0"], "--lr-g: 0 is not a positive number"),
    (train_ssgan, ["--beta1", "1.0"], "--beta1: 1.0 is not a number in [0.0, 1.0)"),
    (train_ssgan, ["--steps-per-epoch", "0"], "--steps-per-epoch: 0 is not an integer >= 1"),
    (train_ssgan, ["--z-dim", "-3"], "--z-dim: -3 is not an integer >= 1"),
    (train_ssgan, ["--seed", "-1"], "--seed: -1 is not an integer >= 0"),
    (train_ssgan, ["--image-size", "32", "--translate", "16"], "--translate 16 must be less than half"),
    (train_supervised, ["--translate", "-1"], "--translate: -1 is not an integer >= 0"),
    (train_supervised, ["--lr", "-1"], "--lr: -1 is not a positive number"),
    (train_supervised, ["--lr", "inf"], "--lr: inf is not a positive number"),
    (train_supervised, ["--epochs", "0"], "--epochs: 0 is not an integer >= 1"),
    (train_supervised, ["--epochs", "two"], "--epochs: 'two' is not an integer >= 1"),
    (train_supervised, ["--image-size", "16"], "--image-size 16 is too small for --arch resnet18 (at least 32)"),
    (train_ssgan, ["--image-size", "16"], "--image-size 16 is too small for --arch resnet18 (at least 32)"),
    (train_supervised, ["--image-size", "4", "--arch", "cnn"],
     "--image-size 4 is too small for --arch cnn (at least 8)"),
    (train_supervised, ["--image-size", "3", "--arch", "mlp"], "--image-size: 3 is not an integer >= 4"),
    (train_ssgan, ["--dropout", "0.5"], "--dropout sets the small CNN's dropout: it needs --arch cnn, not resnet18"),
    (train_supervised, ["--arch", "mlp", "--input-dropout", "0.2"],
     "--input-dropout sets the small CNN's dropout: it needs --arch cnn, not mlp"),
    (train_supervised, ["--arch", "cnn", "--dropout", "1"], "--dropout: 1 is not a number in [0.0, 1.0)"),
    (train_supervised, ["--max-minutes", "-5"], "--max-minutes: -5 is not a positive number"),
    (train_supervised, ["--workers", "0"], "--workers: 0 is not an integer >= 1"),
    (evaluate, ["--batch-size", "0"], "--batch-size: 0 is not an integer >= 1"),
    (evaluate, ["--workers", "-2"], "--workers: -2 is not an integer >= 1"),
    (prepare_data, ["--src", NOWHERE, "--n-labeled", "-1"], "--n-labeled: '-1' is not an integer >= 0"),
    (prepare_data, ["--src", NOWHERE, "--image-size", "4"], "--image-size: '4' is not an integer >= 8"),
    (prepare_data, ["--src", NOWHERE, "--workers", "0"], "--workers: '0' is not an integer >= 1"),
    (prepare_data, ["--synthetic", "0"], "--synthetic: '0' is not an integer >= 1"),
    (two_rings, ["--steps", "0"], "--steps: 0 is not an integer >= 1"),
    (two_rings, ["--radii", "1", "-2"], "--radii: -2 is not a positive number"),
    (two_rings, ["--n-labeled", "5", "--points-per-ring", "3"], "--n-labeled 5 is more than --points-per-ring 3"),
    (gpu_check, ["--image-size", "48"], "--image-size: '48': the generator cannot draw"),
]


@pytest.mark.parametrize("script, argv, message", BAD_FLAGS,
                         ids=[f"{s.__name__}:{' '.join(a)}" for s, a, _ in BAD_FLAGS])
def test_bad_flag_values_are_one_line_usage_errors(script, argv, message, capsys):
    data_flags = ["--data", NOWHERE] if script in (train_ssgan, train_supervised, evaluate) else []
    with pytest.raises(SystemExit) as exit_info:
        script.main([*data_flags, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"{script.get_args_parser().prog}: error:")


def test_loader_dali_without_dali_is_a_one_line_error(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dali_loaders, "dali_available", lambda: False)
    argv = ["--data", str(tiny_data), "--out", str(tmp_path / "r"), *FAST, "--loader", "dali"]
    assert train_supervised.main(argv) == 1
    assert "--loader torch" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------------
# Labels follow the loader's device. "meta" stands in for CUDA: a device that is not the CPU,
# available on any machine. DALI's file reader hands labels back on the CPU even when images come
# from the GPU decoder; the loader must move them.

def test_labels_are_moved_to_the_loaders_device():
    loader = dali_loaders.TorchLoader(["a.jpg", "b.jpg"], [0, 1], batch_size=2, image_size=8,
                                      train=False, device="meta")
    images, labels = loader._output(torch.zeros(2, 3, 8, 8), torch.tensor([[0], [1]], dtype=torch.int32))
    assert labels.device.type == "meta" and labels.dtype == torch.int64 and labels.shape == (2,)


@needs_dali
def test_dali_labels_follow_the_device_and_images_come_channels_last(tiny_data):
    kw = dict(batch_size=4, image_size=16, train=False, backend="dali", num_threads=1)
    cpu = dali_loaders.labeled_loader(tiny_data / "val", device="cpu", **kw)
    for images, labels in cpu:
        assert images.shape == (4, 3, 16, 16) and labels.device.type == "cpu"
        # HWC out of the pipeline, NCHW view of it: channels_last without a copy.
        assert images.is_contiguous(memory_format=torch.channels_last)
    meta = dali_loaders.labeled_loader(tiny_data / "val", device="meta", **kw)
    assert all(labels.device.type == "meta" for _, labels in meta)


@needs_dali
def test_dali_eval_pipeline_is_reused_and_an_unfinished_pass_is_not(tiny_data):
    loader = dali_loaders.labeled_loader(tiny_data / "val", batch_size=3, image_size=16,
                                         train=False, backend="dali", num_threads=1)
    first = [(x.clone(), y.clone()) for x, y in loader]
    pipeline = loader._iterator
    second = list(loader)
    assert loader._iterator is pipeline  # reset, not rebuilt
    assert [len(y) for _, y in first] == [3, 3, 2] == [len(y) for _, y in second]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    next(iter(loader))  # abandoned after one batch: the next pass starts from the beginning
    third = list(loader)
    assert loader._iterator is not pipeline
    assert [len(y) for _, y in third] == [3, 3, 2] and torch.equal(third[0][0], first[0][0])


def test_in_memory_batches_stay_on_the_device_in_the_stored_memory_format(tiny_data):
    memory = dali_loaders.in_memory_loader(tiny_data / "labeled", labeled=True, batch_size=4, image_size=16,
                                           backend="torch", num_threads=1, seed=1)
    memory.images = memory.images.contiguous(memory_format=torch.channels_last)  # as DALI stores it
    images, labels = memory.batch(2, 1)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.device == labels.device == memory.device
    order = memory._epoch_order(2)
    assert order.tolist() == dali_loaders.epoch_indices(len(memory.images), train=True, epoch=2, seed=1)
    assert labels.tolist() == memory.labels_tensor[order[4:8]].tolist()
    # Orders move to the device in blocks of epochs (one copy), not once per step or epoch.
    blocks = memory._orders[1]
    memory.batch(2 + memory.ORDER_BLOCK - 1, 0)
    assert memory._orders[1] is blocks
    memory.batch(2 + memory.ORDER_BLOCK, 0)
    assert memory._orders[1] is not blocks and memory._orders[0] == 2 + memory.ORDER_BLOCK


# ----------------------------------------------------------------------------------------------
# CUDA RNG state: only this process's device is saved; any saved list restores on fewer GPUs.

def test_rng_state_on_cpu_saves_no_cuda_state():
    state = engine.rng_state(torch.device("cpu"))
    assert state["cuda"] == [] and torch.equal(state["torch"], torch.get_rng_state())


def test_rng_state_saves_this_gpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(device) or torch.ones(3))
    state = engine.rng_state(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)] and len(state["cuda"]) == 1


@pytest.mark.parametrize("saved, device_index, expected", [
    (4, 0, 0),   # a 4-GPU torchrun run resumed on one GPU
    (4, 1, 1),   # an older checkpoint holding every GPU: this device's entry
    (1, 3, 0),   # one entry (the saving rank's GPU) restores on any device
    (2, 5, 0),   # more devices now than entries: the first
])
def test_resume_with_more_saved_cuda_states_than_gpus(monkeypatch, saved, device_index, expected):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    before = torch.get_rng_state()
    state = {"torch": before, "cuda": [torch.full((4,), k, dtype=torch.uint8) for k in range(saved)]}
    torch.rand(5)  # move the CPU generator on; set_rng_state must bring it back
    engine.set_rng_state(state, torch.device("cuda", device_index))
    assert torch.equal(torch.get_rng_state(), before)
    assert len(restored) == 1
    tensor, device = restored[0]
    assert int(tensor[0]) == expected and device == torch.device("cuda", device_index)


def test_cpu_resume_ignores_saved_cuda_states(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("touched CUDA"))
    engine.set_rng_state({"torch": torch.get_rng_state(), "cuda": [torch.zeros(4, dtype=torch.uint8)]},
                         torch.device("cpu"))


# ----------------------------------------------------------------------------------------------
# What a run uses is its first line; a GPU that torch cannot use is not silently ignored.

def test_first_line_names_device_loader_and_precision(tiny_data, tmp_path, capsys):
    argv = ["--data", str(tiny_data), "--out", str(tmp_path / "r"), "--epochs", "1", *FAST]
    assert train_supervised.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "device cpu | loader torch | precision float32, channels_last | 1 process"


def test_auto_device_warns_when_a_driver_is_present_but_unusable(monkeypatch, capsys):
    import os
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: True if p == "/proc/driver/nvidia/version" else real_exists(p))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = engine.setup_runtime("auto", amp=False, loader="torch")
    assert rt.device.type == "cpu"
    err = capsys.readouterr().err
    assert "NVIDIA driver is present" in err and "--device cpu" in err
    engine.setup_runtime("cpu", amp=False, loader="torch")
    assert capsys.readouterr().err == ""  # asked for the CPU: nothing to warn about


# ----------------------------------------------------------------------------------------------

def test_throughput_bench_loss_check_passes_and_catches_a_wrong_loss(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import throughput
    throughput.check_same_losses(32)  # passes: the same maths
    right = throughput.article_fake_loss
    monkeypatch.setattr(throughput, "article_fake_loss", lambda logits: 1.01 * right(logits))
    with pytest.raises(AssertionError, match="loss_fake: ours"):
        throughput.check_same_losses(32)


def test_gpu_check_skips_cleanly_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu-check: SKIP: no CUDA device")


def test_gpu_check_runs_every_path_on_the_cpu(tmp_path, capsys):
    """The script's own logic, with the CPU standing in for the GPU (DALI CPU, gloo, float32)."""
    write_kaggle_folder(tmp_path / "src", 20, size=(40, 40))
    code = gpu_check.main(["--cpu", "--src", str(tmp_path / "src"), "--per-class", "20",
                           "--image-size", "32", "--work", str(tmp_path / "work")])
    lines = capsys.readouterr().out.splitlines()
    status = {line.split()[1]: line.split()[0] for line in lines if line.split()[0] in ("PASS", "FAIL", "SKIP")}
    assert code == 0, lines
    decode = "PASS" if dali_loaders.dali_available() else "SKIP"
    assert status == {"dali-cpu-decode": decode, "supervised-cpu": "PASS", "ssgan-cpu": "PASS",
                      "torchrun-2cpu": "PASS", "evaluate-cpu": "PASS"}
    assert lines[-1] == f"gpu-check: {4 + (decode == 'PASS')} passed, 0 failed, {int(decode == 'SKIP')} skipped"
    assert engine.load_checkpoint(tmp_path / "work" / "ssgan_torchrun" / "last.pt")["epoch"] == 2


def test_gpu_check_reports_a_failing_path_and_exits_1(tmp_path, capsys, monkeypatch):
    write_kaggle_folder(tmp_path / "src", 20, size=(40, 40))
    monkeypatch.setattr(gpu_check.train_ssgan, "main", lambda argv: 1)  # a path that breaks
    monkeypatch.setattr(gpu_check, "check_torchrun", lambda *a: "not run here")
    code = gpu_check.main(["--cpu", "--src", str(tmp_path / "src"), "--per-class", "20",
                           "--image-size", "32", "--work", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert code == 1
    fail = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 2 and fail[0].split()[1] == "ssgan-cpu" and "epoch 1 failed" in fail[0]
    assert str(tmp_path / "work" / "ssgan-cpu.log") in fail[0]
    assert fail[1].split()[1] == "evaluate-cpu"  # no SSGAN checkpoint to score


def test_throughput_bench_cnn_levers_time_the_recipe_against_the_step_it_replaced(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import accuracy
    import throughput
    out = tmp_path / "levers.json"
    assert throughput.main(["step", "--arch", "cnn", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert rows[0]["flags"] == throughput.CNN_BEFORE and rows[-1]["flags"] == accuracy.SSGAN_ARGS
    assert [(r["labeled"], r["unlabeled"], r["g_width"]) for r in (rows[0], rows[-1])] == [(100, 64, 64), (32, 64, 16)]
    assert rows[0]["steps_vs_first"] == 1.0 and all(r["step_s"] > 0 for r in rows)
    assert rows[-1]["steps_vs_first"] == pytest.approx(rows[0]["step_s"] / rows[-1]["step_s"])
    assert all(len(r["runs_step_s"]) == 2 for r in rows)  # --quick: 2 timed rounds
    table = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in table[0]] == ["step", "labeled + unlabeled + generated", "generator width",
                                             "step", "steps/s", "vs before"]
    assert [c.strip() for c in table[2][:3]] == ["before + consistency (a 2nd view of the unlabeled batch)",
                                                 "100 + 64 (+ 64) + 64", "64"]
    assert [c.strip() for c in table[-1][:3]] == ["the recipe (bench/accuracy.py SSGAN_ARGS)", "32 + 64 + 64", "16"]

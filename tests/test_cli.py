"""What a user meets at the command line: --help shows every default, errors name their fix, and
outputs land under runs/ unless told otherwise."""
import argparse
import os

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

PARSERS = {"prepare_data.py": prepare_data.get_args_parser, "train_supervised.py": train_supervised.get_args_parser,
           "train_ssgan.py": train_ssgan.get_args_parser, "evaluate.py": evaluate.get_args_parser,
           "gpu_check.py": gpu_check.get_args_parser, "two_rings.py": two_rings.get_args_parser}


def flag_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each argument's help as --help prints it, on one line."""
    formatter = parser._get_formatter()
    return {(a.option_strings or [a.dest])[-1]: " ".join(formatter._expand_help(a).split())
            for a in parser._actions if not isinstance(a, argparse._HelpAction)}


@pytest.mark.parametrize("script", PARSERS)
def test_help_shows_every_default_once(script):
    for flag, text in flag_help(PARSERS[script]()).items():
        assert "default" in text.lower(), f"{script} {flag}: no default in {text!r}"
        assert text.count("(default") <= 1, f"{script} {flag}: {text!r}"
        assert "None" not in text and "[]" not in text, f"{script} {flag}: {text!r}"


def test_help_shows_zero_and_off_defaults():
    helps = flag_help(train_ssgan.get_args_parser())
    assert helps["--translate"].endswith("(default: 0)")
    assert helps["--seed"].endswith("(default: 0)")
    assert helps["--weight-average"].endswith("(default: 0.0)")
    assert helps["--consistency-weight"].endswith("(default: 0.0)")
    assert helps["--no-amp"].endswith("(default: off)")
    assert helps["--no-flip"].endswith("(default: on)")
    assert helps["--resume"].endswith("(default: off)")
    # A help that names its default already is left as written.
    assert helps["--labeled-batch-size"] == ("labeled images per step (default: --batch-size; capped at the labeled "
                                             "set; the article takes all 100: --labeled-batch-size 100)")
    assert flag_help(two_rings.get_args_parser())["--radii"].endswith("(default: 1.0 2.5)")
    assert flag_help(gpu_check.get_args_parser())["--work"].count("default") == 1


def test_prepare_data_help_does_not_import_torch():
    """prepare_data.py holds the formatter so that its --help stays free of torch's start-up."""
    import subprocess
    import sys
    code = "import sys, prepare_data; prepare_data.get_args_parser().format_help(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(prepare_data.__file__),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_amp_on_a_cpu_names_the_fix():
    with pytest.raises(engine.TrainingError) as exc:
        engine.setup_runtime("cpu", amp=True, loader="torch")
    message = str(exc.value)
    assert "--amp needs a CUDA GPU" in message and "Leave --amp out" in message and "--no-amp" in message
    assert "nothing was trained" in message


def test_two_rings_writes_under_runs_by_default(tmp_path, monkeypatch):
    assert two_rings.get_args_parser().get_default("out") == "runs/two_rings.png"
    monkeypatch.chdir(tmp_path)
    two_rings.main(["--steps", "2", "--points-per-ring", "20", "--batch-size", "8", "--hidden", "4"])
    assert (tmp_path / "runs" / "two_rings.png").is_file()
    assert not (tmp_path / "two_rings.png").exists()


def stub_checks(monkeypatch):
    """gpu_check's paths without their training: each run folder gets a best.pt."""
    def trained(trainer, data, out, common):
        out.mkdir(parents=True, exist_ok=True)
        (out / "best.pt").write_bytes(b"")
        return "stub"
    monkeypatch.setattr(gpu_check, "train_and_resume", trained)
    monkeypatch.setattr(gpu_check, "check_torchrun", lambda *a: "stub")
    monkeypatch.setattr(gpu_check, "check_evaluate", lambda *a: "stub")


def test_gpu_check_without_dali_on_a_gpu_is_a_skip_with_the_install_line(tmp_path, capsys, monkeypatch):
    """A CUDA machine without DALI: everything else runs with the torch loader, so DALI's path is
    a SKIP that says how to install it, and the check passes."""
    stub_checks(monkeypatch)
    monkeypatch.setattr(dali_loaders, "dali_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "a GPU")
    code = gpu_check.main(["--per-class", "20", "--work", str(tmp_path / "work")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    skip = next(line for line in lines if "dali-mixed-decode" in line)
    assert skip.startswith("SKIP") and "pip install nvidia-dali-cuda120" in skip
    assert lines[-1] == "gpu-check: 3 passed, 0 failed, 2 skipped"


def test_gpu_check_cpu_without_dali_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    stub_checks(monkeypatch)
    monkeypatch.setattr(dali_loaders, "dali_available", lambda: False)
    assert gpu_check.main(["--cpu", "--per-class", "20", "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "SKIP dali-cpu-decode" in out and gpu_check.DALI_INSTALL in out

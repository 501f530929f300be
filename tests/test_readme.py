"""README.md stays true: every command in its ```bash blocks parses as written (BENCHMARKS.md's too),
its links resolve, and its results table says what bench/results/*.json holds.

A script's command is checked without training: its own parser reads the exact flags, then the
checks the script makes before it reads any data (engine.run_main with a no-op body for the
trainers and evaluate.py). `make` targets are expanded with `make -n` and their commands checked
the same way. Commands of other tools (pip, kaggle, unzip, ...) are only recognised.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results"
# The JSON behind each results row, found by the BENCHMARKS.md section the row links to.
ROW_JSON = {"dogs-vs-cats-on-a-cpu": RESULTS / "accuracy.json", "32-px-on-one-gpu": RESULTS / "accuracy_gpu.json",
            "224-px": RESULTS / "accuracy_gpu-224.json", "mnist": RESULTS / "accuracy_mnist.json",
            "mnist-the-longer-budget": RESULTS / "accuracy_mnist-long.json"}
sys.path.insert(0, str(ROOT / "bench"))  # bench/accuracy.py imports bench_machine from its folder

# Commands of other tools that README shows: recognised, not run.
OTHER_TOOLS = {"pip", "kaggle", "unzip", "source"}


# ----------------------------------------------------------------------------------------------
# README's commands

def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """Shell commands of one block: comments dropped, continuation lines joined, heredoc bodies
    kept with their command (after a newline), `&&` chains split."""
    out, lines = [], block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<\s*'?(\w+)'?", line)
        if heredoc:
            body = []
            while lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            out.append(line[:heredoc.start()].strip() + "\n" + "\n".join(body))
            continue
        line = re.sub(r"\s+#.*$", "", line)  # a trailing comment
        out.extend(part.strip() for part in line.split("&&"))
    return out


def readme_commands() -> list[str]:
    """The commands of README's ```bash blocks, and those it shows inline (`python ...`)."""
    text = README.read_text()
    fenced = [c for block in bash_blocks(text) for c in commands(block)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    inline = [" ".join(m.split()) for m in re.findall(r"`(python [^`]+)`", prose)]
    return fenced + inline


def script_parser(script: str):
    """(parser, check) for a script of the repository: check(parser, argv) raises SystemExit on
    what the script refuses before reading any data."""
    if script == "bench/accuracy.py":
        accuracy = importlib.import_module("accuracy")
        return None, lambda argv: accuracy.parse_args(argv)
    if script == "bench/pack_data.py":
        pack_data = importlib.import_module("pack_data")
        return None, lambda argv: pack_data.get_args_parser().parse_args(argv)
    module = importlib.import_module(Path(script).stem)
    parser = module.get_args_parser()
    if script == "prepare_data.py":
        def check(argv):
            args = parser.parse_args(argv)
            module.check_flags(parser, args.test_folder, args.n_test)
    elif script == "two_rings.py":
        def check(argv):
            module.check_ranges(parser, parser.parse_args(argv))
    elif script in ("train_supervised.py", "train_ssgan.py", "evaluate.py"):
        import engine

        def check(argv):
            assert engine.run_main(lambda args: None, argv, parser) == 0
    else:
        def check(argv):
            parser.parse_args(argv)
    return parser, check


def check_script(script: str, argv: list[str], capsys) -> None:
    assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"
    _, check = script_parser(script)
    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exc:
            check(argv)
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out
        return
    try:
        check(argv)
    except SystemExit as exc:  # argparse's usage error: show what it said
        pytest.fail(f"{script} {shlex.join(argv)}: refused ({exc.code}): {capsys.readouterr().err}")


def check_python(words: list[str], body: str, capsys) -> None:
    """`python ...` in any of its spellings."""
    if words[:2] == ["-m", "venv"]:
        return
    if words[:2] == ["-m", "pip"]:
        return
    if words == ["-"]:  # a heredoc script
        compile(body, "README heredoc", "exec")
        return
    check_script(words[0], words[1:], capsys)


def check_command(command: str, capsys) -> None:
    first, _, body = command.partition("\n")
    words = shlex.split(first)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 make demo
        words = words[1:]
    tool, rest = words[0], words[1:]
    name = Path(tool).name
    if name in ("python", "python3"):
        check_python(rest, body, capsys)
    elif name == "torchrun":
        script = next(i for i, w in enumerate(rest) if w.endswith(".py"))
        check_script(rest[script], rest[script + 1:], capsys)
    elif name == "make":
        check_make(rest, capsys)
    elif name == "pip":
        if "-r" in rest:
            assert (ROOT / rest[rest.index("-r") + 1]).is_file()
    elif name not in OTHER_TOOLS:
        pytest.fail(f"README shows a command this test does not know: {command!r}")


def check_make(words: list[str], capsys) -> None:
    """The target exists and each python command it would run parses."""
    result = subprocess.run(["make", "-n", *words], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.replace("\\\n", " ").splitlines():  # recipe lines continued with \
        parts = shlex.split(line)
        if parts and parts[0].endswith("/python") and parts[1].endswith(".py"):
            check_script(parts[1], parts[2:], capsys)
    if "ARGS=" in " ".join(words):
        extra = next(w for w in words if w.startswith("ARGS=")).removeprefix("ARGS=")
        assert f"gpu_check.py {extra}" in result.stdout


def test_readme_has_commands_for_every_part():
    found = readme_commands()
    scripts = {w for c in found for w in shlex.split(c.partition("\n")[0]) if w.endswith(".py")}
    assert {"prepare_data.py", "train_supervised.py", "train_ssgan.py", "evaluate.py",
            "bench/accuracy.py"} <= scripts
    assert "make demo" in found and "make test" in found


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.partition("\n")[0][:70])
def test_readme_command_parses(command, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    check_command(command, capsys)


def benchmarks_commands() -> list[str]:
    """BENCHMARKS.md's ```bash commands and its summary table's `python ...` commands."""
    text = BENCHMARKS.read_text()
    summary = text[text.index("## Summary"):].split("\n## ")[0]
    return ([c for block in bash_blocks(text) for c in commands(block)]
            + re.findall(r"`(python [^`]+)`", summary))


@pytest.mark.parametrize("command", benchmarks_commands(), ids=lambda c: c.partition("\n")[0][:70])
def test_benchmarks_command_parses(command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_command(command, capsys)


def test_readme_script_help_runs(capsys):
    """`--help` of every script README names, as a user would type it."""
    for script in ("prepare_data.py", "train_supervised.py", "train_ssgan.py", "evaluate.py",
                   "gpu_check.py", "two_rings.py", "bench/accuracy.py"):
        check_script(script, ["--help"], capsys)


# ----------------------------------------------------------------------------------------------
# Links

def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md", "docs/BENCHMARKS_HISTORY.md"])
def test_links_resolve(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{doc} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{doc} links to {target}: no such heading"


# ----------------------------------------------------------------------------------------------
# Numbers: README's results table against the JSON the benchmarks wrote

def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def points(gain: dict) -> str:
    return f"{100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points"


def planned_steps(args: str) -> int:
    """--epochs x --steps-per-epoch of a run's flags (argparse keeps the last of each)."""
    values = {}
    words = shlex.split(args)
    for flag, value in zip(words, words[1:]):
        values[flag] = value
    return int(values["--epochs"]) * int(values["--steps-per-epoch"])


def expected_cells(anchor: str) -> list[str]:
    """What the row linked to this BENCHMARKS.md section must say, from its JSON."""
    if anchor.startswith("dogs-vs-cats-on-a-cpu"):
        s = json.loads(ROW_JSON["dogs-vs-cats-on-a-cpu"].read_text())["summary"]
        return [pct(s["supervised"]["mean"]), pct(s["ssgan"]["mean"]), points(s["gains"]["ssgan - supervised"])]
    if anchor.startswith("32-px-on-one-gpu"):
        s = json.loads(ROW_JSON["32-px-on-one-gpu"].read_text())["summary"]
        return [pct(s["supervised"]["mean"]), pct(s["ssgan"]["mean"]), points(s["gains"]["ssgan - supervised"])]
    if anchor.startswith("224-px"):
        d = json.loads(ROW_JSON["224-px"].read_text())
        s, ssgan = d["summary"], next(r for r in d["runs"] if r["model"] == "ssgan")
        return [pct(s["supervised-article"]["mean"]), pct(s["ssgan"]["mean"]),
                f"{ssgan['steps']:,} of {planned_steps(ssgan['args']):,} steps",
                f"{100 * s['gains']['ssgan - supervised-article']['mean']:.1f} points"]
    if anchor.startswith("mnist"):
        key = max((k for k in ROW_JSON if anchor.startswith(k)), key=len)  # the 12,000-step table or the longer one
        s = json.loads(ROW_JSON[key].read_text())["summary"]
        return [f"{100 * (1 - s['supervised']['mean']):.2f} % error",
                f"{100 * (1 - s['ssgan']['mean']):.2f} %",
                f"{100 * s['gains']['ssgan - supervised']['mean']:.2f} points"]
    raise AssertionError(f"README's results table links to #{anchor}: add its JSON to this test")


def results_rows() -> list[str]:
    text = README.read_text()
    table = text[text.index("| experiment |"):].split("\n\n")[0]
    return [row for row in table.splitlines()[2:]]


def test_readme_results_table_matches_the_json():
    rows = results_rows()
    assert 3 <= len(rows) <= 5
    for row in rows:
        anchor = re.search(r"\(BENCHMARKS\.md#([^)]+)\)", row).group(1)
        for cell in expected_cells(anchor):
            assert cell.replace("-", "−") in row.replace("-", "−"), f"{anchor}: {cell!r} not in {row!r}"


def test_readme_per_seed_gains_match_the_json():
    s = json.loads(ROW_JSON["dogs-vs-cats-on-a-cpu"].read_text())["summary"]["gains"]["ssgan - supervised"]
    per_seed = ", ".join(f"{100 * g:+.1f}" for g in s["per_seed"])
    assert f"({per_seed} points)" in README.read_text()


def test_benchmarks_summary_matches_the_json():
    """The same numbers in BENCHMARKS.md's summary table, row by row (found by their link)."""
    text = BENCHMARKS.read_text()
    summary = text[text.index("## Summary"):].split("\n## ")[0]
    checked = 0
    for row in summary.splitlines():
        link = re.search(r"\]\(#((?:dogs-vs-cats-on-a-cpu|32-px-on-one-gpu|224-px|mnist)[^)]*)\)", row)
        if link:
            for cell in expected_cells(link.group(1)):
                # The summary gives the gains of the 224 px and MNIST rows in other words.
                if cell.endswith("points") and not link.group(1).startswith(("dogs", "32-px")):
                    continue
                number = re.match(r"[+-]?[\d,.]+(?: ± [\d.]+)?", cell).group(0)
                assert number in row, f"{number!r} (of {cell!r}) not in {row!r}"
            checked += 1
    assert checked == 4

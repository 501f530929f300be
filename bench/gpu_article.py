"""The article's notebook at its own length on a GPU lent in calls of under 10 minutes: the six runs
of bench/accuracy.py --preset article (label seeds 0 1 2; the SSGAN, 7,700 steps, and the article's
baseline), one at a time, each scored as soon as it ends and its JSON kept.

    # on the GPU machine, once per job of under 10 minutes; the pack travels beside the code (bench/pack_data.py's
    # article pack, 55.8 MiB: copy packed_article along); --minutes leaves the call's last 30 s for copying
    python bench/gpu_article.py --data-src packed_article/train.zip --unlabeled-src packed_article/test1.zip
    # its dry run on a CPU: the same runs from the same pack, at 64 px, a few steps each (BENCHMARKS.md)
    python bench/gpu_article.py --dry-run --data-src packed_article/train.zip \\
        --unlabeled-src packed_article/test1.zip

A call trains until --minutes are spent. A run whose JSON is in <results>/accuracy_article_runs/ is
done; a run folder left in --work by an earlier call on this machine is resumed first; otherwise the
next run in the order SSGAN seed 0, baseline seed 0, SSGAN seed 1, ... whose expected minutes fit in
what is left starts (expected: a finished run's measured minutes, else --ssgan-minutes /
--baseline-minutes); when none fits and the call has started nothing yet, the first starts anyway,
for a later call on the same machine to go on with. Each run is a child bench/accuracy.py that is
stopped, with its process group, at the deadline: its finished epochs stay in --work (a fresh machine
starts that run again). Once all six are scored, bench/accuracy.py writes the tables from their JSON
alone (accuracy_article.md and .json). After each run the results, its log and
accuracy_article_data.json (the pack and the prepared images per seed) are copied into --copy-to
($OUT on the device machine), which is what comes back from it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import accuracy

ROOT = Path(__file__).resolve().parents[1]
ORDER = [(seed, model) for seed in (0, 1, 2) for model in ("ssgan", "supervised-article")]
STEM = "accuracy_article"
# Start-up, data preparation and scoring around a run's training minutes, for a run resumed over
# calls (the JSON of one that a single call trained records its wall minutes).
OVERHEAD_MINUTES = 1.0
# --dry-run: the runs the GPU call launches, on the CPU at 64 px (the smallest size with a ResNet18
# and the stride-4 generator above its 32 px minimum), two validations of two SSGAN steps each.
DRY_RUN = dict(device="cpu", image_size=64, ssgan="--epochs 2 --steps-per-epoch 2", baseline="--epochs 2",
               work=ROOT / "runs" / "bench_accuracy_article_dryrun")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except the empty ones (None, False, ''), whose help text says what they mean."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False, "") else super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_article.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data-src", default=str(ROOT / "packed_article" / "train.zip"), help="the pack's train.zip")
    p.add_argument("--unlabeled-src", default=str(ROOT / "packed_article" / "test1.zip"),
                   help="the pack's test1.zip")
    p.add_argument("--work", default=None,
                   help="prepared data, run folders, logs (default: the preset's, runs/bench_accuracy_article; "
                        "with --dry-run runs/bench_accuracy_article_dryrun)")
    p.add_argument("--results", default=None,
                   help="where the per-run JSON and the tables go (default: bench/results; with --dry-run "
                        "<work>/results, so a dry run never passes for a result)")
    p.add_argument("--minutes", type=float, default=9.5,
                   help="wall-clock minutes of this call; runs still training then are stopped")
    p.add_argument("--ssgan-minutes", type=float, default=8.5,
                   help="expected minutes of an SSGAN run until one has finished (7,700 steps at the ~16 "
                        "steps/s an H200 ran gpu-224's SSGAN, with start-up and scoring)")
    p.add_argument("--baseline-minutes", type=float, default=3.0,
                   help="expected minutes of a baseline run until one has finished (gpu-224's took 2.7 "
                        "beside other runs)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast on the GPU (the notebook trained in float32; --no-amp for that, "
                        "slower)")
    p.add_argument("--dry-run", action="store_true",
                   help=f"on the CPU at {DRY_RUN['image_size']} px, a few steps of every run "
                        f"(SSGAN: {DRY_RUN['ssgan']}; baseline: {DRY_RUN['baseline']})")
    p.add_argument("--copy-to", default=os.environ.get("OUT"),
                   help="folder the results and logs are copied into after each run (default: $OUT, "
                        "what the GPU job hands back; none when unset)")
    p.add_argument("--ssgan-extra", default="", help="flags appended to the preset's SSGAN flags (default: none)")
    p.add_argument("--baseline-extra", default="",
                   help="flags appended to the preset's baseline flags (default: none)")
    p.add_argument("--accuracy-args", default="",
                   help="more bench/accuracy.py flags, e.g. --split 100 1000 1000 (default: none)")
    return p


def expected_minutes(runs_dir: Path, model: str, default: float) -> float:
    """The longest finished run of `model` in runs_dir: its wall minutes where this script measured
    them (a run that one call trained from start to end), else its training minutes plus
    OVERHEAD_MINUTES; `default` before one has finished."""
    rows = [json.loads(p.read_text()) for p in runs_dir.glob(f"seed*_{model}.json")]
    walls = [r["wall_minutes"] for r in rows if "wall_minutes" in r]
    if walls:
        return max(walls)
    return max(r["train_minutes"] for r in rows) + OVERHEAD_MINUTES if rows else default


def next_run(pending: list, left: float, expected: dict, resumable: set, started: bool):
    """The (seed, model) to start with `left` minutes left, or None: a run resumable on this machine
    first, then the first of `pending` expected to fit; if none fits, the first when this call has
    `started` nothing yet (a later call on a warm machine goes on with it)."""
    for job in pending:
        if job in resumable:
            return job
    for job in pending:
        if expected[job[1]] <= left:
            return job
    return pending[0] if pending and not started else None


def run_child(cmd: list[str], log: Path, seconds: float) -> int | None:
    """cmd with its output appended to log; its exit code, or None when it was stopped (with its
    process group: the trainer's data-loading workers too) after `seconds`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return child.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            return None


def data_description(data_src: str, work: Path) -> dict:
    """What the runs trained on: the pack's pack.json (size, quality, image counts) and, per seed
    prepared, the images per split (unlabeled: those the SSGAN saw)."""
    pack = Path(data_src).parent / "pack.json"
    prepared = {}
    for summary in sorted(work.glob("data_seed*/summary.json")):
        counts = json.loads(summary.read_text())["counts"]
        prepared[summary.parent.name.removeprefix("data_")] = {split: c["total"] for split, c in counts.items()}
    return {"pack": json.loads(pack.read_text()) if pack.exists() else None, "prepared": prepared}


def copy_out(copy_to: str | None, results: Path, work: Path) -> None:
    """The article's results (per-run JSON, tables, data description) and the runs' logs into copy_to."""
    if not copy_to:
        return
    dest = Path(copy_to)
    for path in [*results.glob(f"{STEM}*"), *(results / f"{STEM}_runs").glob("*.json")]:
        if path.is_file():
            target = dest / "results" / path.relative_to(results)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    for log in (work / "logs").glob("*.log"):
        (dest / "logs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest / "logs" / log.name)


def shrink(png: Path, side: int = 1024) -> None:
    """The samples grid at 224 px is 1,810 px square (several MB, and it travels with the code on the
    next call): halved until its side is at most `side`."""
    from PIL import Image
    if not png.exists():
        return
    with Image.open(png) as img:
        size = img.size
        while max(size) > side:
            size = (size[0] // 2, size[1] // 2)
        if size != img.size:
            img.resize(size, Image.LANCZOS).save(png)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    deadline = time.monotonic() + 60 * args.minutes
    work = Path(args.work or (DRY_RUN["work"] if args.dry_run else accuracy.PRESETS["article"]["work"]))
    results = Path(args.results or (work / "results" if args.dry_run else ROOT / "bench" / "results"))
    runs_dir = results / f"{STEM}_runs"
    for flag, path in (("--data-src", args.data_src), ("--unlabeled-src", args.unlabeled_src)):
        if not Path(path).exists():
            print(f"gpu_article.py: error: {flag} {path}: no such file (bench/pack_data.py writes the pack)",
                  file=sys.stderr)
            return 2

    # The preset's flags, plus the dry run's few steps, then anything given explicitly
    ssgan_args = " ".join(filter(None, [accuracy.ARTICLE_SSGAN_ARGS, "" if args.dry_run or not args.amp else "--amp",
                                        DRY_RUN["ssgan"] if args.dry_run else "", args.ssgan_extra]))
    baseline_args = " ".join(filter(None, [accuracy.ARTICLE_BASELINE_ARGS,
                                           "" if args.dry_run or not args.amp else "--amp",
                                           DRY_RUN["baseline"] if args.dry_run else "", args.baseline_extra]))
    common = [sys.executable, str(ROOT / "bench" / "accuracy.py"), "--preset", "article", "--data-src", args.data_src,
              "--unlabeled-src", args.unlabeled_src, "--work", str(work), "--ssgan-args", ssgan_args,
              "--article-args", baseline_args, *shlex.split(args.accuracy_args)]
    if args.dry_run:
        common += ["--device", DRY_RUN["device"], "--image-size", str(DRY_RUN["image_size"])]
    print(f"gpu_article.py: {args.minutes:g} min; SSGAN flags: {ssgan_args}; baseline flags: {baseline_args}",
          flush=True)

    started, code = False, 0
    while True:
        pending = [job for job in ORDER if not (runs_dir / f"seed{job[0]}_{job[1]}.json").exists()]
        left = (deadline - time.monotonic()) / 60
        expected = {"ssgan": expected_minutes(runs_dir, "ssgan", args.ssgan_minutes),
                    "supervised-article": expected_minutes(runs_dir, "supervised-article", args.baseline_minutes)}
        resumable = {job for job in pending if (work / f"seed{job[0]}" / job[1] / "last.pt").exists()}
        job = next_run(pending, left, expected, resumable, started)
        if job is None:
            break
        seed, model = job
        partial = work / "partial"  # this run's JSON lands here first: the tables in results stay whole
        log = work / "logs" / f"seed{seed}_{model}.log"
        print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {model}: {'resuming' if job in resumable else 'starting'}"
              f" ({expected[model]:.1f} min expected, {left:.1f} left), log {log}", flush=True)
        started, t0 = True, time.monotonic()
        code = run_child([*common, "--results", str(partial), "--seeds", str(seed), "--models", model], log,
                         deadline - time.monotonic())
        minutes = (time.monotonic() - t0) / 60
        saved = partial / f"{STEM}_runs" / f"seed{seed}_{model}.json"
        if code == 0 and saved.exists():
            runs_dir.mkdir(parents=True, exist_ok=True)
            row = json.loads(saved.read_text())
            if job not in resumable:  # one call, start to end: what the next run of its kind will take
                row["wall_minutes"] = round(minutes, 2)
            (runs_dir / saved.name).write_text(json.dumps(row, indent=1) + "\n")
            print(f"  done in {minutes:.1f} min: test {100 * row['test_acc']:.1f} %, best val "
                  f"{100 * row['best_val_acc']:.1f} % at step {row['best_step']:,} of {row['steps']:,}", flush=True)
        elif code is None:
            print(f"  stopped at the deadline after {minutes:.1f} min; its finished epochs stay in {work} for "
                  "the next call on this machine", flush=True)
        else:
            print(f"  FAILED (exit {code}); the end of {log}:\n" + "".join(log.read_text().splitlines(True)[-15:]),
                  flush=True)
        (results / f"{STEM}_data.json").parent.mkdir(parents=True, exist_ok=True)
        (results / f"{STEM}_data.json").write_text(json.dumps(data_description(args.data_src, work), indent=1) + "\n")
        copy_out(args.copy_to, results, work)
        if code != 0:
            break

    pending = [job for job in ORDER if not (runs_dir / f"seed{job[0]}_{job[1]}.json").exists()]
    if pending:
        print(f"gpu_article.py: {len(ORDER) - len(pending)} of {len(ORDER)} runs scored; to go: "
              + ", ".join(f"seed {s} {m}" for s, m in pending) + "; run again", flush=True)
        return 1 if code not in (0, None) else 0  # a run that failed is not one to start again blindly
    # All six scored: the tables from their JSON (no data prepared, nothing trained)
    code = run_child([*common, "--results", str(results)], work / "logs" / "tables.log",
                     max(deadline - time.monotonic(), 60))
    shrink(results / f"{STEM}_samples.png")
    copy_out(args.copy_to, results, work)
    if code != 0:
        print(f"gpu_article.py: the tables failed (exit {code}), see {work / 'logs' / 'tables.log'}", flush=True)
        return 1
    print((results / f"{STEM}.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

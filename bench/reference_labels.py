"""The 100 labeled MNIST digits that the reference codes train on, as a --labeled-list for prepare_data.py.

    python bench/reference_labels.py --src mnist_png.zip --code paper --out paper_labels.txt
    python prepare_data.py --src mnist_png.zip --test-folder test --grayscale --n-val 1000 \
        --labeled-list paper_labels.txt --out data/mnist_paper_labels

Both codes draw 10 digits per class from the 60,000 training digits in the official idx order,
which mnist_png.zip keeps in its names (train/<digit>/<n>.png, n = the position):
- paper: openai/improved-gan, train_mnist_feature_matching.py with its default --seed_data 1:
  the first 10 of each class after numpy.random.RandomState(1).permutation(60000) (its mnist.npz
  holds x_train then x_valid, the official training digits in their order);
- port: hiroharu-kato/improved_gan_chainer, src/train.py with its default --seed_data 0: each
  class's positions shuffled in turn by one numpy.random.RandomState(0), the first 10 kept.
Random labels (prepare_data.py --label-seed) draw the same way, 10 per class, but other digits.
"""
import argparse
import sys
import zipfile

import numpy as np

CODES = {"paper": 1, "port": 0}  # each code's default --seed_data


def official_labels(src: str) -> np.ndarray:
    """The training labels in idx order (60,000 for MNIST), read from the member names of mnist_png.zip."""
    labels = {}
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "train" and parts[2].endswith(".png"):
                labels[int(parts[2][:-4])] = int(parts[1])
    if not labels or sorted(labels) != list(range(len(labels))):
        raise SystemExit(f"{src}: expected train/<digit>/<n>.png for n = 0, 1, 2, ... without gaps, found "
                         f"{len(labels)} training digits; this needs the layout described in this script's header")
    return np.array([labels[n] for n in range(len(labels))])


def reference_positions(labels: np.ndarray, code: str, count: int = 10) -> list[int]:
    """Positions (in idx order) of the labeled digits the code draws, class 0 first."""
    if code == "paper":
        order = np.random.RandomState(CODES[code]).permutation(labels.shape[0])
        return [int(i) for c in range(10) for i in order[labels[order] == c][:count]]
    rng = np.random.RandomState(CODES[code])
    per_class = [np.nonzero(labels == c)[0] for c in range(10)]
    for positions in per_class:
        rng.shuffle(positions)
    return [int(i) for positions in per_class for i in positions[:count]]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", required=True, help="mnist_png.zip (train/<digit>/<n>.png, n = the idx position)")
    p.add_argument("--code", choices=sorted(CODES), required=True,
                   help="paper: openai/improved-gan's draw; port: hiroharu-kato/improved_gan_chainer's")
    p.add_argument("--out", default="-", help="the list to write, one member path per line ('-': stdout)")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    labels = official_labels(args.src)
    lines = [f"train/{labels[n]}/{n}.png" for n in reference_positions(labels, args.code)]
    text = f"# {args.code}'s 100 labeled digits (bench/reference_labels.py)\n" + "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

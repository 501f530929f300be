"""What train_supervised.py and train_ssgan.py share, each called once from the trainer's own
loop: flags, device/precision/processes, the labeled and val loaders, the validation pass,
checkpoints, metrics.csv and the validation curve, the wall-clock budget.

Every helper takes the values it needs, not the trainer's whole argparse namespace. Checkpoints are
plain dicts of tensors and Python types (loadable with weights_only=True), written atomically; they
describe themselves (model metadata, classes, image size, normalisation, args) so evaluate.py can
rebuild the model without knowing how it was trained.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import inspect
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import dali_loaders
import models
# --help's formatter (every flag's default shown) lives in prepare_data.py, which does not import
# torch, so that script's --help and usage errors stay fast; the other scripts use it as engine's.
from prepare_data import HelpFormatter

CHECKPOINT_FORMAT = "ssgan-cats-dogs/1"


class TrainingError(Exception):
    """A stop the user must act on (bad flags, existing run, non-finite loss); printed, no traceback."""


# ----------------------------------------------------------------------------------------------
# Flags

def _checked_number(type_, ok, requirement: str):
    """An argparse `type` that parses with type_ and rejects values failing ok(value), so a bad
    flag is a one-line usage error before any data is read, not a traceback mid-run."""
    def parse(text: str):
        try:
            value = type_(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value
    parse.__name__ = type_.__name__  # argparse names the type in some messages
    return parse


def int_at_least(minimum: int):
    return _checked_number(int, lambda v: v >= minimum, f"an integer >= {minimum}")


def positive_float():
    return _checked_number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def float_in(low: float, high: float):
    """low <= value < high."""
    return _checked_number(float, lambda v: low <= v < high, f"a number in [{low}, {high})")


SIZES_HINT = "use 4*2^k or 7*2^k pixels, e.g. 32, 64, 112, 128, 224 or 256"
# ResNet downsamples by 32: below that its last stage has nothing left to see. The small CNN pools
# twice, so 8 px still leaves it a 2x2 map. The MLP takes any size (MNIST: 28 px).
MIN_IMAGE_SIZE = {"cnn": 8, "mlp": 4}
MIN_RESNET_SIZE = 32


def generator_image_size(text: str) -> int:
    """argparse type for --image-size of the SSGAN: a size the DCGAN generator can draw."""
    try:
        size = int(text)
        models.upsampling_plan(size)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the generator cannot draw this size; {SIZES_HINT}") from None
    return size


def get_common_args_parser(prog: str, description: str, *, epochs: int, batch_size: int, lr: float,
                           out: str, image_size_type=int_at_least(min(MIN_IMAGE_SIZE.values())),
                           image_size_help: str = "square input size in pixels",
                           ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    p.add_argument("--data", default="data",
                   help="folder written by prepare_data.py (labeled/, val/, unlabeled/ inside)")
    p.add_argument("--out", default=out, help="run folder: checkpoints, metrics.csv, plots")
    p.add_argument("--image-size", type=image_size_type, default=224,
                   help=f"{image_size_help}; >= {MIN_RESNET_SIZE} for a ResNet, >= "
                        f"{MIN_IMAGE_SIZE['cnn']} for --arch cnn")
    p.add_argument("--arch", choices=models.ARCHS, default="resnet18",
                   help="classifier: a torchvision ResNet (resnet18 is the article's), 'cnn', a small "
                        "weight-normalised CNN without BatchNorm for 32-64 px on a CPU budget, or 'mlp', "
                        "Salimans et al.'s MNIST networks (784-1000-500-250-250-250-K with Gaussian "
                        "noise; the SSGAN's generator becomes their MLP too)")
    p.add_argument("--dropout", type=float_in(0.0, 1.0), default=None, metavar="P",
                   help="--arch cnn: dropout after each pooling stage (default 0.3; Salimans et al.'s "
                        "CIFAR-10 discriminator: 0.5)")
    p.add_argument("--input-dropout", type=float_in(0.0, 1.0), default=None, metavar="P",
                   help="--arch cnn: dropout on the input image (default 0; Salimans et al.: 0.2)")
    p.add_argument("--unit-input", action="store_true",
                   help="the classifier sees pixels in [0, 1], real and generated alike ((x + 1) / 2 of "
                        "the loaders' and the generator's [-1, 1]), as in the article's notebook; "
                        "default: [-1, 1] (--arch mlp always maps to [0, 1])")
    p.add_argument("--epochs", type=int_at_least(1), default=epochs,
                   help="epochs to train (in all, when resuming)")
    # BatchNorm cannot train on one image: at 32 px its last maps are 1x1, one value per channel.
    p.add_argument("--batch-size", type=int_at_least(2), default=batch_size,
                   help="batch size per process (>= 2, for BatchNorm); under torchrun the global "
                        "batch is this x WORLD_SIZE and the learning rate is used as given (scale "
                        "it yourself if you want)")
    p.add_argument("--lr", type=positive_float(), default=lr, help="learning rate")
    p.add_argument("--translate", type=int_at_least(0), default=0, metavar="PX",
                   help="augmentation besides horizontal flips: shift training images by up to PX "
                        "pixels (reflect padding); 0 is the article's setting")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips of training images; --no-flip for digits or text, "
                        "where a mirrored image is another class or none")
    p.add_argument("--weight-average", type=float_in(0.0, 1.0), default=0.0, metavar="DECAY",
                   help="validate, test and save (best.pt) an exponential moving average of the "
                        "classifier's weights with this decay per step (e.g. 0.999), corrected for its "
                        "start so early averages are not pulled towards the initial weights; "
                        "BatchNorm statistics are copied, not averaged; 0: the trained weights")
    p.add_argument("--lr-decay-start", type=_checked_number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                   default=1.0, metavar="F",
                   help="learning rate(s) constant for the first F of the run's steps (--epochs x "
                        "steps per epoch), then decayed linearly to 0 at the last step (Salimans et "
                        "al.'s CIFAR-10 schedule: 0.67); 1: constant")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of weights, noise and data order")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available")
    p.add_argument("--loader", choices=dali_loaders.BACKENDS, default="auto",
                   help="image loading: DALI (GPU decoding on CUDA), plain torch, or auto (DALI if installed)")
    p.add_argument("--workers", type=int_at_least(1), default=min(8, os.cpu_count() or 1),
                   help="DALI threads / DataLoader workers per process (default: the CPU count, at most 8; "
                        "here %(default)s)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision on CUDA (bfloat16 where supported, else float16 + GradScaler); "
                        "--no-amp turns it off, e.g. on the --resume of a run that diverged with it")
    p.add_argument("--max-minutes", type=positive_float(), default=None,
                   help="wall-clock training budget in minutes; when it runs out the current epoch is cut short, "
                        "validated and saved, and training ends (best.pt stays best-by-val); --resume continues "
                        "the cut-short epoch at the step where it stopped")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--pretrained", action="store_true",
                   help="start the classifier from torchvision's ImageNet weights (needs the download)")
    return p


def check_common_args(parser: argparse.ArgumentParser, args) -> None:
    """The rules between flags, as one usage line before any data is read (same for both trainers)."""
    minimum = MIN_IMAGE_SIZE.get(args.arch, MIN_RESNET_SIZE)
    if args.image_size < minimum:
        parser.error(f"--image-size {args.image_size} is too small for --arch {args.arch} "
                     f"(at least {minimum})")
    if 2 * args.translate >= args.image_size:
        parser.error(f"--translate {args.translate} must be less than half of --image-size {args.image_size}")
    if args.pretrained and args.arch in ("cnn", "mlp"):
        parser.error(f"--pretrained: there are no ImageNet weights for --arch {args.arch}")
    if args.unit_input and args.arch == "mlp":
        parser.error("--unit-input: --arch mlp maps its inputs to [0, 1] already")
    for flag, value in (("--dropout", args.dropout), ("--input-dropout", args.input_dropout)):
        if value is not None and args.arch != "cnn":
            parser.error(f"{flag} sets the small CNN's dropout: it needs --arch cnn, not {args.arch}")


# On --resume these flags may be given anew and take effect; every other flag keeps the value the
# run was started with (given again with another value, it is refused: the run would not be the
# same run). --out names the run itself.
RESUME_CHANGEABLE = ("lr", "lr_g", "epochs", "max_minutes", "workers", "device", "amp")


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    unset = object()
    namespace = argparse.Namespace(**{dest: unset for dest in vars(parser.parse_args([]))})
    parser.parse_args(argv, namespace=namespace)  # argparse leaves attributes present untouched
    return {dest for dest, value in vars(namespace).items() if value is not unset}


def resume_with_saved_flags(parser: argparse.ArgumentParser, args, explicit: set[str]) -> list[str]:
    """--resume: the run's own flags from its last.pt, except the RESUME_CHANGEABLE ones given anew.
    Returns what changed ("--lr 0.002 -> 0.001"); a fixed flag given with another value is a usage
    error naming it."""
    last = Path(args.out) / "last.pt"
    if not (args.resume and last.is_file()):
        return []
    # mmap: only the flags are read here; the trainer loads the weights when it restores them.
    saved = load_checkpoint(last, mmap=True).get("args", {})
    changes = []
    for dest, value in saved.items():
        if dest in ("resume", "out") or not hasattr(args, dest) or getattr(args, dest) == value:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest not in explicit:
            setattr(args, dest, value)  # not given now: the run goes on as it was started
        elif dest in RESUME_CHANGEABLE:
            changes.append(f"{flag} {value} -> {getattr(args, dest)}")
        else:
            parser.error(f"{flag} cannot change on --resume: {last} was trained with {flag} {value} "
                         f"(start a new run in another --out to change it)")
    # A flag newer than the run: its checkpoint holds no value to keep, and the run trained without it.
    for dest in sorted(explicit - saved.keys() - set(RESUME_CHANGEABLE) - {"resume", "out"}):
        if getattr(args, dest, None) != parser.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            parser.error(f"{flag} cannot be given on --resume: {last} was trained before {flag} existed "
                         f"(drop it to go on as the run started, or start a new run in another --out)")
    return changes


def run_main(main_fn, argv, parser) -> int:
    """Parse, run, turn TrainingError into a one-line message and exit code 1; tidy up processes."""
    args = parser.parse_args(argv)
    if hasattr(args, "resume"):
        try:
            changes = resume_with_saved_flags(parser, args, explicit_flags(parser, argv))
        except TrainingError as exc:
            parser.error(str(exc))
        if changes and int(os.environ.get("RANK", 0)) == 0:
            print(f"--resume with changed flags: {', '.join(changes)}", flush=True)
    if hasattr(args, "arch"):
        check_common_args(parser, args)
    try:
        main_fn(args)
    except TrainingError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------------
# Device, precision, processes

@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None  # None: full fp32
    channels_last: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:  # only rank 0 writes files and shows progress
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only float16 needs loss scaling; bfloat16 has float32's exponent range.
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def _pick_device(want: str) -> torch.device:
    """--device auto/cpu/cuda -> this process's device (torchrun's LOCAL_RANK picks the GPU)."""
    device = want
    if want == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is visible; use --device cpu")
    if want == "auto" and device == "cpu" and os.path.exists("/proc/driver/nvidia/version"):
        # An NVIDIA driver is loaded but this torch cannot use it (e.g. a driver too old for the
        # CUDA torch was built for): say so rather than silently training on the CPU.
        print(f"warning: an NVIDIA driver is present but torch {torch.__version__} (CUDA "
              f"{torch.version.cuda}) sees no usable GPU, so this runs on the CPU; install a torch "
              "build for your driver, or pass --device cpu to silence this", file=sys.stderr)
    if device == "cpu":
        return torch.device("cpu")
    cuda = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(cuda)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return cuda


def setup_runtime(device: str = "auto", amp: bool = False, loader: str = "auto") -> Runtime:
    """One place decides device, precision and processes. torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    torch_device = _pick_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    amp_dtype = None
    if amp:
        if torch_device.type != "cuda":
            raise TrainingError(
                f"--amp needs a CUDA GPU and this run is on {torch_device.type}: nothing was trained. "
                "Leave --amp out to train in float32 on the CPU (resuming a run started with it: pass "
                "--no-amp); README's \"Your data on a CPU\" has the flags that suit a CPU. Or run on "
                "a machine whose GPU torch can use")
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # channels_last helps convolutions on both: cuDNN tensor cores, and oneDNN on CPU (~15 % here).
    rt = Runtime(torch_device, rank, world_size, amp_dtype, channels_last=True)
    try:
        backend = dali_loaders.resolve_backend(loader)
    except ImportError as exc:  # --loader dali without DALI: the message names the fix
        raise TrainingError(str(exc)) from None
    if rt.master:
        print(describe_runtime(rt, backend), flush=True)
    return rt


def describe_runtime(rt: Runtime, backend: str) -> str:
    """One line: device, loader, precision, processes (what a run actually uses, `auto` resolved)."""
    device = str(rt.device)
    if rt.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(rt.device)}, torch CUDA {torch.version.cuda})"
    if backend == "dali":
        backend += " (GPU decoding)" if rt.device.type == "cuda" else " (CPU decoding)"
    precision = "float32" if rt.amp_dtype is None else f"{str(rt.amp_dtype).removeprefix('torch.')} autocast"
    layout = ", channels_last" if rt.channels_last else ""
    return (f"device {device} | loader {backend} | precision {precision}{layout} | "
            f"{rt.world_size} process{'es' if rt.world_size > 1 else ''}")


def progress_disabled(rt: Runtime) -> bool | None:
    """tqdm's `disable`: no bar on ranks other than 0; on rank 0, None lets tqdm hide it when stderr is
    not a terminal (a log file, CI), where each of its carriage-return updates would be one more
    line; the one line per epoch that the trainers print is what a log wants."""
    return None if rt.master else True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wrap_ddp(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """DDP without buffer broadcasts: each rank keeps BatchNorm statistics of its own shard while
    training (no collective per forward); average_buffers makes them one model before validation."""
    if not rt.distributed:
        return model
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch >= 2.14 renamed the flag (BatchNorm buffers start equal on every rank either way).
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else "broadcast_buffers")
    return ddp(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
               **{no_sync: False})


@torch.no_grad()
def average_buffers(rt: Runtime, *modules: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running mean/var) over ranks, so every rank
    validates, and rank 0 saves, the same models."""
    if not rt.distributed:
        return
    for module in modules:
        for buffer in unwrap(module).buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= rt.world_size


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------
# Data

def data_folder(data: str | Path, split: str) -> Path:
    folder = Path(data) / split
    if not folder.is_dir():
        raise TrainingError(f"{folder} not found: --data must be a folder written by prepare_data.py "
                            f"(python prepare_data.py --src train.zip --out {data})")
    return folder


def data_channels(data, arch: str) -> int:
    """1 for a grayscale set (prepare_data.py --grayscale), 3 for RGB: what the loaders decode to
    and the networks take (a ResNet takes RGB only)."""
    channels = dali_loaders.image_channels(data_folder(data, "labeled"))
    if channels != 3 and arch not in ("cnn", "mlp"):
        raise TrainingError(f"--arch {arch} takes RGB images; {data} holds grayscale ones: use --arch mlp or "
                            "cnn, or prepare the data without --grayscale")
    return channels


def labeled_train_loader(data, rt: Runtime, *, batch_size: int, image_size: int, loader: str,
                         workers: int, seed: int, translate: int, channels: int = 3, flip: bool = True):
    """The labeled training set, decoded once and held in memory (see dali_loaders.InMemoryLoader)."""
    labeled = dali_loaders.in_memory_loader(
        data_folder(data, "labeled"), labeled=True, batch_size=batch_size, image_size=image_size,
        backend=loader, device=rt.device, num_threads=workers, seed=seed,
        shard_id=rt.rank, num_shards=rt.world_size, translate=translate, channels=channels, flip=flip)
    if labeled.batch_size < batch_size and rt.master:
        print(f"labeled batch {batch_size} is more than the {labeled.num_samples} labeled images "
              f"{'per process' if rt.distributed else 'in ' + str(data)}: each step takes all "
              f"{labeled.batch_size}")
    return labeled


def val_loader(data, rt: Runtime, *, batch_size: int, image_size: int, loader: str, workers: int,
               channels: int = 3):
    return dali_loaders.labeled_loader(
        data_folder(data, "val"), batch_size=max(batch_size, 64), image_size=image_size,
        train=False, backend=loader, device=rt.device, num_threads=workers,
        shard_id=rt.rank, num_shards=rt.world_size, channels=channels)


# ----------------------------------------------------------------------------------------------
# Weights: data-dependent initialisation, the averaged copy, the learning-rate schedule

def init_from_data(classifier: torch.nn.Module, images: torch.Tensor | None, rt: Runtime) -> None:
    """Networks with weight norm and data-dependent initialisation (--arch mlp) set their scales
    and biases from up to 500 training images (uint8, as held in memory); others need nothing."""
    init = getattr(unwrap(classifier), "data_dependent_init", None)
    if init is not None and images is not None:  # the first 500, as in the paper; training mode, noise on
        init(rt.to_device(dali_loaders.from_uint8(images[:500])))


class WeightAverage:
    """An exponential moving average of a module's parameters, in a copy (`module`) that
    validation, tests and best.pt use; with decay 0, `module` is the trained module itself.

    Start-corrected: after t updates the copy holds sum_s w_s p_s with weights proportional to
    decay^(t - s), normalised to 1 (an average started at zero and divided by 1 - decay^t), so it
    never mixes in the weights before training. Buffers (BatchNorm statistics) are copied, not
    averaged: an average of running statistics describes no network."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.source = module
        self.module = copy.deepcopy(module).requires_grad_(False) if self.decay else module

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After training step `step` (1 for the first step of the run)."""
        if not self.decay:
            return
        weight = (1 - self.decay) / (1 - self.decay ** step)  # 1 at step 1: the copy starts as p_1
        torch._foreach_lerp_(list(self.module.parameters()), list(self.source.parameters()), weight)
        for mine, theirs in zip(self.module.buffers(), self.source.buffers()):
            mine.copy_(theirs)


def classifier_nets(classifier: torch.nn.Module, meta: dict, average: WeightAverage) -> dict:
    """The classifier's entries of a trainer's nets: "classifier" is the network validated, tested
    and saved as the model (the weight average, if any), "classifier_trained" the trained weights."""
    nets = {"classifier": (average.module, meta)}
    if average.module is not classifier:
        nets["classifier_trained"] = (classifier, meta)
    return nets


class LrSchedule:
    """The learning rates at each step: lrs (optimizer name -> rate) for the first decay_start x
    total_steps steps, then decayed linearly towards 0 at the last step (--lr-decay-start)."""

    def __init__(self, optimizers: dict, lrs: dict, total_steps: int, decay_start: float):
        self.optimizers, self.lrs = optimizers, lrs
        self.total_steps, self.decay_start = total_steps, decay_start

    def factor(self, step: int) -> float:
        """The multiplier at `step` (0-based)."""
        start = self.decay_start * self.total_steps
        if self.decay_start >= 1 or step < start:
            return 1.0
        return max(0.0, (self.total_steps - step) / max(self.total_steps - start, 1.0))

    def apply(self, step: int) -> None:
        if self.decay_start >= 1:
            return  # constant: the rates restore() set stay
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.lrs[name] * self.factor(step)


# ----------------------------------------------------------------------------------------------
# The validation pass

@torch.no_grad()
def evaluate(classifier: torch.nn.Module, loader, num_classes: int, rt: Runtime) -> dict:
    """Cross-entropy and accuracy over every sample of `loader`, summed over all ranks.

    Runs the classifier in eval mode (BatchNorm running statistics) and restores its mode."""
    was_training = classifier.training
    classifier.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=rt.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    for images, labels in loader:
        labels = labels.to(rt.device)
        with rt.autocast():
            logits = classifier(rt.to_device(images))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        # index_add_, not bincount: CUDA bincount reads its input's maximum back to the host.
        cells = labels * num_classes + logits.argmax(1)
        confusion.index_add_(0, cells, torch.ones_like(cells, dtype=confusion.dtype))
    if rt.distributed:  # every rank then takes the same best-by-val decision
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
    classifier.train(was_training)
    confusion = confusion.view(num_classes, num_classes).long().cpu()
    count = int(confusion.sum())
    return {
        "loss": float(loss_sum) / max(count, 1),
        "accuracy": float(confusion.diag().sum()) / max(count, 1),
        "count": count,
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
    }


def validate(average: WeightAverage, loader, num_classes: int, rt: Runtime) -> dict:
    """evaluate() of the network that is validated and saved (the weight average, if any); with an
    average, also the trained weights' accuracy as "accuracy_trained", to show what averaging adds."""
    metrics = evaluate(average.module, loader, num_classes, rt)
    if average.module is not average.source:
        metrics["accuracy_trained"] = evaluate(average.source, loader, num_classes, rt)["accuracy"]
    return metrics


# ----------------------------------------------------------------------------------------------
# Checkpoints: save, restore, the run folder

def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic: a crash while writing leaves the previous file intact. The data reaches the disk
    before the rename does, so a power cut cannot leave an empty file in the old one's place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.name == "posix":  # the rename itself
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint of this project, or a one-line TrainingError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} not found: train it first (python train_supervised.py "
                            f"--data data --out {path.parent}, or python train_ssgan.py --data data "
                            f"--out {path.parent}), or pass the path of an existing best.pt / last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch.load's failures have no common base (pickle, zip, EOF, ...)
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})")
    return state


def checkpoint_state(*, kind: str, epoch: int, epoch_steps: int, stopped_early: bool, best_val_acc: float,
                     best_epoch: int, val: dict, classes: list[str], image_size: int, nets: dict,
                     optimizers: dict, scaler, args: dict, device: torch.device, rng: dict | None = None) -> dict:
    """Everything a resume or evaluate.py needs. nets: name -> (module, maybe DDP-wrapped, and the
    metadata it is rebuilt from, saved as `<name>_meta`). epoch_steps: the steps of `epoch` trained,
    fewer than an epoch's when --max-minutes cut it short; rng: the random state where it stopped
    (rng_state's, taken before its validation), else the state now."""
    state = {
        "format": CHECKPOINT_FORMAT, "kind": kind, "epoch": epoch, "epoch_steps": epoch_steps,
        "stopped_early": bool(stopped_early),
        "best_val_acc": best_val_acc, "best_epoch": best_epoch,
        "val": {"loss": val["loss"], "accuracy": val["accuracy"], "count": val["count"]},
        "classes": list(classes), "image_size": image_size,
        "normalize": {"mean": list(dali_loaders.NORMALIZE_MEAN), "std": list(dali_loaders.NORMALIZE_STD)},
        "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "rng": rng or rng_state(device),
    }
    for name, (module, meta) in nets.items():
        state[name] = unwrap(module).state_dict()
        state[f"{name}_meta"] = meta
    return state


def prepare_run_folder(out: Path, *, resume: bool, master: bool) -> dict | None:
    """Refuse to overwrite a previous run; with resume return its last checkpoint (whose flags,
    --image-size among them, resume_with_saved_flags has already kept or refused to change)."""
    last = Path(out) / "last.pt"
    if resume and last.is_file():
        return load_checkpoint(last)
    if resume and master:  # e.g. killed during the first epoch: nothing saved yet
        print(f"--resume: no {last} yet, starting from epoch 1")
    elif last.exists():
        raise TrainingError(f"{out} already holds a run (last.pt): pass --resume to continue it, "
                            "or choose another --out")
    if master:
        Path(out).mkdir(parents=True, exist_ok=True)
    return None


@dataclass
class Resumed:
    """Where a run goes on: `epoch` epochs done, then `step` steps of the next (more than 0 where
    --max-minutes cut that epoch short; noise_rng: its noise generator's state at that step)."""
    epoch: int = 0
    step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    noise_rng: torch.Tensor | None = None

    def steps_done(self, steps_per_epoch: int) -> int:
        return self.epoch * steps_per_epoch + self.step


def restore(state: dict | None, *, nets: dict, optimizers: dict, lrs: dict, scaler, classes: list[str],
            rt: Runtime, data, out: Path, epochs: int, steps_per_epoch: int) -> Resumed:
    """Load a resumed run's weights (nets: name -> (module, metadata)), optimizer and RNG states;
    the optimizers then train at lrs (name -> learning rate: this command's --lr, which may differ
    from the saved one). A fresh run (state None) starts at epoch 0, step 0."""
    if state is None:
        return Resumed()
    if state["classes"] != list(classes):
        raise TrainingError(f"--resume: the checkpoint's classes {state['classes']} "
                            f"differ from {list(classes)} in {data}")
    for name, (module, _) in nets.items():
        unwrap(module).load_state_dict(state[name])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
        for group in opt.param_groups:
            group["lr"] = lrs[name]
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], rt.device)
    resumed = Resumed(state["epoch"], 0, state["best_val_acc"], state["best_epoch"])
    cut = state.get("epoch_steps", steps_per_epoch)  # older checkpoints: whole epochs
    if cut < steps_per_epoch:  # --max-minutes stopped this epoch: it goes on at its next step
        resumed.epoch, resumed.step, resumed.noise_rng = state["epoch"] - 1, cut, state["rng"].get("noise")
    if rt.master:
        where = (f"in epoch {state['epoch']} after its step {cut} of {steps_per_epoch}" if resumed.step
                 else f"after epoch {state['epoch']}")
        print(f"resuming {Path(out) / 'last.pt'} {where} "
              f"(best val acc {100 * resumed.best_val_acc:.2f} % at epoch {resumed.best_epoch})")
        if resumed.epoch >= epochs:
            print(f"nothing to train: {Path(out) / 'last.pt'} is at epoch {resumed.epoch}, --epochs is {epochs}")
    return resumed


def save_epoch(out: Path, log: MetricsLog, row: dict, state: dict, improved: bool, title: str) -> None:
    """Rank 0's files of one epoch. last.pt is the epoch's commit point: metrics.csv, the curve and
    best.pt are written before it, so a kill at any moment resumes into a consistent run (an
    unfinished epoch is redone)."""
    out = Path(out)
    log.append(row)
    plot_val_curve(out / "metrics.csv", out / "val_curve.png", title)
    if improved:
        save_checkpoint(state, out / "best.pt")
    save_checkpoint(state, out / "last.pt")


def stop_on_budget(rt: Runtime, out: Path, minutes: float, epoch: int, best_val_acc: float,
                   best_epoch: int, *, during: bool) -> None:
    """--max-minutes ran out during `epoch` (validated and saved, and continued there by a
    --resume), or before its first step (nothing new to save: last.pt is marked as the run's end)."""
    if not rt.master:
        return
    if not during:
        state = load_checkpoint(Path(out) / "last.pt")
        state["stopped_early"] = True
        save_checkpoint(state, Path(out) / "last.pt")
    print(f"--max-minutes {minutes} reached {'during' if during else 'at the start of'} epoch {epoch}: "
          f"stopped; best.pt is epoch {best_epoch} ({100 * best_val_acc:.2f} % val)")


def rng_state(device: torch.device, noise: torch.Generator | None = None) -> dict:
    # Data order, flips and noise are drawn from (seed, epoch) and need no state at an epoch's end;
    # this covers the global torch generators for anything else, and, in an epoch cut short, the
    # trainer's noise generator. Only this process's GPU is saved, so the run resumes on any
    # number of GPUs (all of them would not fit a machine with fewer).
    device = torch.device(device)
    state = {"torch": torch.get_rng_state(),
             "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}
    return state if noise is None else {**state, "noise": noise.get_state()}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    saved, device = state["cuda"], torch.device(device)
    if saved and device.type == "cuda":
        # One entry: the saving process's GPU. Several (older checkpoints held every visible GPU):
        # this device's if it was there, else the first.
        index = device.index or 0
        torch.cuda.set_rng_state(saved[index] if index < len(saved) else saved[0], device)


# ----------------------------------------------------------------------------------------------
# Metrics, the budget

# val_acc_trained: with --weight-average, the trained weights' accuracy beside the average's val_acc
COMMON_COLUMNS = ["epoch", "steps", "total_steps", "val_loss", "val_acc", "val_acc_trained", "best_val_acc",
                  "images_per_s", "seconds"]


class MetricsLog:
    """metrics.csv, one row per epoch: epoch, steps, total_steps, the trainer's train_columns, then validation,
    speed and time (an epoch cut short by --max-minutes and resumed has two rows, its steps before
    and after the stop). On resume, the rows of steps the checkpoint does not hold are dropped (they
    are trained again)."""

    def __init__(self, path: Path, train_columns: list[str], resume_steps: int | None, write: bool = True):
        """resume_steps: the steps a resumed run's checkpoint holds (None: a fresh run); write False
        (ranks other than 0): append() does nothing and no file is touched."""
        self.path, self.write = Path(path), write
        self.columns = columns = COMMON_COLUMNS[:3] + train_columns + COMMON_COLUMNS[3:]
        self.total_steps = 0  # steps trained by the epochs logged, the resumed ones included
        if not write:
            return
        rows = []
        if resume_steps is not None and self.path.exists():
            with open(self.path, newline="") as f:
                for r in csv.DictReader(f):
                    if self.total_steps + int(r["steps"]) > resume_steps:
                        break
                    self.total_steps += int(r["steps"])
                    rows.append(r)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:  # then renamed: a kill now leaves the old file whole
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        """Write one epoch's row, adding its total_steps (the run's steps so far)."""
        if not self.write:
            return
        self.total_steps += row["steps"]
        row["total_steps"] = self.total_steps
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epoch_positions(rows: list[dict]) -> tuple[list[float], int]:
    """Each metrics.csv row's place on an epoch axis, and the steps of a whole epoch: a row ends its
    epoch at x = epoch, the first row of an epoch cut short by --max-minutes at the fraction reached
    (so a resumed epoch's two rows are not drawn at one x). No steps column: whole epochs."""
    done: dict[int, int] = {}  # epoch -> its steps up to this row
    reached = []
    for r in rows:
        e = int(r["epoch"])
        done[e] = done.get(e, 0) + (1 if r.get("steps") in (None, "") else int(r["steps"]))
        reached.append((e, done[e]))
    whole = max([*done.values(), 1])  # at least 1: a budget can stop an epoch before its first step
    return [e - 1 + k / whole for e, k in reached], whole


def epoch_row(epoch: int, train_stats: dict, train_columns: list[str], val: dict, best_val_acc: float,
              seconds: float) -> dict:
    """One metrics.csv row: the epoch's training statistics (steps, images and seconds trained, the
    train_columns) beside its validation; seconds: training and validation."""
    return {"epoch": epoch, "steps": train_stats["steps"], **{k: train_stats[k] for k in train_columns},
            "val_loss": val["loss"], "val_acc": val["accuracy"], "val_acc_trained": val.get("accuracy_trained", ""),
            "best_val_acc": best_val_acc,
            "images_per_s": train_stats["images"] / max(train_stats["seconds"], 1e-9), "seconds": seconds}


def epoch_line(row: dict, epochs: int, train_columns: list[str], improved: bool, best_epoch: int) -> str:
    """The one line per epoch a log keeps (row as MetricsLog.append left it)."""
    losses = " ".join(f"{k} {row[k]:.4f}" for k in train_columns)
    return (f"epoch {row['epoch']}/{epochs} | {losses} | val loss {row['val_loss']:.4f} "
            f"acc {100 * row['val_acc']:.2f} %{' *' if improved else ''} "
            f"(best {100 * row['best_val_acc']:.2f} % @ {best_epoch}) | {row['total_steps']} steps in all | "
            f"{row['images_per_s']:.1f} img/s | {row['seconds']:.1f} s")


def plot_val_curve(metrics_csv: Path, out_png: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    if not rows:
        return
    epochs, _ = epoch_positions(rows)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(epochs, [100 * float(r["val_acc"]) for r in rows], marker=".")
    ax_acc.set(xlabel="epoch", ylabel="val accuracy (%)", title=f"{title}: validation accuracy")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], marker=".", label="val")
    if "train_loss" in rows[0]:
        ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], marker=".", label="train")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    ax_loss.legend()
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)


def check_finite(losses: dict, epoch: int, step: int) -> None:
    for name, value in losses.items():
        if not math.isfinite(value):
            raise TrainingError(
                f"non-finite {name} loss ({value}) at epoch {epoch}, step {step}: training stopped. "
                "best.pt and last.pt hold the last good epoch; rerun with --resume and a lower --lr "
                "(or --no-amp)")


class Budget:
    """--max-minutes: wall-clock limit on training, checked between steps."""

    def __init__(self, minutes: float | None, rt: Runtime):
        self.minutes = minutes
        self.deadline = None if minutes is None else time.time() + 60 * minutes
        self.rt = rt

    def exhausted(self) -> bool:
        if self.deadline is None:  # same on every rank: no collective needed
            return False
        over = time.time() > self.deadline
        if self.rt.distributed:  # all ranks must stop at the same step
            flag = torch.tensor([float(over)], device=self.rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        return over


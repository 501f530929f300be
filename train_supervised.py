"""Supervised baseline: the same ResNet18 trained on the labeled images alone (the article: 100
labels in one batch, SGD lr 1e-3 momentum 0.9 weight decay 1e-4, 200 epochs; 61.4 % val, 60.2 % test).

    # one GPU, the article's setting (its defaults: 224 px, SGD, the 100 labels in one batch, 200 epochs)
    python train_supervised.py --data data --out runs/supervised --amp
    # CPU recipe (README): the SSGAN recipe's network, augmentation, optimizer, validation interval,
    # weight average and decay, and its 24,000 steps
    python train_supervised.py --data data32 --out runs/supervised32 --image-size 32 --arch cnn \
        --translate 4 --optimizer adam --lr 1e-3 --steps-per-epoch 100 --epochs 240 \
        --weight-average 0.999 --lr-decay-start 0.67
    # MNIST: Salimans et al.'s MLP on the 100 labels alone (the SSGAN's network and flags, 3,000 steps)
    python train_supervised.py --data data/mnist --out runs/mnist_supervised --arch mlp --image-size 28 \
        --no-flip --optimizer adam --lr 3e-3 --weight-average 0.999 --steps-per-epoch 600 --epochs 5 \
        --lr-decay-start 0.67
    # the SSGAN's optimizer, for a matched comparison
    python train_supervised.py --data data --out runs/supervised_adam --optimizer adam --lr 2e-3
    # several GPUs on one node
    torchrun --nproc_per_node=2 train_supervised.py --data data --out runs/supervised
    # continue after an interruption
    python train_supervised.py --data data --out runs/supervised --resume

Outputs in --out: best.pt (best val accuracy), last.pt, metrics.csv, val_curve.png.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import engine
import losses
from models import classifier_meta, make_classifier

TRAIN_COLUMNS = ["train_loss", "train_acc"]


def get_args_parser():
    p = engine.get_common_args_parser("train_supervised.py", __doc__.split("\n\n")[0], epochs=200,
                                      batch_size=100, lr=1e-3, out="runs/supervised")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd: the article's baseline (momentum 0.9, weight decay 1e-4); adam: the "
                        "SSGAN's optimizer (betas 0.5, 0.999), for a matched comparison")
    p.add_argument("--steps-per-epoch", type=engine.int_at_least(1), default=None,
                   help="training steps between two validations (default: one pass over the labeled "
                        "set, the article's; with 100 labels in one batch that is one step, and "
                        "validating after every step costs a CPU run most of its time)")
    return p


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def train_one_epoch(model, optimizer, scaler, labeled, rt: engine.Runtime, budget: engine.Budget,
                    schedule: engine.LrSchedule, average: engine.WeightAverage, *, epoch: int, epochs: int,
                    steps_per_epoch: int, first_step: int = 0) -> dict:
    """Steps first_step..steps_per_epoch - 1 on labeled batches (learning rate from `schedule`, the
    weight average updated after each); returns their mean loss and accuracy, and, if --max-minutes
    cut them short, the random state where they stopped ("rng", taken before validation draws any)."""
    model.train()
    t0 = time.time()
    loss_sum = correct = seen = steps = 0
    stopped_early = False
    with tqdm(total=steps_per_epoch, initial=first_step, desc=f"epoch {epoch}/{epochs}",
              disable=engine.progress_disabled(rt), leave=False, dynamic_ncols=True) as bar:
        for step in range(first_step, steps_per_epoch):
            if budget.exhausted():
                stopped_early = True
                break
            # The labeled set is cycled by global step: passes over it need not match epochs.
            global_step = (epoch - 1) * steps_per_epoch + step
            labeled_epoch, index = divmod(global_step, len(labeled))
            images, labels = labeled.batch(labeled_epoch + 1, index)
            schedule.apply(global_step)
            with rt.autocast():
                logits = model(rt.to_device(images)).float()
                loss = losses.supervised_loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            average.update(global_step + 1)
            # One device sync per step: loss and correct count come back together.
            loss_value, n_correct = torch.stack([
                loss.detach(), (logits.argmax(1) == labels).sum().float()]).tolist()
            engine.check_finite({"supervised": loss_value}, epoch, step + 1)
            loss_sum += loss_value * labels.shape[0]
            correct += int(n_correct)
            seen += labels.shape[0]
            steps += 1
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}")
    return {"steps": steps, "images": seen, "stopped_early": stopped_early, "seconds": time.time() - t0,
            "rng": engine.rng_state(rt.device) if stopped_early else None,
            "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def train(args) -> tuple[dict, dict]:
    """Returns the last epoch's metrics row and the trained modules by name."""
    rt, out = engine.setup_runtime(args.device, args.amp, args.loader), Path(args.out)
    resume_state = engine.prepare_run_folder(out, resume=args.resume, master=rt.master)
    engine.seed_everything(args.seed)

    # Data: the labeled images held in memory, val/ streamed (grayscale sets stay one channel)
    channels = engine.data_channels(args.data, args.arch)
    labeled = engine.labeled_train_loader(
        args.data, rt, batch_size=args.batch_size, image_size=args.image_size, loader=args.loader,
        workers=args.workers, seed=args.seed, translate=args.translate, channels=channels, flip=args.flip)
    val = engine.val_loader(args.data, rt, batch_size=args.batch_size, image_size=args.image_size,
                            loader=args.loader, workers=args.workers, channels=channels)
    classes, lrs, scaler = labeled.classes, {"classifier": args.lr}, rt.grad_scaler()
    steps_per_epoch = args.steps_per_epoch or len(labeled)

    # Model and optimizer (model: the classifier, DDP-wrapped under torchrun), the weight average
    classifier = rt.prepare_model(make_classifier(args.arch, len(classes), pretrained=args.pretrained,
                                                  image_size=args.image_size, channels=channels,
                                                  dropout=args.dropout, input_dropout=args.input_dropout,
                                                  unit_input=args.unit_input))
    engine.init_from_data(classifier, labeled.images, rt)  # --arch mlp: from the labeled images alone
    optimizers = {"classifier": make_optimizer(args.optimizer, classifier.parameters(), args.lr)}
    model, average = engine.wrap_ddp(classifier, rt), engine.WeightAverage(classifier, args.weight_average)
    nets = engine.classifier_nets(classifier, classifier_meta(classifier), average)

    # Resume: weights, optimizer, RNG state and metrics.csv as of the last saved step
    resumed = engine.restore(resume_state, nets=nets, optimizers=optimizers, lrs=lrs, scaler=scaler, classes=classes,
                             rt=rt, data=args.data, out=out, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    best_acc, best_epoch = resumed.best_val_acc, resumed.best_epoch
    log = engine.MetricsLog(out / "metrics.csv", TRAIN_COLUMNS,
                            resumed.steps_done(steps_per_epoch) if resume_state else None, rt.master)
    budget = engine.Budget(args.max_minutes, rt)
    schedule = engine.LrSchedule(optimizers, lrs, args.epochs * steps_per_epoch, args.lr_decay_start)

    row = {}
    for epoch in range(resumed.epoch + 1, args.epochs + 1):
        t0 = time.time()
        first_step = resumed.step if epoch == resumed.epoch + 1 else 0
        stats = train_one_epoch(model, optimizers["classifier"], scaler, labeled, rt, budget, schedule, average,
                                epoch=epoch, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                                first_step=first_step)
        if stats["stopped_early"] and stats["steps"] == 0 and epoch > 1:
            engine.stop_on_budget(rt, out, args.max_minutes, epoch, best_acc, best_epoch, during=False)
            break

        # Validate on val/ (BatchNorm statistics averaged over ranks first); best.pt is best by val
        engine.average_buffers(rt, *(module for module, _ in nets.values()))
        metrics = engine.validate(average, val, len(classes), rt)
        improved = metrics["accuracy"] > best_acc
        best_acc, best_epoch = (metrics["accuracy"], epoch) if improved else (best_acc, best_epoch)
        row = engine.epoch_row(epoch, stats, TRAIN_COLUMNS, metrics, best_acc, time.time() - t0)

        if rt.master:  # metrics.csv, val_curve.png, best.pt if improved, then last.pt
            state = engine.checkpoint_state(
                kind="supervised", epoch=epoch, epoch_steps=first_step + stats["steps"], rng=stats["rng"],
                stopped_early=stats["stopped_early"], best_val_acc=best_acc,
                best_epoch=best_epoch, val=metrics, classes=classes, image_size=args.image_size, nets=nets,
                optimizers=optimizers, scaler=scaler, args=vars(args), device=rt.device)
            engine.save_epoch(out, log, row, state, improved, title="supervised")
            print(engine.epoch_line(row, args.epochs, TRAIN_COLUMNS, improved, best_epoch), flush=True)
        if stats["stopped_early"]:
            engine.stop_on_budget(rt, out, args.max_minutes, epoch, best_acc, best_epoch, during=True)
            break
    return row, {name: module for name, (module, _) in nets.items()}


def main(argv=None) -> int:
    return engine.run_main(train, argv, get_args_parser())


if __name__ == "__main__":
    sys.exit(main())

"""Supervised baseline: the same ResNet18 trained on the labeled images alone (the article: 100
labels in one batch, SGD lr 1e-3 momentum 0.9 weight decay 1e-4, 200 epochs; 61.4 % val, 60.2 % test).

    # one GPU, the article's setting
    python train_supervised.py --data data --out runs/supervised --amp
    # CPU recipe: the SSGAN recipe's network, augmentation, optimizer and validation interval;
    # 5,000 steps (at least the SSGAN's steps and minutes)
    python train_supervised.py --data data --out runs/supervised32 --image-size 32 --arch cnn \
        --translate 4 --optimizer adam --lr 1e-3 --steps-per-epoch 100 --epochs 50
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
    p.add_argument("--pretrained", action="store_true",
                   help="start from torchvision's ImageNet weights (needs the download)")
    return p


def train(args) -> dict:
    rt = engine.setup_runtime(args)
    resume_state = engine.prepare_run_folder(args, rt)
    engine.seed_everything(args.seed)

    labeled = engine.labeled_train_loader(args, rt, args.batch_size)
    classes = labeled.classes
    classifier = rt.prepare_model(make_classifier(args.arch, len(classes), pretrained=args.pretrained))
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(classifier.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(classifier.parameters(), lr=args.lr, betas=(0.5, 0.999))
    scaler = rt.grad_scaler()
    model = engine.wrap_ddp(classifier, rt)

    steps_per_epoch = args.steps_per_epoch or len(labeled)

    def train_one_epoch(epoch, budget):
        classifier.train()
        loss_sum = correct = seen = steps = 0
        stopped_early = False
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}", disable=engine.progress_disabled(rt),
                  leave=False, dynamic_ncols=True) as bar:
            for step in range(steps_per_epoch):
                if budget.exhausted():
                    stopped_early = True
                    break
                # The labeled set is cycled by global step: passes over it need not match epochs.
                labeled_epoch, index = divmod((epoch - 1) * steps_per_epoch + step, len(labeled))
                images, labels = labeled.batch(labeled_epoch + 1, index)
                with rt.autocast():
                    logits = model(rt.to_device(images)).float()
                    loss = losses.supervised_loss(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
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
        return {"steps": steps, "images": seen, "stopped_early": stopped_early,
                "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}

    return engine.fit(args, rt, kind="supervised", classes=classes,
                      models={"classifier": (classifier, classifier_meta(classifier))},
                      optimizers={"classifier": optimizer}, scaler=scaler,
                      train_one_epoch=train_one_epoch, train_columns=TRAIN_COLUMNS,
                      resume_state=resume_state)


def main(argv=None) -> int:
    return engine.run_main(train, argv, get_args_parser())


if __name__ == "__main__":
    sys.exit(main())

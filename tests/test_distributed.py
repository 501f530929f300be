"""Both trainers under two CPU processes (gloo), as torchrun would start them."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import engine
import train_ssgan
import train_supervised
from test_training import FAST, read_rows

TRAINERS = {"ssgan": train_ssgan, "supervised": train_supervised}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, trainer_name, argv, dump_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = TRAINERS[trainer_name]
    real_train, real_labeled_loader = trainer.train, engine.labeled_train_loader
    labeled_sets = []

    def labeled_and_record(*args, **kwargs):
        loader = real_labeled_loader(*args, **kwargs)
        labeled_sets.append([loader.num_samples, loader.batch_size])
        return loader

    def train_and_dump(args):  # keep what this rank holds at the end
        summary, nets = real_train(args)
        torch.save({"summary": summary, "labeled": labeled_sets, **{n: m.state_dict() for n, m in nets.items()}},
                   os.path.join(dump_dir, f"rank{rank}.pt"))
        return summary, nets

    engine.labeled_train_loader = labeled_and_record
    trainer.train = train_and_dump
    code = trainer.main(argv)
    if code != 0:
        raise SystemExit(code)


def run_two_ranks(trainer_name, argv, dump_dir):
    mp.start_processes(_rank_main, args=(2, free_port(), trainer_name, argv, str(dump_dir)),
                       nprocs=2, join=True, start_method="spawn")


@pytest.mark.parametrize("trainer_name", ["ssgan", "supervised"])
def test_two_processes_write_one_run_that_matches_the_ranks(tiny_data, tmp_path, trainer_name):
    out = tmp_path / "run"
    argv = ["--data", str(tiny_data), "--out", str(out), "--epochs", "1", *FAST]
    run_two_ranks(trainer_name, argv, tmp_path)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    assert len(read_rows(out / "metrics.csv")) == 1
    if trainer_name == "ssgan":
        assert [p.name for p in (out / "samples").iterdir()] == ["epoch_001.png"]
        # 40 unlabeled images over 2 ranks: 20 each, batch 8 -> 2 steps per rank
        assert read_rows(out / "metrics.csv")[0]["steps"] == "2"

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["classifier"])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Validation counts are summed over ranks, so both ranks saw the same accuracy on all 8 images.
    assert ranks[0]["summary"]["val_acc"] == ranks[1]["summary"]["val_acc"] == ckpt["val"]["accuracy"]
    assert ckpt["val"]["count"] == 8
    # --batch-size is per process, and the labeled set is sharded like the others: each of the
    # 2 ranks holds 4 of the 8 labeled images, so its labeled batch of 8 shrinks to those 4.
    assert [r["labeled"] for r in ranks] == [[[4, 4]], [[4, 4]]]
    for name in ("classifier", "generator"):
        if name not in ckpt:
            continue
        for key, value in ckpt[name].items():
            if key.endswith("num_batches_tracked"):
                continue
            # Weights are identical on every rank (DDP), and so are the BN running statistics:
            # each rank's are averaged over ranks before validation, so the saved model is the
            # one that was validated.
            for rank in ranks:
                assert torch.equal(value, rank[name][key]), (name, key)

    # A checkpoint written by two processes resumes in one process.
    assert TRAINERS[trainer_name].main([*argv[:-len(FAST)], "--epochs", "2", "--resume", *FAST]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2

"""Training on the MNIST fixture: the loss falls, every output file is written and well formed."""
import csv
import json

import pytest
import torch

from qsnn.runs import runlog
from qsnn.runs.experiment import run_experiment
from qsnn.errors import UserError


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_dir_of(cfg):
    return runlog.run_folder(cfg)


def test_training_loss_falls_and_every_output_is_written(tiny_config):
    cfg = {**tiny_config, "num_trials": 2}
    results = run_experiment(cfg)
    folder = run_dir_of(cfg)
    assert folder.name == "mnist_4bit_cosine" and set(results) == {0, 1}

    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"] == cfg and meta["dataset"] == "mnist" and meta["precision"] == "4bit"
    assert {"torch", "snntorch", "brevitas"} <= set(meta["versions"]) and meta["device"] == "cpu"
    assert "git_commit" in meta and "command" in meta

    iterations_per_epoch = 240 // 40
    for k in range(2):
        loss = read_csv(folder / f"loss_mnist_4bit_cosine_t{k}.csv")
        lr = read_csv(folder / f"lr_mnist_4bit_cosine_t{k}.csv")
        acc = read_csv(folder / f"acc_mnist_4bit_cosine_t{k}.csv")
        assert len(loss) == len(lr) == 3 * iterations_per_epoch
        assert [int(r["iteration"]) for r in loss] == list(range(1, 19))
        assert [int(r["epoch"]) for r in loss] == [e for e in (1, 2, 3) for _ in range(6)]
        assert float(lr[0]["lr"]) == cfg["lr"] and float(lr[12]["lr"]) == pytest.approx(0.0, abs=1e-12)
        assert list(acc[0]) == ["epoch", "test_acc", "train_loss", "train_time"] and len(acc) == 3
        first, last = (sum(float(r["loss"]) for r in loss if r["epoch"] == e) / 6 for e in ("1", "3"))
        assert last < 0.6 * first
        assert float(acc[-1]["test_acc"]) > 50  # ten classes: chance is 10%
        best = torch.load(folder / f"mnist_4bit_cosine_t{k}.pt", weights_only=True)  # tensors and plain values
        assert best["test_acc"] == max(float(r["test_acc"]) for r in acc)
        assert "blocks.0.conv.weight" in best["model"]
        assert (folder / f"last_mnist_4bit_cosine_t{k}.pt").exists()
    status = runlog.read_status(folder)
    assert status["0"]["state"] == status["1"]["state"] == "finished"
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_trial_k_is_seeded_with_seed_plus_k(tiny_config):
    run_experiment({**tiny_config, "num_trials": 2, "epochs": 1, "exp_name": "a"})
    run_experiment({**tiny_config, "num_trials": 1, "epochs": 1, "seed": 1, "exp_name": "b"})
    runs = run_dir_of({**tiny_config, "exp_name": "a"}).parent
    assert (runs / "a" / "loss_a_t1.csv").read_text() == (runs / "b" / "loss_b_t0.csv").read_text()
    assert (runs / "a" / "loss_a_t0.csv").read_text() != (runs / "a" / "loss_a_t1.csv").read_text()


def test_same_config_and_seed_give_identical_logs(tiny_config):
    for name in ("first", "second"):
        run_experiment({**tiny_config, "exp_name": name})
    runs = run_dir_of(tiny_config).parent
    for kind in ("loss", "lr"):
        assert (runs / "first" / f"{kind}_first_t0.csv").read_text() == \
               (runs / "second" / f"{kind}_second_t0.csv").read_text()
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "train_time"} for r in rows]  # noqa: E731
    assert drop_time(read_csv(runs / "first" / "acc_first_t0.csv")) == \
           drop_time(read_csv(runs / "second" / "acc_second_t0.csv"))


def test_validation_split_selects_the_model_and_is_logged(tiny_config):
    cfg = {**tiny_config, "val_split": 0.25}
    run_experiment(cfg)
    folder = run_dir_of(cfg)
    acc = read_csv(folder / "acc_mnist_4bit_cosine_t0.csv")
    assert list(acc[0]) == ["epoch", "test_acc", "val_acc", "train_loss", "train_time"]
    best = torch.load(folder / "mnist_4bit_cosine_t0.pt", weights_only=False)
    best_val_row = max(acc, key=lambda r: float(r["val_acc"]))  # first epoch with the best val_acc
    assert best["epoch"] == int(best_val_row["epoch"]) and best["val_acc"] == float(best_val_row["val_acc"])
    assert len(read_csv(folder / "loss_mnist_4bit_cosine_t0.csv")) == 3 * 5  # 180 samples: 5 batches


def test_early_stopping_after_patience_epochs_without_improvement(tiny_config):
    cfg = {**tiny_config, "epochs": 8, "patience": 2, "lr": 1e-9, "scheduler": "constant"}
    run_experiment(cfg)
    acc = read_csv(run_dir_of(cfg) / "acc_mnist_4bit_constant_t0.csv")
    best_epoch = next(i + 1 for i, r in enumerate(acc) if float(r["test_acc"]) == max(float(x["test_acc"]) for x in acc))
    assert len(acc) == best_epoch + 2 < 8
    assert runlog.read_status(run_dir_of(cfg))["0"]["reason"] == "early_stopping"


@pytest.mark.parametrize("scheduler", ["cosine_restarts", "cyclic", "step"])
def test_every_scheduler_trains(tiny_config, scheduler):
    cfg = {**tiny_config, "scheduler": scheduler, "epochs": 1, "t_0": 4, "step_size_up": 3,
           "step_size": 2, "base_lr": 1e-3}
    run_experiment(cfg)
    lrs = [float(r["lr"]) for r in read_csv(run_dir_of(cfg) / f"lr_mnist_4bit_{scheduler}_t0.csv")]
    assert len(lrs) == 6 and len(set(lrs)) > 1


def test_full_precision_and_reference_execution_train(tiny_config):
    cfg = {**tiny_config, "num_bits": None, "execution": "reference", "epochs": 1, "num_steps": 3}
    run_experiment(cfg)
    assert run_dir_of(cfg).name == "mnist_fp32_cosine"
    assert len(read_csv(run_dir_of(cfg) / "acc_mnist_fp32_cosine_t0.csv")) == 1


def test_an_existing_run_is_not_overwritten_silently(tiny_config):
    cfg = {**tiny_config, "epochs": 1}
    run_experiment(cfg)
    with pytest.raises(UserError, match="add --resume to continue it or --overwrite"):
        run_experiment(cfg)
    before = (run_dir_of(cfg) / "config.json").stat().st_mtime_ns
    run_experiment({**cfg, "seed": 5}, overwrite=True)
    assert json.loads((run_dir_of(cfg) / "config.json").read_text())["config"]["seed"] == 5
    assert (run_dir_of(cfg) / "config.json").stat().st_mtime_ns != before


def test_a_run_that_stopped_before_training_can_simply_be_rerun(tiny_config, tmp_path):
    cfg = {**tiny_config, "epochs": 1, "data_dir": str(tmp_path / "no_data_yet")}
    with pytest.raises(UserError, match="MNIST is not in"):
        run_experiment({**cfg, "dataset": "mnist"})
    assert (run_dir_of(cfg) / "config.json").exists()
    run_experiment(tiny_config | {"epochs": 1})  # same folder, now with data: no --overwrite needed
    assert runlog.read_status(run_dir_of(cfg))["0"]["state"] == "finished"


def test_root_scripts_read_what_training_writes(tiny_config, tmp_path):
    import extract_test_set_accuracy
    import plot_results

    cfg = {**tiny_config, "num_trials": 2, "epochs": 2, "val_split": 0.25}
    run_experiment(cfg)
    runs = run_dir_of(cfg).parent
    table = tmp_path / "table.csv"
    assert extract_test_set_accuracy.main([str(runs), "--out", str(table)]) == 0
    (row,) = read_csv(table)
    best = [max(float(r["test_acc"]) for r in read_csv(run_dir_of(cfg) / f"acc_mnist_4bit_cosine_t{k}.csv"))
            for k in (0, 1)]
    assert (row["dataset"], row["precision"], row["scheduler"], row["n_trials"]) == ("mnist", "4bit", "cosine", "2")
    assert float(row["test_acc_max"]) == pytest.approx(max(best))
    assert float(row["test_acc_mean"]) == pytest.approx(sum(best) / 2)
    assert row["n_val_trials"] == "2"
    assert plot_results.main([str(runs), "--out", str(tmp_path / "figures"), "--lr"]) == 0
    assert (tmp_path / "figures" / "loss_curves.png").stat().st_size > 0


def test_evaluate_py_reproduces_the_logged_accuracy_of_a_checkpoint(tiny_config, capsys):
    import evaluate

    run_experiment({**tiny_config, "epochs": 2})
    folder = run_dir_of(tiny_config)
    acc = read_csv(folder / "acc_mnist_4bit_cosine_t0.csv")
    for name, logged in (("mnist_4bit_cosine_t0.pt", max(float(r["test_acc"]) for r in acc)),
                         ("last_mnist_4bit_cosine_t0.pt", float(acc[-1]["test_acc"]))):
        assert evaluate.main([str(folder / name), "--device", "cpu", "--test_batch_size", "7"]) == 0
        out = capsys.readouterr().out
        assert f"test accuracy: {logged:.2f}%" in out
        rates = [float(line.split(": ")[1].split()[0]) for line in out.splitlines() if line.startswith("spike rate")]
        assert len(rates) == 3 and all(0 < r < 1 for r in rates)
    assert evaluate.main([str(folder / "acc_mnist_4bit_cosine_t0.csv")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err

"""Each scheduler's learning rate at known iterations (stepped once per iteration), periods stated in epochs,
and the optimisers."""
import math

import csv
import runpy
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler
from torch.utils.data import TensorDataset

from qsnn.runs import runlog, schema
from qsnn.runs.cli import main
from qsnn.runs.config import parse_args
from qsnn.data.loaders import TensorBatches, as_tensors, make_loaders, split_validation
from qsnn.errors import UserError
from qsnn.runs.experiment import run_experiment
from qsnn.core.schedules import build_optimizer, build_scheduler, resolve_schedule
from qsnn.runs.schema import complete
from qsnn.runs.snapshots import lr_extremum
from qsnn.core.loop import build_training

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path):
    """The rows of a CSV log as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

BASE = {"lr": 1e-2, "t_max": 10, "eta_min": 0.0, "t_0": 10, "t_mult": 2, "base_lr": 1e-3,
        "step_size_up": 5, "step_size": 4, "gamma": 0.5}


def lr_curve(name, iterations, **overrides):
    """The LR used at iterations 0..iterations-1."""
    cfg = {**BASE, "scheduler": name, **overrides}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg["lr"])
    return stepped_lrs(build_scheduler(optimizer, cfg), optimizer, iterations)


def test_cosine_is_periodic_the_papers_boost():
    lrs = lr_curve("cosine", 41)
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[5] == pytest.approx(0.5e-2)  # halfway down: (1 + cos(pi/2)) / 2
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)  # eta_min at T_max
    assert lrs[15] == pytest.approx(0.5e-2)  # rising again
    assert lrs[20] == pytest.approx(1e-2)  # back to lr at 2 * T_max
    assert lrs[30] == pytest.approx(0.0, abs=1e-12) and lrs[40] == pytest.approx(1e-2)


def test_cosine_with_eta_min():
    lrs = lr_curve("cosine", 21, eta_min=1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[20] == pytest.approx(1e-2)


def test_cosine_restarts_jump_back_with_growing_periods():
    lrs = lr_curve("cosine_restarts", 31)
    assert lrs[5] == pytest.approx(0.5e-2)
    assert lrs[10] == pytest.approx(1e-2)  # restart after t_0
    assert lrs[20] == pytest.approx(0.5e-2)  # the second period lasts 2 * t_0
    assert lrs[30] == pytest.approx(1e-2)


def test_cyclic_triangle_between_base_and_max():
    lrs = lr_curve("cyclic", 21)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-2)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(1e-3 + 2 / 5 * 9e-3)
    assert lrs[15] == pytest.approx(1e-2) and lrs[20] == pytest.approx(1e-3)


def test_step_and_constant():
    lrs = lr_curve("step", 9)
    assert lrs[:4] == [pytest.approx(1e-2)] * 4
    assert lrs[4] == pytest.approx(5e-3) and lrs[8] == pytest.approx(2.5e-3)
    assert lr_curve("constant", 50) == [pytest.approx(1e-2)] * 50


def test_cosine_closed_form_over_many_periods():
    lrs = lr_curve("cosine", 200)
    for t in (3, 57, 123, 199):
        expected = 1e-2 * (1 + math.cos(math.pi * t / 10)) / 2
        assert lrs[t] == pytest.approx(expected, abs=1e-9)


# --- periods in epochs, whole-run schedules, optimisers ------------------------------------------------

def stepped_lrs(scheduler, optimizer, iterations):
    """The LR used at iterations 0..iterations-1 of an already built scheduler."""
    lrs = []
    for _ in range(iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def built_curve(cfg, iterations_per_epoch, iterations):
    """The LR curve of build_scheduler(cfg) at iterations_per_epoch, over `iterations` steps."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg["lr"])
    return stepped_lrs(build_scheduler(optimizer, cfg, iterations_per_epoch), optimizer, iterations)


def paper_batches(val_split):
    """The MNIST training loader's iterations per epoch at batch 128 (60,000 images), with val_split."""
    labels = torch.zeros(60000, dtype=torch.int64)
    train = TensorDataset(torch.zeros(60000, 1), labels)
    if val_split:
        train, _ = split_validation(train, val_split, seed=0)
    x, y = as_tensors(train)
    return len(TensorBatches(x, y, 128, shuffle=True, generator=torch.Generator()))


def test_the_papers_iterations_per_epoch():
    assert paper_batches(0.0) == 469
    assert paper_batches(0.1) == 422


@pytest.mark.parametrize("key, scheduler", [("t_max", "cosine"), ("t_0", "cosine_restarts"),
                                            ("step_size_up", "cyclic"), ("step_size", "step")])
def test_a_period_in_epochs_is_exactly_the_papers_iterations(key, scheduler):
    paper = {**BASE, "scheduler": scheduler, "epochs": 30, "t_mult": 1, key: 4690}
    in_epochs = {**paper, key: 7, f"{key}_epochs": 10.0}  # the iteration key is then not read
    assert resolve_schedule(in_epochs, 469)[key] == 4690
    assert built_curve(in_epochs, 469, 2 * 4690 + 50) == built_curve(paper, 469, 2 * 4690 + 50)


def test_without_epochs_twins_the_iteration_keys_are_used_unchanged():
    cfg = {**BASE, "scheduler": "cosine", "epochs": 5, "t_max_epochs": None}
    counts = resolve_schedule(cfg, 469)
    assert (counts["t_max"], counts["t_0"], counts["step_size_up"], counts["step_size"]) == (10, 10, 5, 4)
    assert counts["total"] == 5 * 469 and counts["per_epoch"] == 469


def test_a_period_in_epochs_follows_the_smaller_epoch_of_val_split(mnist_dir):
    cfg = complete({"dataset": "mnist", "data_dir": str(mnist_dir), "batch_size": 24, "t_max_epochs": 2.0,
                    "device": "cpu"})
    counts = {}
    for val_split in (0.0, 0.1):
        loaders = make_loaders({**cfg, "val_split": val_split}, torch.device("cpu"), torch.Generator())
        counts[val_split] = resolve_schedule(cfg, len(loaders["train"]))["t_max"]
    assert counts == {0.0: 20, 0.1: 18}  # 240 samples: 10 batches of 24; 216 after the split: 9


def test_a_trial_falls_over_its_epochs_under_val_split(tiny_config):
    cfg = {**tiny_config, "batch_size": 24, "val_split": 0.1, "t_max_epochs": 1.0, "epochs": 2}
    run_experiment(cfg)
    lrs = [float(r["lr"]) for r in read_csv(runlog.run_folder(cfg) / "lr_mnist_4bit_cosine_t0.csv")]
    assert len(lrs) == 18 and lrs[9] == pytest.approx(0.0, abs=1e-12)  # the trough after 9 iterations


def test_both_forms_on_the_command_line_are_one_error_line():
    config = runpy.run_path(str(ROOT / "mnist" / "run.py"))["config"]
    with pytest.raises(UserError) as error:
        parse_args(config, ["--t_max", "100", "--t_max_epochs", "2"])
    assert "\n" not in str(error.value) and "--t_max_epochs, when set, overrides --t_max" in str(error.value)
    cfg, _ = parse_args(config, ["--t_max_epochs", "2"])  # the run.py's own t_max is no conflict
    assert cfg["t_max_epochs"] == 2.0 and cfg["t_max"] == 4690


def test_a_period_under_one_iteration_is_refused():
    with pytest.raises(UserError, match="--t_max_epochs 0.001 is under one iteration at 469"):
        resolve_schedule({**BASE, "t_max_epochs": 0.001}, 469)


def test_identity_drops_the_iteration_key_a_set_twin_replaces():
    identity = schema.experiment_identity({"scheduler": "cosine", "t_max": 4690, "t_max_epochs": 10.0})
    assert identity["t_max_epochs"] == 10.0 and "t_max" not in identity
    assert schema.experiment_identity({"scheduler": "cosine"})["t_max"] == 4690


@pytest.mark.parametrize("scheduler, key", [("cosine", "t_max"), ("cosine_restarts", "t_0"),
                                            ("cyclic", "step_size_up")])
def test_lr_extrema_of_a_period_in_epochs_match_its_iterations(scheduler, key):
    iterations = {**BASE, "scheduler": scheduler, key: 10}
    in_epochs = {**iterations, key: 3, f"{key}_epochs": 2.0}
    expected = [lr_extremum(iterations, i) for i in range(1, 200)]
    assert [lr_extremum(in_epochs, i, 5) for i in range(1, 200)] == expected
    assert "trough" in expected


def test_onecycle_matches_torchs_onecycle_and_hand_values():
    cfg = {**BASE, "scheduler": "onecycle", "epochs": 4, "pct_start": 0.3, "div_factor": 25.0,
           "final_div_factor": 1e4}
    lrs = built_curve(cfg, 25, 110)  # 100 iterations, then 10 past the end (a resume with more epochs)
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert lrs[29] == pytest.approx(1e-2)  # the peak at pct_start * 100 - 1
    assert lrs[99] == pytest.approx(1e-2 / 25 / 1e4) and lrs[105] == pytest.approx(1e-2 / 25 / 1e4)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    torch_curve = stepped_lrs(lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=100, pct_start=0.3,
                                                      cycle_momentum=False), optimizer, 100)
    assert lrs[:100] == pytest.approx(torch_curve, rel=1e-9)


def test_warmup_cosine_hand_values():
    cfg = {**BASE, "scheduler": "warmup_cosine", "epochs": 2, "warmup_epochs": 0.4, "eta_min": 1e-3}
    lrs = built_curve(cfg, 10, 25)  # 4 warmup iterations, then 16 of cosine fall
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(5e-3) and lrs[4] == pytest.approx(1e-2)
    assert lrs[12] == pytest.approx((1e-2 + 1e-3) / 2)
    assert lrs[8] == pytest.approx(1e-3 + 9e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[20] == pytest.approx(1e-3) and lrs[24] == pytest.approx(1e-3)


def test_whole_run_schedules_keep_their_length_on_resume():
    cfg = {**BASE, "scheduler": "warmup_cosine", "epochs": 2, "warmup_epochs": 0.4}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    scheduler = build_scheduler(optimizer, cfg, 10)
    stepped_lrs(scheduler, optimizer, 12)
    state = scheduler.state_dict()
    longer = build_scheduler(optimizer, {**cfg, "epochs": 5}, 10)  # --epochs extended on --resume
    longer.load_state_dict(state)
    assert longer.lr_lambdas[0].total == 20


def test_a_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(UserError, match="warmup takes 20 of the run's 20 iterations"):
        built_curve({**BASE, "scheduler": "warmup_cosine", "epochs": 2, "warmup_epochs": 2.0}, 10, 1)
    with pytest.raises(UserError, match="leaves no rise"):
        built_curve({**BASE, "scheduler": "onecycle", "epochs": 1, "pct_start": 0.3, "div_factor": 25.0,
                     "final_div_factor": 1e4}, 3, 1)


@pytest.mark.parametrize("scheduler", ["onecycle", "warmup_cosine"])
def test_the_digits_demo_trains_with_whole_run_schedules(tmp_path, scheduler):
    config = runpy.run_path(str(ROOT / "mnist" / "run.py"))
    argv = ["--demo", "--epochs", "2", "--num_steps", "4", "--scheduler", scheduler, "--device", "cpu",
            "--output_dir", str(tmp_path)]
    assert main(config["config"], config["demo"], argv) == 0
    folder = tmp_path / f"digits_4bit_{scheduler}"
    lrs = [float(r["lr"]) for r in read_csv(folder / f"lr_digits_4bit_{scheduler}_t0.csv")]
    assert len(lrs) == 2 * 45 and max(lrs) == pytest.approx(5e-3, rel=1e-3) and lrs[-1] < lrs[len(lrs) // 2]
    assert runlog.read_status(folder)["0"]["state"] == "finished"


def test_the_default_optimizer_is_todays_adam():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = build_optimizer(params, {"lr": 1e-2})
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.state_dict() == torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999)).state_dict()


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                        ("sgd", torch.optim.SGD)])
def test_every_optimizer_builds_with_weight_decay_and_trains(tiny_config, name, kind):
    cfg = {**tiny_config, "optimizer": name, "weight_decay": 1e-4, "momentum": 0.8, "epochs": 1, "num_steps": 3}
    model, optimizer, _, _ = build_training(cfg, torch.device("cpu"), 6)
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert name != "sgd" or optimizer.param_groups[0]["momentum"] == 0.8
    run_experiment(cfg)
    acc = read_csv(runlog.run_folder(cfg) / "acc_mnist_4bit_cosine_t0.csv")
    assert len(acc) == 1 and math.isfinite(float(acc[0]["train_loss"]))

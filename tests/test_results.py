"""Tests of qsnn/analysis/results.py and its two CLIs on generated run folders with known numbers."""

import json
import os
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import extract_test_set_accuracy  # noqa: E402
import plot_results  # noqa: E402
from qsnn.analysis import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

ITERS_PER_EPOCH = 4
ACC_HEADER = "epoch,test_acc,train_loss,train_time"


def loss_value(trial: int, iteration: int) -> float:
    """Known loss: trials of a group differ by 0.1, so their mean is 1/it + 0.1 and std 0.1 (3 trials)."""
    return 1.0 / iteration + 0.1 * trial


def write_run(root, exp, dataset, scheduler, accs, *, precision=None, num_bits=None, vals=None, num_trials=None,
              config=None):
    """Write a complete run folder: config.json (config= adds or replaces keys) and, per trial, acc, loss, lr CSVs."""
    folder = root / exp
    folder.mkdir(parents=True)
    config = {"num_bits": num_bits, "scheduler": scheduler, "num_trials": num_trials or len(accs),
              "val_split": 0.1 if vals else 0.0, "epochs": 10, **(config or {})}  # the budget, not the logs' length
    meta = {"exp_name": exp, "dataset": dataset, "config": config, "versions": {}, "device": "cpu",
            "git_commit": None, "created": "2024-01-01T00:00:00", "command": "train.py"}
    if precision:
        meta["precision"] = precision
    (folder / "config.json").write_text(json.dumps(meta))
    for trial, test_accs in enumerate(accs):
        write_acc(folder / f"acc_{exp}_t{trial}.csv", test_accs, vals[trial] if vals else None)
        iterations = range(1, len(test_accs) * ITERS_PER_EPOCH + 1)
        write_lines(folder / f"loss_{exp}_t{trial}.csv", "epoch,iteration,loss",
                    [f"{(i - 1) // ITERS_PER_EPOCH + 1},{i},{loss_value(trial, i)!r}" for i in iterations])
        write_lines(folder / f"lr_{exp}_t{trial}.csv", "epoch,iteration,lr",
                    [f"{(i - 1) // ITERS_PER_EPOCH + 1},{i},{0.01 * (1 + i % 4)}" for i in iterations])
    return folder


def write_acc(path, test_accs, val_accs=None):
    # val_acc goes in the middle so reading by header name, not position, is exercised.
    if val_accs is None:
        rows = [f"{e},{acc},0.5,1.0" for e, acc in enumerate(test_accs, 1)]
        write_lines(path, ACC_HEADER, rows)
    else:
        rows = [f"{e},{val},{acc},0.5,1.0" for e, (acc, val) in enumerate(zip(test_accs, val_accs), 1)]
        write_lines(path, "epoch,val_acc,test_acc,train_loss,train_time", rows)


def write_lines(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Five experiments in four groups over two datasets, plus config.json files that are not runs."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "mnist_fp32_cosine_a", "mnist", "cosine", [[80, 90, 89], [85, 92, 91]], precision="fp32")
    # Same group, nested deeper, precision derived from num_bits=None: pools with the folder above (its
    # trial is seed 2, not a repeat of the seed-0 trial t0 above).
    write_run(root / "more", "mnist_fp32_cosine_b", "mnist", "cosine", [[94, 93]], config={"seed": 2})
    write_run(root, "mnist_4bit_cosine", "mnist", "cosine", [[70, 75]], num_bits=4)
    write_run(root, "mnist_4bit_step", "mnist", "step", [[60, 65], [66, 64], [61, 64]], precision="4bit", num_bits=4)
    write_run(root, "fashion_mnist_8bit_cyclic", "fashion_mnist", "cyclic", [[80, 85, 83], [81, 84, 88]],
              precision="8bit", num_bits=8, vals=[[70, 75, 75], [72, 78, 74]])
    decoy = {"dataset": "mnist", "config": {"scheduler": "cosine"}}
    for skipped in ("data/MNIST", "venv/lib/site-packages/pkg", ".git/x"):
        write_run(root / Path(skipped).parent, Path(skipped).name, "mnist", "cosine", [[1.0]])
    for other, content in (("notes", {"dataset": "mnist"}), ("tool", {"config": {}}), ("list", [decoy])):
        (root / other).mkdir()
        (root / other / "config.json").write_text(json.dumps(content))
    return root


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def expected_rows():
    """Hand-computed table rows (value columns up to the efficiency ones), in the table's order."""
    nan = math.nan
    return [
        # best [85, 88]: mean 86.5, std sqrt(4.5); val picks epochs 2 and 2: [85, 84] -> 84.5, sqrt(0.5)
        ("fashion_mnist", "8bit", "cyclic", "", 2, 3, 3, "85;88", 88.0, 86.5, math.sqrt(4.5), 2, "85;84", 84.5,
         math.sqrt(0.5)),
        # best [90, 92, 94]: mean 92, deviations -2, 0, 2 -> variance 8 / 2 = 4, std 2
        ("mnist", "fp32", "cosine", "", 3, 2, 3, "90;92;94", 94.0, 92.0, 2.0, 0, ";;", nan, nan),
        # one trial: the sample std is undefined (NaN, an empty CSV cell), not 0
        ("mnist", "4bit", "cosine", "", 1, 2, 2, "75", 75.0, 75.0, nan, 0, "", nan, nan),
        # best [65, 66, 64]: mean 65, deviations 0, 1, -1 -> variance 1
        ("mnist", "4bit", "step", "", 3, 2, 2, "65;66;64", 66.0, 65.0, 1.0, 0, ";;", nan, nan),
    ]


def assert_table(table):
    assert list(table.columns) == list(results.TABLE_COLUMNS)
    value_columns = [c for c in results.TABLE_COLUMNS if c != "trials"]
    assert len(table) == len(expected_rows())
    for (_, row), expected in zip(table.iterrows(), expected_rows()):
        for column, want in zip(value_columns, expected):
            got = row[column]
            if isinstance(want, float) and math.isnan(want):
                assert pd.isna(got), column
            elif isinstance(want, str):
                assert ("" if pd.isna(got) else str(got)) == want, column
            else:
                assert got == pytest.approx(want, rel=1e-9), column


def test_find_runs_reads_only_experiment_configs(tree):
    runs = results.find_runs(tree)
    assert [run.name for run in runs] == [
        "fashion_mnist_8bit_cyclic", "mnist_4bit_cosine", "mnist_4bit_step", "mnist_fp32_cosine_a",
        "mnist_fp32_cosine_b",
    ]
    assert {run.name: run.precision for run in runs}["mnist_fp32_cosine_b"] == "fp32"
    assert {run.name: run.precision for run in runs}["mnist_4bit_cosine"] == "4bit"
    assert {run.name: run.trials for run in runs}["mnist_4bit_step"] == (0, 1, 2)


def test_accuracy_table_values_and_grouping(tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.ResultsWarning)
        table = results.accuracy_table(results.find_runs(tree))
    assert_table(table)
    assert table.loc[1, "trials"] == "mnist_fp32_cosine_a/t0;mnist_fp32_cosine_a/t1;mnist_fp32_cosine_b/t0"


def test_extract_cli_writes_csv_and_markdown(tree, tmp_path, capsys):
    out = tmp_path / "sub" / "table.csv"
    assert extract_test_set_accuracy.main([str(tree), "--out", str(out)]) == 0
    assert_table(pd.read_csv(out, keep_default_na=True))
    captured = capsys.readouterr()
    assert "| mnist | fp32 | cosine | 3 | 2-3 | 90.00, 92.00, 94.00 | 94.00 | 92.00 ± 2.00 |  |" in captured.out
    assert "| fashion_mnist | 8bit | cyclic | 2 | 3 | 85.00, 88.00 | 88.00 | 86.50 ± 2.12 | 84.50 ± 0.71 |" in (
        captured.out
    )
    assert captured.err.strip() == f"wrote {out}"


def test_empty_root_exits_non_zero_with_one_line(tmp_path):
    for script in ("extract_test_set_accuracy.py", "plot_results.py"):
        proc = subprocess.run([sys.executable, str(REPO / script), str(tmp_path), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: no experiment folders (config.json with 'dataset' and 'config') under {tmp_path}"
        ]
        assert proc.stdout == ""


@pytest.fixture()
def broken_tree(tmp_path):
    """One five-trial run whose files are damaged in known ways, plus a folder with a truncated config."""
    root = tmp_path / "broken"
    exp = "mnist_fp32_cosine"
    folder = write_run(root, exp, "mnist", "cosine", [[50, 60, 70]], num_trials=5)
    (folder / f"acc_{exp}_t1.csv").write_text(f"{ACC_HEADER}\n1,50,1.0,2.0\n2,9")  # cut mid-row
    (folder / f"acc_{exp}_t2.csv").write_text(f"{ACC_HEADER}\n")  # header only
    (folder / f"acc_{exp}_t3.csv").write_text(f"{ACC_HEADER}\n1,55,1,1\n2,abc,1,1\n3,60,1,1\n")
    # t4 has no files at all although the config announces five trials.
    (folder / "status.json").write_text(json.dumps({"trials": {
        "0": {"state": "finished", "best_test_acc": 70, "best_epoch": 3, "epochs_completed": 3, "reason": ""},
        "3": {"state": "running", "best_test_acc": 60, "best_epoch": 3, "epochs_completed": 3, "reason": ""},
    }}))
    (root / "truncated_cfg").mkdir()
    (root / "truncated_cfg" / "config.json").write_text('{"dataset": "mnist", "con')
    return root, folder, exp


def expected_broken_warnings(root, folder, exp):
    return [
        f"skipping {root / 'truncated_cfg' / 'config.json'}: not readable JSON",
        f"{folder}: trial t3 is running; its data so far is included",
        f"{folder / f'acc_{exp}_t1.csv'}: dropped its incomplete last line '2,9'",
        f"skipping {folder / f'acc_{exp}_t2.csv'}: header only, no data rows",
        f"{folder / f'acc_{exp}_t3.csv'}: dropped 1 row(s) with missing or non-numeric values",
        # t4 has no file at all: one line for all announced trials without logs, not one per file
        f"{folder}: config.json announces 5 trials; 1 have no logs (t4)",
    ]


def test_broken_files_are_skipped_with_warnings(broken_tree):
    root, folder, exp = broken_tree
    with pytest.warns(results.ResultsWarning) as record:
        table = results.accuracy_table(results.find_runs(root))
    messages = [str(w.message) for w in record]
    for expected in expected_broken_warnings(root, folder, exp):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    assert len(messages) == 6
    row = table.iloc[0]
    # usable trials t0, t1, t3 with best [70, 50, 60]: mean 60, deviations 10, -10, 0 -> variance 100
    assert (row["n_trials"], row["trials"]) == (3, f"{exp}/t0;{exp}/t1;{exp}/t3")
    assert (row["epochs_min"], row["epochs_max"]) == (1, 3)
    assert (row["test_acc_mean"], row["test_acc_std"]) == (60.0, 10.0)


def test_extract_cli_prints_warning_lines(broken_tree, tmp_path, capsys):
    root, folder, exp = broken_tree
    assert extract_test_set_accuracy.main([str(root), "--out", str(tmp_path / "t.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    for expected in expected_broken_warnings(root, folder, exp):
        assert any(line.startswith(f"warning: {expected}") for line in err), (expected, err)
    assert (tmp_path / "t.csv").exists()


def test_nothing_usable_exits_non_zero(tmp_path, capsys):
    folder = write_run(tmp_path, "digits_fp32_constant", "digits", "constant", [[10.0]])
    for log in folder.glob("*.csv"):
        log.write_text(log.read_text().splitlines()[0] + "\n")
    assert extract_test_set_accuracy.main([str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 2
    assert plot_results.main([str(tmp_path), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if not line.startswith("warning: ")] == [
        "error: no readable acc_<exp>_t<k>.csv log in any experiment folder",
        "error: no readable loss or acc log in any experiment folder; nothing to plot",
    ]
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "figs").exists()


def test_read_log_drops_wide_rows_and_keeps_last_duplicate(tmp_path):
    path = tmp_path / "acc_x_t0.csv"
    path.write_text(f"{ACC_HEADER}\n1,10,1,1,99\n1,20,1,1\n2,30,1,1\n")
    with pytest.warns(results.ResultsWarning, match="dropped 1 row.* more fields than the header"):
        data = results.read_log(path, "acc")
    assert data["epoch"].tolist() == [1, 2]
    assert data["test_acc"].tolist() == [20, 30]


def test_precision_label():
    assert results.precision_label({"precision": "8bit", "config": {"num_bits": 4}}) == "8bit"
    assert results.precision_label({"config": {"num_bits": None}}) == "fp32"
    assert results.precision_label({"config": {"num_bits": 2}}) == "2bit"


def panel_lines(fig):
    return {ax.get_title(): ax.get_lines() for ax in fig.axes if ax.get_title()}


def test_figures_panels_lines_and_values(tree):
    runs = results.find_runs(tree)
    figures = plot_results.make_figures(runs, window=1, lr=True)
    loss, acc = figures["loss_curves"], figures["test_accuracy"]
    assert len(loss.axes) == 4  # two dataset panels, each with its learning-rate twin
    assert len(acc.axes) == 2
    for fig in (loss, acc):
        assert {title: len(lines) for title, lines in panel_lines(fig).items()} == {"fashion_mnist": 1, "mnist": 3}
    step_loss = next(line for line in panel_lines(loss)["mnist"] if line.get_label().startswith("4-bit step"))
    assert list(step_loss.get_xdata()) == list(range(1, 2 * ITERS_PER_EPOCH + 1))
    assert list(step_loss.get_ydata()) == pytest.approx([1.0 / i + 0.1 for i in range(1, 2 * ITERS_PER_EPOCH + 1)])
    # The pooled fp32 group mixes 3- and 2-epoch trials: the curve runs to the longest one.
    fp32_loss = next(line for line in panel_lines(loss)["mnist"] if line.get_label() == "fp32 cosine (n=3)")
    assert max(fp32_loss.get_xdata()) == 3 * ITERS_PER_EPOCH
    step_acc = next(line for line in panel_lines(acc)["mnist"] if line.get_label().startswith("4-bit step"))
    assert list(step_acc.get_ydata()) == pytest.approx([(60 + 66 + 61) / 3, (65 + 64 + 64) / 3])


def test_plot_cli_writes_png_and_pdf(tree, tmp_path, capsys):
    out = tmp_path / "figs"
    assert plot_results.main([str(tree), "--out", str(out), "--lr", "--window", "3"]) == 0
    for stem in ("loss_curves", "test_accuracy"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert capsys.readouterr().err == ""


def test_dataset_selection(tree):
    runs = plot_results.select_datasets(results.find_runs(tree), ["mnist"])
    fig = plot_results.plot_loss_curves(runs, window=2)
    assert [ax.get_title() for ax in fig.axes] == ["mnist"]
    with pytest.raises(UserError, match="no run of dataset"), pytest.warns(results.ResultsWarning, match="cifar"):
        plot_results.select_datasets(runs, ["cifar10"])


# ---------------------------------------------------------------- smoothing


def test_smoothing_has_no_step_where_a_window_would_fill():
    # A loss spike at the first iteration: a trailing rolling mean keeps it in full until iteration
    # `window` and then drops it at once (a step of 9/window); the EMA lets it fade geometrically.
    window = 10
    loss = pd.Series([10.0] + [1.0] * 39, index=range(1, 41))
    smoothed = plot_results.smooth(loss, window).to_numpy()
    w = 1 - 2 / (window + 1)  # pandas' span -> alpha = 2 / (span + 1); bias-corrected weights w^k
    for i in (0, 5, 10, 11, 39):
        weights = w ** np.arange(i, -1, -1)
        assert smoothed[i] == pytest.approx((weights * loss.to_numpy()[: i + 1]).sum() / weights.sum())
    drops = -np.diff(smoothed)
    assert (drops > 0).all() and (np.diff(drops) < 0).all()  # every drop smaller than the one before
    rolling = loss.rolling(window, min_periods=1).mean().to_numpy()
    assert -np.diff(rolling)[window - 1] > 5 * -np.diff(rolling)[window - 2]  # the artifact the EMA avoids


def test_loss_axis_names_the_smoothing(tree):
    fig = plot_results.plot_loss_curves(results.find_runs(tree), window=7)
    assert fig.axes[0].get_ylabel() == "training loss\n(EMA, span 7 it.)"


# ---------------------------------------------------------------- damaged accuracies, single trials


def test_accuracy_outside_0_100_is_dropped_with_one_line(tmp_path):
    folder = write_run(tmp_path, "mnist_4bit_cosine", "mnist", "cosine", [[50, 60]], num_bits=4)
    acc = folder / "acc_mnist_4bit_cosine_t0.csv"
    write_lines(acc, ACC_HEADER, ["1,50,1,1", "2,inf,1,1", "3,1e308,1,1", "4,-5,1,1", "5,nan,1,1", "6,60,1,1"])
    with pytest.warns(results.ResultsWarning) as record:
        table = results.accuracy_table(results.find_runs(tmp_path))
    assert [str(w.message) for w in record] == [
        f"{acc}: dropped 4 row(s) with missing or non-numeric values or an accuracy outside 0..100"]
    assert (table.loc[0, "best_test_acc_per_trial"], table.loc[0, "epochs_max"]) == ("60", 2)
    write_lines(acc, ACC_HEADER, ["1,100.5,1,1", "2,1e308,1,1"])
    with pytest.warns(results.ResultsWarning) as record, pytest.raises(UserError, match="no readable acc"):
        results.accuracy_table(results.find_runs(tmp_path))
    assert any(str(w.message) == f"skipping {acc}: no complete numeric row" for w in record)


def test_single_trial_std_is_undefined_in_markdown_and_csv(tree, tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert extract_test_set_accuracy.main([str(tree), "--out", str(out)]) == 0
    assert "| mnist | 4bit | cosine | 1 | 2 | 75.00 | 75.00 | 75.00 ± n/a |  |" in capsys.readouterr().out
    csv = pd.read_csv(out, keep_default_na=False, dtype=str).set_index("trials")
    assert csv.loc["mnist_4bit_cosine/t0", "test_acc_std"] == ""
    assert csv.loc["mnist_4bit_cosine/t0", "test_acc_mean"] == "75"


# ---------------------------------------------------------------- grouping by experiment

FASHION = {"dataset": "fashion_mnist", "exp_name": "", "output_dir": "results/paper", "data_dir": "/data",
           "num_bits": 4, "num_steps": 100, "beta": 0.974, "lr": 0.002908, "batch_size": 128,
           "test_batch_size": 1000, "scheduler": "cosine", "t_max": 4690, "eta_min": 0.0, "t_0": 4690,
           "step_size": 4690, "gamma": 0.5, "epochs": 2, "patience": 100, "seed": 0, "device": "auto",
           "execution": "fast", "time_chunk": 0, "tensor_data": True, "num_workers": 0}


@pytest.fixture()
def study_tree(tmp_path):
    """results/ as results/reproduce.sh lays it out, a repeat of one experiment elsewhere, and a tune.py study."""
    root = tmp_path / "results"
    write_run(root / "paper", "fashion_mnist_4bit_cosine", "fashion_mnist", "cosine", [[80, 84]],
              precision="4bit", config=FASHION)
    for name, extra, accs in (
        ("periodic", {"t_max": 469}, [[70, 71], [72, 73], [74, 75]]),
        ("monotone", {"t_max": 2345}, [[60, 61], [62, 63], [64, 65]]),
        ("constant", {"scheduler": "constant"}, [[50, 51], [52, 53], [54, 55]]),
    ):
        cfg = {**FASHION, "output_dir": "results/schedules", "num_steps": 10, "epochs": 5, "t_max": 469, **extra}
        write_run(root / "schedules", f"fashion_mnist_T10_4bit_{name}", "fashion_mnist", cfg["scheduler"], accs,
                  precision="4bit", config=cfg)
    # The periodic experiment again, on another device with other seeds: same experiment.
    write_run(tmp_path / "results" / "again", "periodic_seed10", "fashion_mnist", "cosine", [[76, 77]],
              precision="4bit", config={**FASHION, "num_steps": 10, "t_max": 469, "t_0": 469, "seed": 10,
                                        "device": "cuda", "epochs": 5, "num_workers": 4})
    # The constant run with seed 0 and a longer budget: not a repeat of the 5-epoch trial but its own row
    # (best of 18 epochs is another result than best of 5).
    write_run(root / "longer", "fashion_mnist_T10_4bit_constant_s0", "fashion_mnist", "constant", [[56, 58, 57]],
              precision="4bit", config={**FASHION, "num_steps": 10, "scheduler": "constant", "epochs": 18})
    for trial, lr in enumerate((0.01, 0.001)):
        cfg = {**FASHION, "lr": lr, "output_dir": str(root / "tune" / "fmnist"), "exp_name": f"trial_{trial}"}
        write_run(root / "tune" / "fmnist", f"trial_{trial}", "fashion_mnist", "cosine", [[99, 99]],
                  precision="4bit", config=cfg)
    return root


def test_rows_are_experiments_and_tuning_is_left_out(study_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.ResultsWarning)
        table = results.accuracy_table(results.find_runs(study_tree))
    got = table[["scheduler", "setting", "n_trials", "test_acc_mean"]].values.tolist()
    assert got == [
        ["constant", "epochs=5", 3, 53.0],  # the two constant experiments differ only in their budgets
        ["constant", "epochs=18", 1, 58.0],
        # t_0 differs in the repeat, but a cosine run never reads it: still one experiment, 3 + 1 trials
        ["cosine", "epochs=2, num_steps=100, t_max=4690", 1, 84.0],
        ["cosine", "epochs=5, num_steps=10, t_max=469", 4, (71 + 73 + 75 + 77) / 4],
        ["cosine", "epochs=5, num_steps=10, t_max=2345", 3, 63.0],
    ]
    assert table.loc[3, "trials"] == ("periodic_seed10/t0;fashion_mnist_T10_4bit_periodic/t0;"
                                      "fashion_mnist_T10_4bit_periodic/t1;fashion_mnist_T10_4bit_periodic/t2")


def test_tuning_folders_only_when_asked(study_tree):
    tuned = results.accuracy_table(results.find_runs(study_tree, include_tuning=True))
    assert len(tuned) == 7
    assert set(tuned.setting) >= {"epochs=2, lr=0.01, num_steps=100, t_max=4690",
                                 "epochs=2, lr=0.001, num_steps=100, t_max=4690"}
    # A study folder given as ROOT has no `tune` below it: tune.py's output_dir/exp_name still mark it.
    with pytest.raises(UserError, match=r"under .*fmnist \(2 tune.py trial folder\(s\) skipped; add --include-tuning"):
        results.find_runs(study_tree / "tune" / "fmnist")
    assert len(results.find_runs(study_tree / "tune" / "fmnist", include_tuning=True)) == 2


def test_extract_results_relative_to_cwd_prints_a_row_per_experiment(study_tree, monkeypatch, capsys):
    monkeypatch.chdir(study_tree.parent)
    assert extract_test_set_accuracy.main(["results", "--out", "tables/t.csv"]) == 0
    assert (study_tree.parent / "tables" / "t.csv").is_file()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| dataset | precision | scheduler | setting | trials | epochs | best test acc per trial (%) "
                        "| max (%) | mean ± std (%) | test acc at best val epoch, mean ± std (%) |")
    assert lines[5] == ("| fashion_mnist | 4bit | cosine | epochs=5, num_steps=10, t_max=469 | 4 | 2 | 77.00, 71.00, "
                        "73.00, 75.00 | 77.00 | 74.00 ± 2.58 |  |")
    assert len(lines) == 2 + 5


# ---------------------------------------------------------------- command-line robustness


@pytest.mark.parametrize("script", [extract_test_set_accuracy, plot_results])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flags(script, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main([flag])
    assert exit_info.value.code == 0
    assert "Relative paths (ROOT, --out) are taken from the current directory" in capsys.readouterr().out


def test_bad_argument_is_one_line(tree, capsys):
    assert plot_results.main([str(tree), "--window", "0"]) == 2
    assert extract_test_set_accuracy.main([str(tree), "--nope"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: argument --window: must be at least 1, got 0 (see plot_results.py --help)",
        "error: unrecognized arguments: --nope (see extract_test_set_accuracy.py --help)",
    ]


def test_unwritable_out_is_one_line_and_exit_2(tree, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (extract_test_set_accuracy, "/proc/nope/o.csv", "error: cannot write /proc/nope/o.csv: "),
        (extract_test_set_accuracy, str(tmp_path), f"error: {tmp_path} is a folder; give the CSV file to write"),
        (extract_test_set_accuracy, f"{a_file}/o.csv", f"error: cannot write {a_file}/o.csv: {a_file} is a file"),
        (plot_results, f"{a_file}/figs", f"error: cannot write figures to {a_file}/figs: Not a directory"),
        (plot_results, str(a_file), f"error: --out {a_file} is a file; give a folder for the figures"),
        (plot_results, "/proc/nope", "error: cannot write figures to /proc/nope: "),
    ]
    for script, out, message in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", results.ResultsWarning)
            assert script.main([str(tree), "--out", out]) == 2, out
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith(message), (out, lines)
        assert captured.out == ""
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("num_trials", [10**6, 10**9])
def test_huge_num_trials_is_one_warning_and_no_allocation(tmp_path, num_trials):
    folder = write_run(tmp_path, "mnist_4bit_cosine", "mnist", "cosine", [[50, 60], [70, 65]], num_bits=4,
                       num_trials=num_trials)
    start = time.perf_counter()
    with pytest.warns(results.ResultsWarning) as record:
        table = results.accuracy_table(results.find_runs(tmp_path))
    assert time.perf_counter() - start < 5
    assert [str(w.message) for w in record] == [
        f"{folder}: config.json announces {num_trials} trials; {num_trials - 2} have no logs (t2, t3, t4, ...)"]
    assert table.loc[0, "n_trials"] == 2


# ---------------------------------------------------------------- efficiency columns and memory figure

EFF_HEADER = ",".join(("epoch",) + results.EFF_COLUMNS)


def write_eff(path, epochs, trial, weight_kib):
    """Per-epoch efficiency log with values that encode epoch and trial (see the expected means)."""
    rows = [f"{e},{e / 10 + trial / 100},{e / 20},0.05,{1000 * e + 10 * trial},{500 * e},{100 * e},1000000,"
            f"{weight_kib},196.0" for e in range(1, epochs + 1)]
    write_lines(path, EFF_HEADER, rows)


@pytest.fixture()
def eff_tree(tmp_path):
    root = tmp_path / "eff"
    for bits, accs, kib in ((4, [[80, 86, 84], [83, 82, 85]], 24.5), (8, [[88, 87], [86, 89]], 49.0)):
        exp = f"fashion_mnist_{bits}bit_cosine"
        folder = write_run(root, exp, "fashion_mnist", "cosine", accs, precision=f"{bits}bit", num_bits=bits)
        for trial, trial_accs in enumerate(accs):
            write_eff(folder / f"eff_{exp}_t{trial}.csv", len(trial_accs), trial, kib)
    write_run(root, "fashion_mnist_fp32_cosine", "fashion_mnist", "cosine", [[90, 91]], precision="fp32")
    return root


def test_efficiency_at_each_trials_best_epoch(eff_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.ResultsWarning)  # no eff file is not worth a warning
        table = results.accuracy_table(results.find_runs(eff_tree)).set_index("precision")
    # 4bit: t0 best at epoch 2, t1 at epoch 3 -> rate_conv1 (0.2 + 0.31) / 2, synops (2000 + 3010) / 2
    # 8bit: t0 best at epoch 1, t1 at epoch 2 -> rate_conv1 (0.1 + 0.21) / 2, synops (1000 + 2010) / 2
    expected = {"4bit": (0.255, 0.125, 0.05, 2505, 1250, 250, 1e6, 24.5, 196),
                "8bit": (0.155, 0.075, 0.05, 1505, 750, 150, 1e6, 49.0, 196)}
    for precision, values in expected.items():
        assert table.loc[precision, list(results.EFF_COLUMNS)].tolist() == pytest.approx(values)
    assert table.loc["fp32", list(results.EFF_COLUMNS)].isna().all()


def test_efficiency_markdown(eff_tree, tmp_path, capsys):
    assert extract_test_set_accuracy.main([str(eff_tree), "--out", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| spike rate conv1 / conv2 / fc | SynOps / sample | weights (KiB) |")
    assert lines[2].endswith("| 91.00 ± n/a |  |  |  |  |")
    assert lines[3].endswith("| 88.50 ± 0.71 |  | 0.155 / 0.075 / 0.050 | 1,505 | 49.0 |")
    assert lines[4].endswith("| 85.50 ± 0.71 |  | 0.255 / 0.125 / 0.050 | 2,505 | 24.5 |")


def test_accuracy_vs_memory_figure(eff_tree):
    fig = plot_results.make_figures(results.find_runs(eff_tree), memory=True)["accuracy_vs_memory"]
    (ax,) = fig.axes
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers]
    assert points == [(49.0, 88.5), (24.5, 85.5)]  # one point per row with weight_kib: 8bit, 4bit
    bars = [c.lines[2][0].get_segments()[0] for c in ax.containers]
    assert [y for lo, hi in bars for y in (lo[1], hi[1])] == pytest.approx(
        [88.5 - 0.5**0.5, 88.5 + 0.5**0.5, 85.5 - 0.5**0.5, 85.5 + 0.5**0.5])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["8-bit cosine", "4-bit cosine"]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["24.5", "49"]


def test_plot_cli_headless_small_pngs_relative_out(eff_tree, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, str(REPO / "plot_results.py"), "eff", "--out", "figs", "--memory",
                           "--lr"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    for stem in ("loss_curves", "test_accuracy", "accuracy_vs_memory"):
        png = tmp_path / "figs" / f"{stem}.png"
        assert 1000 < png.stat().st_size < 300_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "figs" / f"{stem}.pdf").is_file()
    assert proc.stdout.splitlines()[0] == "wrote figs/loss_curves.png"


def test_efficiency_without_the_best_epoch_row_is_empty(tmp_path):
    folder = write_run(tmp_path, "mnist_4bit_cosine", "mnist", "cosine", [[50, 60]], num_bits=4)
    write_eff(folder / "eff_mnist_4bit_cosine_t0.csv", 1, 0, 24.5)  # epoch 1 only; the best epoch is 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.ResultsWarning)
        table = results.accuracy_table(results.find_runs(tmp_path))
    assert table.loc[0, list(results.EFF_COLUMNS)].isna().all()
    assert "weights (KiB)" not in results.to_markdown(table)

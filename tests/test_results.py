"""Tests of qsnn/results.py and its two CLIs on generated run folders with known numbers."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import extract_test_set_accuracy  # noqa: E402
import plot_results  # noqa: E402
from qsnn import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

ITERS_PER_EPOCH = 4
ACC_HEADER = "epoch,test_acc,train_loss,train_time"


def loss_value(trial: int, iteration: int) -> float:
    """Known loss: trials of a group differ by 0.1, so their mean is 1/it + 0.1 and std 0.1 (3 trials)."""
    return 1.0 / iteration + 0.1 * trial


def write_run(root, exp, dataset, scheduler, accs, *, precision=None, num_bits=None, vals=None, num_trials=None):
    """Write a complete run folder: config.json and, per trial, acc, loss and lr CSVs."""
    folder = root / exp
    folder.mkdir(parents=True)
    config = {"num_bits": num_bits, "scheduler": scheduler, "num_trials": num_trials or len(accs),
              "val_split": 0.1 if vals else 0.0, "epochs": max(len(a) for a in accs)}
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
    # Same group, nested deeper, precision derived from num_bits=None: pools with the folder above.
    write_run(root / "more", "mnist_fp32_cosine_b", "mnist", "cosine", [[94, 93]])
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
    step_loss = next(line for line in panel_lines(loss)["mnist"] if line.get_label().startswith("4bit step"))
    assert list(step_loss.get_xdata()) == list(range(1, 2 * ITERS_PER_EPOCH + 1))
    assert list(step_loss.get_ydata()) == pytest.approx([1.0 / i + 0.1 for i in range(1, 2 * ITERS_PER_EPOCH + 1)])
    # The pooled fp32 group mixes 3- and 2-epoch trials: the curve runs to the longest one.
    fp32_loss = next(line for line in panel_lines(loss)["mnist"] if line.get_label() == "fp32 cosine (n=3)")
    assert max(fp32_loss.get_xdata()) == 3 * ITERS_PER_EPOCH
    step_acc = next(line for line in panel_lines(acc)["mnist"] if line.get_label().startswith("4bit step"))
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

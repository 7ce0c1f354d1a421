"""plot_results.py's paper figures on tiny run folders written in qsnn.runs.runlog's on-disk format.

Checks, by hand-computed numbers: the loss divided by each run's T, labels from folder names and
configs, the fixed schedule-colour / precision-style mapping, seed folders pooled into one band,
axis limits and ticks, the legend outside the data, and PNG + PDF files written headless.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import plot_results  # noqa: E402
from qsnn.analysis.curve_figures import Options  # noqa: E402
from qsnn.analysis.figure_styles import Style  # noqa: E402
from qsnn.analysis import results  # noqa: E402
from qsnn.runs.runlog import EFFICIENCY_COLUMNS  # noqa: E402

ITERS_PER_EPOCH = 4
BASE_CONFIG = {"num_bits": 4, "num_steps": 10, "scheduler": "cosine", "t_max": 8, "eta_min": 0.0, "lr": 0.01,
               "batch_size": 32, "epochs": 3, "seed": 0, "val_split": 0.0, "device": "cpu"}


def per_step_loss(trial: int, iteration: int) -> float:
    """The loss per time step the fake trainer reaches: trials of a run differ by 0.01."""
    return 1.0 / iteration + 0.01 * trial


def write_lines(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def write_run(root: Path, name: str, dataset: str = "fashion_mnist", accs=((80.0, 82.0, 84.0),), states=None,
              weight_kib=None, **config) -> Path:
    """A run folder as qsnn.runs.runlog writes it: config.json, status.json and acc/loss/lr(/eff) CSVs per trial.

    The logged loss is T times per_step_loss (it grows with the number of time steps); lr falls and rises
    as the configured cosine would, by a simple rule: 0.01 at even iterations, 0.005 at odd ones.
    """
    cfg = {**BASE_CONFIG, "dataset": dataset, "num_trials": len(accs), "epochs": max(map(len, accs)), **config}
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"exp_name": name, "dataset": dataset, "config": cfg, "versions": {}, "device": "cpu",
            "git_commit": None, "created": "2024-01-01T00:00:00", "command": "run.py"}
    (folder / "config.json").write_text(json.dumps(meta))
    states = states or ["finished"] * len(accs)
    (folder / "status.json").write_text(json.dumps(
        {"trials": {str(k): {"state": state, "epochs_completed": len(a)} for k, (state, a) in
                    enumerate(zip(states, accs))}}))
    steps = cfg.get("num_steps_train", cfg["num_steps"])
    for trial, trial_accs in enumerate(accs):
        iterations = range(1, len(trial_accs) * ITERS_PER_EPOCH + 1)
        epoch = [(i - 1) // ITERS_PER_EPOCH + 1 for i in iterations]
        write_lines(folder / f"loss_{name}_t{trial}.csv", "epoch,iteration,loss",
                    [f"{e},{i},{steps * per_step_loss(trial, i)!r}" for e, i in zip(epoch, iterations)])
        write_lines(folder / f"lr_{name}_t{trial}.csv", "epoch,iteration,lr",
                    [f"{e},{i},{0.01 if i % 2 == 0 else 0.005}" for e, i in zip(epoch, iterations)])
        write_lines(folder / f"acc_{name}_t{trial}.csv", "epoch,test_acc,train_loss,train_time",
                    [f"{e},{acc},0.1,1.0" for e, acc in enumerate(trial_accs, 1)])
        if weight_kib is not None:
            write_lines(folder / f"eff_{name}_t{trial}.csv", ",".join(EFFICIENCY_COLUMNS),
                        [f"{e},0.1,0.1,0.1,1000,900,100,784,{weight_kib},142.1875" for e in
                         range(1, len(trial_accs) + 1)])
    return folder


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def lines_by_label(fig):
    return {line.get_label(): line for ax in data_axes(fig) for line in ax.get_lines()}


def study(root: Path, precisions=("fp32", "4bit"), schedules=("periodic", "constant")) -> Path:
    """The schedule study's layout: one folder per (precision, schedule), named in the study's words."""
    kib = {"fp32": 142.1875, "4bit": 18.3203125, "2bit": 9.47265625}
    for precision in precisions:
        for i, schedule in enumerate(schedules):
            bits = None if precision == "fp32" else int(precision[0])
            extra = {"scheduler": "constant"} if schedule == "constant" else {"t_max": 4 if schedule == "periodic"
                                                                              else 12}
            write_run(root, f"fashion_mnist_T10_{precision}_{schedule}", num_bits=bits, weight_kib=kib[precision],
                      accs=[[80.0 + i, 81.0 + i], [82.0 + i, 83.0 + i]], **extra)
    return root


# ---------------------------------------------------------------- loss per time step


def test_runs_of_different_T_with_the_same_per_step_loss_plot_the_same_values(tmp_path):
    write_run(tmp_path, "fmnist_T10", num_steps=10)
    write_run(tmp_path, "fmnist_T100", num_steps=100)  # logs 10x the loss of the T=10 run
    fig = plot_results.make_figures(results.find_runs(tmp_path), window=1)["loss_curves"]
    lines = lines_by_label(fig)
    assert set(lines) == {"4-bit cosine, period 4 epochs, T=10 (n=1)", "4-bit cosine, period 4 epochs, T=100 (n=1)"}
    expected = [1.0 / i for i in range(1, 3 * ITERS_PER_EPOCH + 1)]  # per_step_loss of trial 0
    for line in lines.values():
        assert list(line.get_xdata()) == list(range(1, 3 * ITERS_PER_EPOCH + 1))
        assert list(line.get_ydata()) == pytest.approx(expected)
    assert data_axes(fig)[0].get_ylabel() == "training loss / T\n(not smoothed)"


def test_smoothing_is_applied_to_the_normalised_loss(tmp_path):
    write_run(tmp_path, "fmnist_T10", num_steps=10)
    write_run(tmp_path, "fmnist_T100", num_steps=100)
    fig = plot_results.make_figures(results.find_runs(tmp_path), window=3)["loss_curves"]
    # span 3: alpha 0.5, bias-corrected: y1 = x1 = 1, y2 = (x2 + 0.5 x1) / 1.5 = (0.5 + 0.5) / 1.5
    for line in lines_by_label(fig).values():
        assert list(line.get_ydata()[:2]) == pytest.approx([1.0, 1.0 / 1.5])
    assert data_axes(fig)[0].get_ylabel() == "training loss / T\n(EMA, span 3 it.)"


def test_num_steps_train_is_the_divisor_and_a_config_without_T_is_left_as_logged(tmp_path):
    write_run(tmp_path / "a", "fmnist_train_steps", num_steps=4, num_steps_train=20)
    runs = results.find_runs(tmp_path / "a")
    line = next(iter(lines_by_label(plot_results.plot_loss_curves(runs, window=1)).values()))
    assert line.get_ydata()[1] == pytest.approx(per_step_loss(0, 2))  # logged 20 x 0.5, divided by 20
    assert plot_results.time_steps({"num_steps": 100}) == 100
    assert plot_results.time_steps({"num_steps_train": 25, "num_steps": 100}) == 25
    assert plot_results.time_steps({}) is None
    assert plot_results.loss_ylabel([Style("constant", "fp32", "", "constant", None)], 50) == \
        "training loss\n(EMA, span 50 it.)"


def test_skip_iterations_and_log_axis(tmp_path):
    write_run(tmp_path, "fmnist")
    fig = plot_results.make_figures(results.find_runs(tmp_path), options=Options(window=1, skip=5, logy=True))
    (ax,) = data_axes(fig["loss_curves"])
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(6, 3 * ITERS_PER_EPOCH + 1))
    assert list(line.get_ydata()) == pytest.approx([1.0 / i for i in range(6, 3 * ITERS_PER_EPOCH + 1)])
    assert ax.get_yscale() == "log"


def test_linear_loss_axis_fits_the_curves_after_their_steep_start(tmp_path):
    write_run(tmp_path, "fmnist")  # per-step loss 1/i over iterations 1..12
    (ax,) = data_axes(plot_results.make_figures(results.find_runs(tmp_path), window=1)["loss_curves"])
    # From 5% of the iterations on (i >= 1.55): top 1/2; bottom 1/12; 8% of that range as margin each side.
    margin = 0.08 * (1 / 2 - 1 / 12)
    assert ax.get_ylim() == pytest.approx((1 / 12 - margin, 1 / 2 + margin))


def test_skipping_every_iteration_is_a_warning_not_a_crash(tmp_path):
    write_run(tmp_path, "fmnist")
    with pytest.warns(results.ResultsWarning, match="no loss logged after iteration 100"):
        figures = plot_results.make_figures(results.find_runs(tmp_path), options=Options(skip=100))
    assert set(figures) == {"test_accuracy"}


# ---------------------------------------------------------------- labels


def test_labels_in_the_study_s_words_from_folder_names(tmp_path):
    write_run(tmp_path, "fashion_mnist_T10_4bit_periodic", t_max=4)
    write_run(tmp_path, "fashion_mnist_T10_fp32_monotone_s1", num_bits=None, t_max=12, seed=1)
    write_run(tmp_path, "fashion_mnist_T10_2bit_constant", num_bits=2, scheduler="constant")
    styles = plot_results.experiment_styles(results.find_runs(tmp_path))
    assert sorted(style.label for style in styles.values()) == ["2-bit constant", "4-bit periodic", "fp32 monotone"]
    assert {style.label: style.kind for style in styles.values()}["fp32 monotone"] == "monotone"


@pytest.mark.parametrize("config, per_epoch, expected", [
    ({"scheduler": "cosine", "t_max": 469, "epochs": 5}, 469, ("cosine, period 2 epochs", "periodic")),
    ({"scheduler": "cosine", "t_max": 4690, "epochs": 10}, 469, ("cosine decay over 10 epochs", "monotone")),
    ({"scheduler": "cosine", "t_max": 938, "epochs": 5}, None, ("cosine, period 1,876 iterations", "cosine")),
    ({"scheduler": "cosine", "t_max": 469, "eta_min": 1e-4, "epochs": 5}, 469,
     ("cosine, period 2 epochs, min LR 0.0001", "periodic")),
    ({"scheduler": "cosine_restarts", "t_0": 469, "t_mult": 2}, 469,
     ("warm restarts every 1 epoch, each ×2 longer", "cosine_restarts")),
    ({"scheduler": "cyclic", "step_size_up": 469}, 469, ("triangular, period 2 epochs", "cyclic")),
    ({"scheduler": "step", "step_size": 938, "gamma": 0.5}, 469, ("step ×0.5 every 2 epochs", "step")),
    ({"scheduler": "constant", "t_max": 469}, 469, ("constant", "constant")),
    ({"scheduler": "cosine"}, 469, ("cosine", "cosine")),  # no t_max to describe
    ({"scheduler": "cosine", "t_max": 4690, "t_max_epochs": 1.0, "epochs": 5}, 422,
     ("cosine, period 2 epochs", "periodic")),  # the epochs twin overrides t_max
    ({"scheduler": "cosine", "t_max": 4690, "t_max_epochs": 1.0}, None, ("cosine", "cosine")),
])
def test_schedule_text_from_config(config, per_epoch, expected):
    assert plot_results.schedule_text(config, per_epoch) == expected


def test_labels_from_config_where_the_folder_name_does_not_say(tmp_path):
    # 4 iterations an epoch (from the logs), 3 epochs: t_max = 12 falls once, t_max = 2 has a period of 1 epoch.
    write_run(tmp_path, "mnist_4bit_cosine", dataset="mnist", t_max=12)
    write_run(tmp_path, "mnist_4bit_cosine_short", dataset="mnist", t_max=2)
    write_run(tmp_path, "mnist_fp32_step", dataset="mnist", num_bits=None, scheduler="step", step_size=8, gamma=0.1)
    labels = sorted(style.label for style in plot_results.experiment_styles(results.find_runs(tmp_path)).values())
    assert labels == ["4-bit cosine decay over 3 epochs", "4-bit cosine, period 1 epoch",
                      "fp32 step ×0.1 every 2 epochs"]


def test_experiments_that_would_share_a_label_say_what_differs(tmp_path):
    # Two "periodic" studies of one dataset: t_max 4 and 8 iterations, at 4 iterations an epoch.
    study(tmp_path, precisions=("fp32", "4bit"), schedules=("periodic",))
    write_run(tmp_path, "fashion_mnist_T10_4bit_periodic_s0", t_max=8, seed=0, epochs=18)
    styles = plot_results.experiment_styles(results.find_runs(tmp_path))
    by_label = {style.label: style for style in styles.values()}
    assert sorted(by_label) == ["4-bit periodic (cosine, period 2 epochs)", "4-bit periodic (cosine, period 4 epochs)",
                                "fp32 periodic (cosine, period 2 epochs)"]
    # The variant drawn at both precisions keeps the study's colour; the other gets a spare one.
    assert by_label["fp32 periodic (cosine, period 2 epochs)"].color == plot_results.SCHEDULE_COLORS["periodic"]
    assert by_label["4-bit periodic (cosine, period 2 epochs)"].color == plot_results.SCHEDULE_COLORS["periodic"]
    assert by_label["4-bit periodic (cosine, period 4 epochs)"].color in plot_results.SPARE_COLORS


def test_extra_settings_name_only_what_the_label_does_not(tmp_path):
    assert plot_results.extra_text("num_steps=100, t_max=4690, lr=0.01") == "lr=0.01"  # T: said where it varies
    assert plot_results.extra_text("eta_min=0.001") == ""
    assert plot_results.extra_text("") == ""
    assert plot_results.precision_text("4bit") == "4-bit" and plot_results.precision_text("fp32") == "fp32"


# ---------------------------------------------------------------- styles


def test_schedule_colour_and_precision_style_are_fixed_across_figures(tmp_path):
    figures = plot_results.make_figures(results.find_runs(study(tmp_path / "one")), memory=True)
    periodic, constant = plot_results.SCHEDULE_COLORS["periodic"], plot_results.SCHEDULE_COLORS["constant"]
    for stem in ("loss_curves", "test_accuracy"):
        lines = lines_by_label(figures[stem])
        assert {label: (line.get_color(), line.get_linestyle()) for label, line in lines.items()} == {
            "fp32 periodic (n=2)": (periodic, "-"), "4-bit periodic (n=2)": (periodic, "--"),
            "fp32 constant (n=2)": (constant, "-"), "4-bit constant (n=2)": (constant, "--")}, stem
    (ax,) = figures["accuracy_vs_memory"].axes
    points = {c.get_label(): c.lines[0] for c in ax.containers}
    assert points["4-bit periodic (n=2)"].get_color() == periodic and points["4-bit periodic (n=2)"].get_marker() == "s"
    assert points["fp32 constant (n=2)"].get_color() == constant and points["fp32 constant (n=2)"].get_marker() == "o"
    # Another set of runs, drawn on its own: periodic keeps its colour, 2-bit gets its own line style.
    other = plot_results.make_figures(results.find_runs(study(tmp_path / "two", ("2bit",), ("monotone", "periodic"))))
    lines = lines_by_label(other["test_accuracy"])
    assert lines["2-bit periodic (n=2)"].get_color() == periodic
    assert lines["2-bit monotone (n=2)"].get_color() == plot_results.SCHEDULE_COLORS["monotone"]
    assert lines["2-bit periodic (n=2)"].get_linestyle() == ":"


def test_two_variants_of_one_schedule_never_share_a_colour():
    described = {"a": Style("cosine, period 2 epochs", "4-bit", "", "periodic", 10),
                 "b": Style("periodic", "4-bit", "", "periodic", 10),
                 "c": Style("cosine, period 4 epochs", "4-bit", "", "periodic", 10)}
    styles = plot_results.assign_styles(described)
    assert styles["b"].color == plot_results.SCHEDULE_COLORS["periodic"]  # the name that is the family comes first
    assert len({style.color for style in styles.values()}) == 3
    assert {styles["a"].color, styles["c"].color} <= set(plot_results.SPARE_COLORS)


def test_legend_is_outside_every_data_area_and_groups_by_schedule(tmp_path):
    fig = plot_results.make_figures(results.find_runs(study(tmp_path)), lr=True)["loss_curves"]
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert [t.get_text() for t in legend.get_texts()] == ["fp32 periodic", "4-bit periodic", "fp32 constant",
                                                          "4-bit constant"]
    assert legend.get_title().get_text() == "mean over 2 trials,\nshaded: ±1 std"


# ---------------------------------------------------------------- trials pooled


def test_seed_folders_pool_into_one_curve_with_a_band(tmp_path):
    for seed in range(3):
        write_run(tmp_path, f"fashion_mnist_T10_4bit_periodic_s{seed}", seed=seed, accs=[[80.0 + 2 * seed, 90.0]])
    runs = results.find_runs(tmp_path)
    fig = plot_results.make_figures(runs, options=Options(window=1, band="minmax"))
    (ax,) = data_axes(fig["test_accuracy"])
    (line,) = ax.get_lines()
    assert line.get_label() == "4-bit periodic (n=3)"
    assert list(line.get_ydata()) == pytest.approx([82.0, 90.0])  # mean of 80, 82, 84 and of 90, 90, 90
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(80.0) and max(ys) == pytest.approx(90.0)  # min-max of the trials
    # The loss: each folder's trial 0 has the same per-step loss, so the mean is 1/i and the band has no width.
    (loss,) = data_axes(fig["loss_curves"])[0].get_lines()
    assert list(loss.get_ydata()[:3]) == pytest.approx([1.0, 0.5, 1.0 / 3])


def test_band_limits_std_and_minmax():
    import pandas as pd

    stats = plot_results.trial_stats([pd.Series([1.0, 2.0]), pd.Series([3.0, 2.0]), pd.Series([5.0, 2.0])])
    assert stats["mean"].tolist() == [3.0, 2.0] and stats["std"].tolist() == [2.0, 0.0]  # sqrt((4 + 0 + 4) / 2)
    low, high = plot_results.band_limits(stats, "std")
    assert (low.tolist(), high.tolist()) == ([1.0, 2.0], [5.0, 2.0])
    low, high = plot_results.band_limits(stats, "minmax")
    assert (low.tolist(), high.tolist()) == ([1.0, 2.0], [5.0, 2.0])
    stats = plot_results.trial_stats([pd.Series([1.0]), pd.Series([2.0]), pd.Series([6.0])])
    assert plot_results.band_limits(stats, "minmax")[1].tolist() == [6.0]
    assert plot_results.band_limits(stats, "std")[1].tolist() == pytest.approx([3.0 + 7**0.5])


# ---------------------------------------------------------------- axes


def test_one_epoch_run_has_markers_whole_epoch_ticks_and_no_accuracy_past_100(tmp_path):
    write_run(tmp_path, "mnist_4bit_cosine", dataset="mnist", accs=[[99.9], [99.95]])
    fig = plot_results.make_figures(results.find_runs(tmp_path))["test_accuracy"]
    (ax,) = data_axes(fig)
    (line,) = ax.get_lines()
    assert line.get_marker() == "s"  # 4-bit
    low, high = ax.get_xlim()
    assert [tick for tick in ax.get_xticks() if low <= tick <= high] == [1.0]
    assert ax.get_ylim()[1] <= 100.0


def test_lr_row_starts_at_zero_and_draws_each_schedule_once(tmp_path):
    fig = plot_results.make_figures(results.find_runs(study(tmp_path)), lr=True)["loss_curves"]
    (loss_ax,) = data_axes(fig)
    (lr_ax,) = [ax for ax in fig.axes if ax is not loss_ax]
    assert lr_ax.get_ylim()[0] == 0.0 and lr_ax.get_ylim()[1] >= 0.01
    assert len(lr_ax.get_lines()) == 2  # periodic and constant, not once per precision
    assert lr_ax.get_ylabel() == "learning\nrate"


def test_panels_per_precision(tmp_path):
    fig = plot_results.make_figures(results.find_runs(study(tmp_path)), options=Options(panels="precision"))
    assert [ax.get_title() for ax in data_axes(fig["test_accuracy"])] == ["fashion_mnist, fp32",
                                                                         "fashion_mnist, 4-bit"]
    assert [len(ax.get_lines()) for ax in data_axes(fig["test_accuracy"])] == [2, 2]


def test_memory_ticks_are_short_and_shared_x_points_are_spread(tmp_path):
    fig = plot_results.make_figures(results.find_runs(study(tmp_path)), memory=True)["accuracy_vs_memory"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["18.3", "142"]
    xs = sorted(c.lines[0].get_xdata()[0] for c in ax.containers)
    assert xs == pytest.approx([18.3203125 / 1.07**0.5, 18.3203125 * 1.07**0.5,
                                142.1875 / 1.07**0.5, 142.1875 * 1.07**0.5])


# ---------------------------------------------------------------- files and command line


def results_tree(root: Path) -> Path:
    """results/ in miniature: paper (T=100 runs), schedules (a study) and minima (a run still in progress)."""
    for dataset in ("mnist", "fashion_mnist"):
        write_run(root / "paper", f"{dataset}_4bit_cosine", dataset=dataset, num_steps=100, t_max=12, weight_kib=18.3)
    study(root / "schedules")
    write_run(root / "minima", "fashion_mnist_T10_4bit_periodic_s0", states=["running"], t_max=8)
    return root


def test_cli_writes_png_and_pdf_per_folder_headless(tmp_path):
    root = results_tree(tmp_path / "results")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, str(REPO / "plot_results.py"), "results", "--out", "figs", "--per-folder",
                           "--skip-unfinished", "--lr", "--memory", "--panels", "precision", "--skip-iterations", "1"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    stems = ["paper_loss_curves", "paper_test_accuracy", "schedules_accuracy_vs_memory", "schedules_loss_curves",
             "schedules_test_accuracy"]
    assert written == sorted(f"{stem}.{ext}" for stem in stems for ext in ("pdf", "png"))
    for stem in stems:
        with Image.open(tmp_path / "figs" / f"{stem}.png") as png:
            assert png.format == "PNG" and round(png.info["dpi"][0]) == plot_results.DEFAULT_DPI
        assert (tmp_path / "figs" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    err = proc.stderr.splitlines()
    assert f"warning: {Path('results/minima/fashion_mnist_T10_4bit_periodic_s0')}: trial t0 is running; left out " \
           "(--skip-unfinished)" in err
    assert not any("its data so far is included" in line for line in err)
    # paper: both runs 4-bit only, one weight size: no memory figure, said once
    assert "warning: one weight memory per dataset (fashion_mnist, mnist): accuracy vs memory not drawn" in err
    assert proc.stdout.splitlines()[0] == "wrote figs/paper_loss_curves.png"


def test_prefix_and_dpi_options(tmp_path, capsys):
    write_run(tmp_path / "runs", "fmnist")
    out = tmp_path / "figs"
    assert plot_results.main([str(tmp_path / "runs"), "--out", str(out), "--prefix", "study_", "--dpi", "150",
                              "--band", "minmax", "--logy"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["study_loss_curves.pdf", "study_loss_curves.png",
                                                     "study_test_accuracy.pdf", "study_test_accuracy.png"]
    with Image.open(out / "study_loss_curves.png") as png:
        assert round(png.info["dpi"][0]) == 150
    assert capsys.readouterr().err == ""


def test_only_running_trials_is_one_error(tmp_path, capsys):
    write_run(tmp_path, "fmnist", states=["running"])
    assert plot_results.main([str(tmp_path), "--out", str(tmp_path / "figs"), "--skip-unfinished"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"error: no finished trial under {tmp_path}; nothing to plot"
    assert not (tmp_path / "figs").exists()


def test_running_trials_are_drawn_by_default_with_the_readers_warning(tmp_path):
    write_run(tmp_path, "fmnist", states=["running"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        figures = plot_results.make_figures(results.find_runs(tmp_path))
    assert set(figures) == {"loss_curves", "test_accuracy"}
    assert any("is running; its data so far is included" in str(w.message) for w in record)


@pytest.mark.parametrize("argv, message", [
    (["--skip-iterations", "-1"], "argument --skip-iterations: must be 0 or more, got -1"),
    (["--dpi", "0"], "argument --dpi: must be at least 1, got 0"),
])
def test_bad_options_are_one_line(tmp_path, capsys, argv, message):
    write_run(tmp_path, "fmnist")
    assert plot_results.main([str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message} (see plot_results.py --help)"]


def test_unknown_band_is_refused(tmp_path, capsys):
    assert plot_results.main([str(tmp_path), "--band", "iqr"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: argument --band: invalid choice: 'iqr'") and "minmax" in line

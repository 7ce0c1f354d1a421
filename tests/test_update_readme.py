"""results/update_readme.py: the schedule study's verdict is computed from finished trials only."""
import json
import runpy

from conftest import ROOT

update = runpy.run_path(str(ROOT / "results" / "update_readme.py"))


def write_run(root, schedule, accuracies, states=("finished",) * 3):
    folder = root / "results" / "schedules" / f"fashion_mnist_T10_4bit_{schedule}"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"trials": {str(k): {"state": s} for k, s in enumerate(states)}}))
    for k, best in enumerate(accuracies):
        rows = [f"1,{best - 1},0.1,1.0", f"2,{best},0.1,1.0"]
        (folder / f"acc_fashion_mnist_T10_4bit_{schedule}_t{k}.csv").write_text(
            "epoch,test_acc,train_loss,train_time\n" + "\n".join(rows) + "\n")


def test_periodic_wins_only_beyond_the_largest_std(tmp_path):
    write_run(tmp_path, "periodic", [88.0, 88.2, 88.4])  # mean 88.2, std 0.2
    write_run(tmp_path, "monotone", [87.0, 87.5, 88.0])  # mean 87.5, std 0.5
    write_run(tmp_path, "constant", [87.8, 87.9, 88.0])  # mean 87.9, std 0.1
    row = next(line for line in update["schedule_verdict"](tmp_path).splitlines() if line.startswith("| 4bit"))
    # margins +0.70 and +0.30; the largest std is 0.50, so constant is within the spread
    assert row == ("| 4bit | 88.20 ± 0.20 (3 of 3) | 87.50 ± 0.50 (3 of 3) | 87.90 ± 0.10 (3 of 3) "
                   "| no (+0.70 vs monotone, +0.30 vs constant; largest std 0.50) |")


def test_running_trials_are_left_out_and_the_verdict_waits(tmp_path):
    write_run(tmp_path, "periodic", [90.0, 88.0, 50.0], states=("finished", "finished", "running"))
    lines = update["schedule_verdict"](tmp_path).splitlines()
    row = next(line for line in lines if line.startswith("| 4bit"))
    assert "89.00 ± 1.41 (2 of 3)" in row and "pending" in row and "not run yet" in row


def test_paper_runs_are_listed_epoch_by_epoch(tmp_path):
    folder = tmp_path / "results" / "paper" / "mnist_4bit_cosine"
    folder.mkdir(parents=True)
    (folder / "acc_mnist_4bit_cosine_t0.csv").write_text(
        "epoch,test_acc,train_loss,train_time\n1,97.5,0.2,183.4\n2,98.25,0.1,181.6\n")
    assert update["paper_epochs"](tmp_path).splitlines()[2:] == [
        "| mnist_4bit_cosine | 1 | 97.50 | 183 |", "| mnist_4bit_cosine | 2 | 98.25 | 182 |"]


minima = runpy.run_path(str(ROOT / "results" / "minima_report.py"))
SUMMARY_HEADER = "pair,kind,epoch_a,epoch_b,barrier,loss_a,loss_b,code_flips"


def write_cell(root, name, finals, trough_losses=None, state="finished"):
    """A minima cell: status, acc log, and (optionally) an interpolation summary between the troughs."""
    folder = root / "results" / "minima" / name
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"trials": {"0": {"state": state}}}))
    rows = [f"{e},{acc},0.1,1.0" for e, acc in enumerate(finals, start=1)]
    (folder / f"acc_{name}_t0.csv").write_text("epoch,test_acc,train_loss,train_time\n" + "\n".join(rows) + "\n")
    if trough_losses:
        troughs = (2, 6, 10, 14, 18)
        lines = [f"e{a}-e{b},epochs,{a},{b},{0.001 * i},{trough_losses[i]},{trough_losses[i + 1]},0.{i + 1}"
                 for i, (a, b) in enumerate(zip(troughs, troughs[1:]))]
        (folder / "landscape").mkdir()
        (folder / "landscape" / "interpolation_summary.csv").write_text(SUMMARY_HEADER + "\n" + "\n".join(lines) + "\n")
    return folder


def test_minima_accuracies_pool_finished_seeds_only(tmp_path):
    write_cell(tmp_path, "fashion_mnist_T10_4bit_periodic_s0", [80.0, 90.0, 88.0])
    write_cell(tmp_path, "fashion_mnist_T10_4bit_periodic_s1", [80.0, 86.0, 86.0])
    write_cell(tmp_path, "fashion_mnist_T10_4bit_periodic_s2", [99.0], state="running")
    table = minima["accuracy_table"](minima["finished_cells"](tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| 4bit | periodic"))
    assert row == "| 4bit | periodic | 2 of 3 | 88.00 ± 2.83 | 87.00 ± 1.41 |"  # best 90, 86; final 88, 86


def test_minima_landscape_rows_and_the_trough_rule(tmp_path):
    write_cell(tmp_path, "fashion_mnist_T10_4bit_periodic_s0", [85.0], trough_losses=[0.09, 0.08, 0.07, 0.075, 0.06])
    cells = minima["finished_cells"](tmp_path)
    table = minima["landscape_table"](cells).splitlines()
    barrier = next(line for line in table if "barrier" in line)
    flips = next(line for line in table if "codes changed" in line)
    assert barrier.endswith("| 0.00000 ± n/a | 0.00100 ± n/a | 0.00200 ± n/a | 0.00300 ± n/a |")
    assert flips.endswith("| 10.0 ± n/a | 20.0 ± n/a | 30.0 ± n/a | 40.0 ± n/a |")
    assert minima["trough_losses_fall"](cells, "4bit") == "0 of 1 seed(s) yes"  # 0.07 -> 0.075 rises
    assert "not measured yet" in minima["seed_reference"](cells)

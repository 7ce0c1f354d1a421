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

"""results/update_readme.py: the schedule study's verdict is computed from finished trials only, and each
generated section is written into whichever of README.md and docs/*.md holds its markers."""
import json
import runpy

import pytest
from conftest import ROOT

update = runpy.run_path(str(ROOT / "results" / "update_readme.py"))
MarkerError = update["MarkerError"]


def section(name, content="old"):
    """A generated section with its two markers."""
    start, end = update["markers"](name)
    return f"{start}\n{content}\n{end}"


def write_pages(root, readme, **docs):
    """README.md and docs/<name>.md with the given texts."""
    (root / "README.md").write_text(readme)
    (root / "docs").mkdir()
    for name, text in docs.items():
        (root / "docs" / f"{name}.md").write_text(text)


def test_each_section_is_filled_in_the_file_that_holds_its_markers(tmp_path):
    write_pages(tmp_path, "# title\n\n" + section("results-table") + "\n\nhand-written text\n",
                results="# results\n\n" + section("paper-epochs") + "\nafter\n", other="# no markers here\n")
    places = update["locate"](("results-table", "paper-epochs"), tmp_path)
    assert places == {"results-table": tmp_path / "README.md", "paper-epochs": tmp_path / "docs" / "results.md"}
    changed = update["fill"]({"results-table": "| new table |", "paper-epochs": "| new epochs |"}, tmp_path)
    assert sorted(changed) == [tmp_path / "README.md", tmp_path / "docs" / "results.md"]
    assert (tmp_path / "README.md").read_text() == (
        "# title\n\n" + section("results-table", "| new table |") + "\n\nhand-written text\n")
    assert (tmp_path / "docs" / "results.md").read_text() == (
        "# results\n\n" + section("paper-epochs", "| new epochs |") + "\nafter\n")
    assert (tmp_path / "docs" / "other.md").read_text() == "# no markers here\n"
    assert update["fill"]({"results-table": "| new table |"}, tmp_path) == []  # unchanged: nothing rewritten


def test_two_sections_in_one_file_are_both_filled(tmp_path):
    write_pages(tmp_path, section("schedule-verdict") + "\nbetween\n" + section("minima") + "\n")
    update["fill"]({"schedule-verdict": "verdict", "minima": "minima"}, tmp_path)
    assert (tmp_path / "README.md").read_text() == (
        section("schedule-verdict", "verdict") + "\nbetween\n" + section("minima", "minima") + "\n")


def test_a_section_found_in_no_file_is_an_error(tmp_path):
    write_pages(tmp_path, "# title\n", results="# results\n")
    with pytest.raises(MarkerError, match="no file has the <!-- minima:start --> ... <!-- minima:end --> markers"):
        update["locate"](("minima",), tmp_path)


def test_a_section_found_in_two_files_is_an_error_naming_both(tmp_path):
    write_pages(tmp_path, section("minima"), results=section("minima"))
    with pytest.raises(MarkerError, match="markers are in README.md and docs/results.md"):
        update["fill"]({"minima": "new"}, tmp_path)
    assert (tmp_path / "README.md").read_text() == section("minima")  # nothing written


def test_a_start_marker_without_its_end_is_an_error(tmp_path):
    start, end = update["markers"]("paper-epochs")
    write_pages(tmp_path, "# title\n", results=f"{start}\nno end\n")
    with pytest.raises(MarkerError, match="docs/results.md has 1 <!-- paper-epochs:start --> and 0"):
        update["locate"](("paper-epochs",), tmp_path)
    (tmp_path / "docs" / "results.md").write_text(f"{end}\n{start}\n")  # the wrong order
    with pytest.raises(MarkerError, match="in that order"):
        update["locate"](("paper-epochs",), tmp_path)


def test_the_repository_holds_every_generated_section_exactly_once():
    places = update["locate"](root=ROOT)
    assert set(places) == set(update["SECTIONS"])
    assert all(path.name == "README.md" or path.parent.name == "docs" for path in places.values())


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

"""quickstart.ipynb: stored clean, self-contained, and runs end to end as a fresh Colab runtime would.

The notebook is copied alone into an empty folder and executed there with nbclient, offline: it
reads torchvision-format raw files that tests/torchvision_fixture.py writes elsewhere, chosen with
the notebook's QSNN_DATA_DIR and QSNN_NOTEBOOK_FAST variables (the kernel inherits this process's
environment), and every HTTP(S) request goes to a closed local port, so a download would fail.
"""
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from torchvision_fixture import write_mnist_fixture

NOTEBOOK = ROOT / "quickstart.ipynb"
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens there


def qsnn_importable_outside_checkout(folder):
    """True if this interpreter imports qsnn in folder without PYTHONPATH (e.g. after `pip install -e .`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('qsnn') is None)"
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=env).returncode == 0


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def stream_text(cells):
    return "".join(o.get("text", "") for cell in cells for o in cell.outputs if o.output_type == "stream")


def test_notebook_is_stored_without_outputs():
    raw = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4 and raw["metadata"]["kernelspec"]["name"] == "python3"
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(nb)
    assert code_cells(nb)
    for cell in code_cells(nb):
        assert cell.outputs == [], f"stored outputs in cell:\n{cell.source[:200]}"
        assert cell.execution_count is None, f"stored execution count in cell:\n{cell.source[:200]}"


def test_notebook_needs_no_checkout_and_no_owner():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert "<OWNER>" not in text and "git clone" not in text and "REPO_URL" not in text
    assert "colab.research.google.com/github/" not in text  # a badge would need the repository's owner
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The package appears only in the last section's comparison, behind an importability check.
    uses_qsnn = [cell.source for cell in code_cells(nb) if "qsnn" in cell.source]
    assert len(uses_qsnn) == 1 and 'find_spec("qsnn") is None' in uses_qsnn[0]
    assert "%pip install" in code_cells(nb)[0].source


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed alone in an empty folder on fixture data, offline; (notebook, folder)."""
    tmp = tmp_path_factory.mktemp("notebook")
    data_dir = write_mnist_fixture(tmp / "data", "FashionMNIST", n_train=256, n_test=128)
    workdir = tmp / "content"  # what Colab's /content holds after uploading the notebook
    workdir.mkdir()
    (workdir / NOTEBOOK.name).write_bytes(NOTEBOOK.read_bytes())
    env = {"QSNN_DATA_DIR": str(data_dir), "QSNN_NOTEBOOK_FAST": "1", "MPLCONFIGDIR": str(tmp / "mpl"),
           "OMP_NUM_THREADS": "1", "http_proxy": CLOSED_PORT, "https_proxy": CLOSED_PORT,
           "HTTP_PROXY": CLOSED_PORT, "HTTPS_PROXY": CLOSED_PORT, "PIP_NO_INDEX": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("MPLBACKEND", raising=False)  # a non-inline backend would show no image
        mp.delenv("PYTHONPATH", raising=False)  # as on Colab: no qsnn package importable
        nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
        # kernel_name="python3": jupyter_client starts it with this interpreter (sys.executable).
        client = NotebookClient(nb, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}})
        # Then, in the same kernel, as inside a checkout: the last section's package comparison again.
        in_checkout = [nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(ROOT)!r})"),
                       nbformat.v4.new_code_cell(code_cells(nb)[-1].source)]
        cells = len(nb.cells)
        nb.cells += in_checkout  # nbclient stores each executed cell back at its index
        client.reset_execution_trackers()
        with client.setup_kernel():
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except CellExecutionError as e:
                pytest.fail(f"a notebook cell failed:\n{e}")
        del nb.cells[cells:]
    return nb, in_checkout[1], workdir


def test_notebook_runs_offline_in_an_empty_folder(executed):
    nb, _, workdir = executed
    cells = code_cells(nb)
    for cell in cells:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:200]
    text = stream_text(cells)
    assert "all requirements present: nothing to install" in text
    assert "train: 256 images in 8 batches | test: 128 images" in text
    epochs = re.findall(r"epoch (\d): train loss ([\d.]+) \| test accuracy ([\d.]+)%", text)
    assert [e[0] for e in epochs] == ["1", "2"]
    assert all(0 <= float(acc) <= 100 for _, _, acc in epochs)
    plot_cell = next(cell for cell in cells if "ax_lr.plot(iters, lrs" in cell.source)
    assert any("image/png" in o.get("data", {}) for o in plot_cell.outputs), "the loss/LR plot was not shown"
    last = stream_text([cells[-1]])
    if qsnn_importable_outside_checkout(workdir):  # installed (pip install [-e] .): it compares
        assert "qsnn reference execution" in last and "nothing to compare" not in last
    else:  # as on Colab: no qsnn without the checkout
        assert "nothing to compare" in last
    assert sorted(p.name for p in workdir.iterdir()) == [NOTEBOOK.name]  # wrote nothing next to the notebook


def test_package_executions_match_the_notebook_network(executed):
    _, compare, _ = executed
    text = stream_text([compare])
    reference = text.split("qsnn reference execution")[1].split("qsnn fast execution")[0]
    fast = text.split("qsnn fast execution")[1]
    rows = re.findall(r"(\w+)\s+differing spikes (\d+) of (\d+) \((\d+) spikes here\), max membrane difference (\S+?),?"
                      r"(?: differing predictions (\d+))?\n", reference)
    assert [row[0] for row in rows] == ["conv1", "conv2", "output"]
    # The package's reference execution is the notebook's computation, operation for operation.
    assert all(row[1] == "0" and float(row[4]) == 0.0 for row in rows), reference
    assert int(rows[0][3]) > 0  # the first layer fires, so the comparison means something
    fast_rows = re.findall(r"differing spikes (\d+) of (\d+)", fast)
    assert len(fast_rows) == 3
    # The fast execution differs at most by float rounding: a few flipped spikes at the threshold.
    assert sum(int(d) for d, _ in fast_rows) <= 0.001 * sum(int(n) for _, n in fast_rows), fast

"""quickstart.ipynb: stored clean, and runs end to end on a tiny fake FashionMNIST.

The notebook is executed with nbclient in the repository root, reading torchvision-format raw
files that tests/torchvision_fixture.py writes to tmp_path, with a tiny setting chosen through the
notebook's QSNN_NB_* environment variables (the kernel subprocess inherits this process's environment).
"""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from torchvision_fixture import write_mnist_fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "quickstart.ipynb"
PLOT_NAME = "quickstart_loss_lr.png"


def test_notebook_is_stored_without_outputs():
    raw = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [], f"stored outputs in cell:\n{cell.source[:200]}"
        assert cell.execution_count is None, f"stored execution count in cell:\n{cell.source[:200]}"


def test_notebook_has_colab_badge_and_setup():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first_markdown = next(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "https://colab.research.google.com/assets/colab-badge.svg" in first_markdown
    assert "https://colab.research.google.com/github/" in first_markdown
    assert "/blob/main/quickstart.ipynb" in first_markdown
    first_code = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'REPO_URL = "https://github.com/' in first_code and "# <- set to your fork" in first_code
    assert '"google.colab" in sys.modules' in first_code


def test_notebook_runs_on_tiny_data(tmp_path, monkeypatch):
    data_dir = write_mnist_fixture(tmp_path / "data", "FashionMNIST", n_train=256, n_test=128)
    out_dir = tmp_path / "out"
    settings = {"QSNN_NB_DATA_DIR": str(data_dir), "QSNN_NB_DOWNLOAD": "0", "QSNN_NB_TRAIN_SAMPLES": "256",
                "QSNN_NB_TEST_SAMPLES": "128", "QSNN_NB_EPOCHS": "2", "QSNN_NB_NUM_STEPS": "8",
                "QSNN_NB_BATCH_SIZE": "32", "QSNN_NB_OUT": str(out_dir)}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # a non-inline backend would show no image
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mplconfig"))
    # One torch thread: on a busy shared CPU, OpenMP threads that outnumber the free cores spin and
    # make this tiny run many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel_name="python3": jupyter_client starts it with this interpreter (sys.executable).
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"a notebook cell failed:\n{e}")

    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code_cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"error output in cell:\n{cell.source[:200]}"
    plot_cells = [cell for cell in code_cells if PLOT_NAME in cell.source]
    assert len(plot_cells) == 1
    assert any("image/png" in o.get("data", {}) for o in plot_cells[0].outputs), "the loss/LR plot was not shown"
    png = out_dir / PLOT_NAME
    assert png.is_file() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "".join(o.get("text", "") for cell in code_cells for o in cell.outputs if o.output_type == "stream")
    assert "test accuracy" in text

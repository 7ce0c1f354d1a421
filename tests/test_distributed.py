"""torchrun with 2 CPU processes (gloo) trains like one process on the same global batch."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, as_argv

EXP = "mnist_4bit_cosine"


def losses(folder):
    with open(folder / f"loss_{EXP}_t0.csv", newline="") as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


def test_two_process_ddp_matches_one_process(mnist_dir, tmp_path):
    overrides = dict(data_dir=mnist_dir, num_steps=6, batch_size=40, test_batch_size=60, epochs=2,
                     patience=10, num_trials=1, t_max=12, lr=1e-2, device="cpu", dropout=0.0,
                     batch_norm=False, threshold=0.5)  # without BatchNorm a lower threshold lets it spike
    single = [sys.executable, str(ROOT / "mnist" / "run.py"),
              *as_argv({**overrides, "output_dir": tmp_path / "single"})]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "mnist" / "run.py"), *as_argv({**overrides, "output_dir": tmp_path / "ddp"})]
    for command in (single, ddp):
        result = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "single" / EXP), losses(tmp_path / "ddp" / EXP)
    assert len(one) == len(two) == 12
    # Same weights and data; averaging two half-batch gradients differs from one full-batch
    # gradient only by float rounding (seen: under 1e-7 relative on this fixture).
    assert two[0] == pytest.approx(one[0], rel=1e-6)
    assert np.allclose(two, one, rtol=1e-4, atol=1e-6)
    assert "2 process(es)" in result.stdout
    files = sorted(p.name for p in (tmp_path / "ddp" / EXP).iterdir())
    assert files == sorted(p.name for p in (tmp_path / "single" / EXP).iterdir())


def test_two_processes_with_batch_norm_dropout_short_batches_and_resume(mnist_dir, tmp_path):
    import json

    import torch

    from qsnn.data.loaders import make_loaders
    from qsnn.core.models import build_model
    from qsnn.core.loop import evaluate

    overrides = dict(data_dir=mnist_dir, num_steps=6, batch_size=39, test_batch_size=50, epochs=1,
                     patience=10, num_trials=1, t_max=12, lr=1e-2, device="cpu", dropout=0.3,
                     batch_norm=True, output_dir=tmp_path)  # 240 = 6 x 39 + 6: odd, and a short last batch
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "mnist" / "run.py"), *as_argv(overrides)]
    for extra in ([], ["--epochs", "2", "--resume"]):
        result = subprocess.run(ddp + extra, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / EXP
    status = json.loads((folder / "status.json").read_text())["trials"]["0"]
    assert status["state"] == "finished" and status["epochs_completed"] == 2
    assert "trial 0: resuming after epoch 1" in result.stdout
    assert len(losses(folder)) == 2 * 7  # six full batches and the short one, split evenly, per epoch
    # Every rank evaluated the model that was saved (rank 0's BatchNorm statistics).
    best = torch.load(folder / f"{EXP}_t0.pt", weights_only=True)
    model = build_model(best["config"])
    model.load_state_dict(best["model"])
    loaders = make_loaders(best["config"], torch.device("cpu"), torch.Generator())
    assert evaluate(model, loaders["test"], 6, torch.device("cpu")) == best["test_acc"]

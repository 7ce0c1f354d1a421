"""The landscape analysis (qsnn.analysis.landscape, landscape.py) on a tiny digits run with snapshots."""
import csv
import runpy
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from qsnn.analysis import landscape as ls
from qsnn.errors import UserError
from qsnn.analysis.landscape_plane import flatten, pca_directions, project, random_directions, unflatten
from qsnn.core.models import build_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-epoch digits run (3 iterations an epoch, T=4) with snapshots: troughs at epochs 1 and 3, a peak at 2."""
    from qsnn.runs.experiment import run_experiment

    module = runpy.run_path(str(ROOT / "mnist" / "run.py"))
    cfg = {**module["config"], **module["demo"], "num_steps": 4, "epochs": 3, "batch_size": 512, "t_max": 3,
           "snapshots": "epoch", "exp_name": "ls", "device": "cpu",
           "output_dir": str(tmp_path_factory.mktemp("runs"))}
    run_experiment(cfg)
    return Path(cfg["output_dir"]) / "ls"


@pytest.fixture(scope="module")
def snaps(run_dir):
    return ls.read_run(run_dir)


@pytest.fixture(scope="module")
def probe(snaps):
    return ls.Probe(snaps[-1].config, "cpu", train_images=120, bn_images=600, test_images=60)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_run_has_the_expected_snapshots_and_pairs(snaps):
    assert [(s.epoch, s.kind) for s in snaps] == [(0, "start"), (1, "trough"), (2, "peak"), (3, "trough")]
    assert [p.name for p in ls.select_pairs(snaps, "troughs")] == ["e1-e3"]
    assert [p.name for p in ls.select_pairs(snaps, "trough-peak")] == ["e1-e2"]
    assert [p.name for p in ls.select_pairs(snaps, "consecutive")] == ["e0-e1", "e1-e2", "e2-e3"]
    assert [p.name for p in ls.select_pairs(snaps, "epochs:0,2,3")] == ["e0-e2", "e2-e3"]
    with pytest.raises(UserError, match="finds no pair"):
        ls.select_pairs(snaps, "peaks")  # a single peak
    with pytest.raises(UserError, match="no snapshot at epoch 7"):
        ls.select_pairs(snaps, "epochs:1,7")


def test_a_snapshot_against_itself_is_flat_with_a_zero_barrier(probe, snaps):
    pair = ls.Pair("seeds", snaps[-1], snaps[-1])
    curve = ls.interpolation_curve(probe, pair, [0, 0.3, 0.55, 1])
    assert len({(r["train_loss"], r["train_acc"], r["test_acc"]) for r in curve}) == 1
    summary = ls.pair_summary(probe, pair, curve)
    assert summary["barrier"] == 0.0 and summary["distance"] == 0.0 and summary["code_flips"] == 0.0


def test_the_interpolation_ends_are_the_snapshots_own_losses(probe, snaps):
    a, b = snaps[1], snaps[3]
    curve = ls.interpolation_curve(probe, ls.Pair("troughs", a, b), [0.0, 0.5, 1.0])
    assert {k: curve[0][k] for k in ("train_loss", "train_acc", "test_acc")} == probe.measure(a.state)
    assert {k: curve[-1][k] for k in ("train_loss", "train_acc", "test_acc")} == probe.measure(b.state)
    assert curve[0]["train_loss"] != curve[-1]["train_loss"]


def test_the_barrier_is_the_largest_excess_over_the_straight_line():
    assert ls.barrier([0, 0.25, 0.5, 0.75, 1], [1.0, 1.5, 2.5, 2.0, 3.0]) == (0.5, 0.5)
    assert ls.barrier([0, 0.5, 1], [1.0, 0.5, 3.0]) == (0.0, 0.0)  # below the line: no barrier


def test_batch_norm_recomputation_is_the_average_over_batches_and_time_steps(probe, snaps):
    state, batches, steps = snaps[2].state, probe.bn_batches, probe.train_steps
    assert len(batches) == 2 and len(batches[1][1]) == 600 - 512
    probe.prepare(state)
    mine = [(b.bn.running_mean.clone(), b.bn.running_var.clone(), int(b.bn.num_batches_tracked))
            for b in probe.model.blocks]
    assert [m[2] for m in mine] == [2 * steps] * 2  # every (batch, step) is one BatchNorm call

    # By hand, layer 1: its input is the same at every step, so the average is over the batches' statistics.
    block = probe.model.blocks[0]
    stats = [torch.var_mean(block.pool(block.conv(x)), dim=(0, 2, 3), unbiased=True) for x, _ in batches]
    torch.testing.assert_close(mine[0][0], sum(m for _, m in stats) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine[0][1], sum(v for v, _ in stats) / 2, rtol=1e-5, atol=1e-6)

    # Every layer: PyTorch's own cumulative average (momentum=None) over the reference execution's T calls a batch.
    reference = build_model({**snaps[2].config, "execution": "reference"})
    reference.load_state_dict(state)
    reference.train()
    reference.head.dropout.eval()
    for b in reference.blocks:
        b.bn.reset_running_stats()
        b.bn.momentum = None
    with torch.no_grad():
        for x, _ in batches:
            reference(x, num_steps=steps)
    for (mean, var, _), b in zip(mine, reference.blocks):
        torch.testing.assert_close(mean, b.bn.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, b.bn.running_var, rtol=1e-4, atol=1e-5)


def test_code_flips_count_changed_integer_codes(probe, snaps):
    state = snaps[-1].state
    same = ls.quantized_weights(probe.model, state, True)
    assert ls.code_flips(same, ls.quantized_weights(probe.model, dict(state), True))["total"] == 0.0

    # Move one small fc weight by one quantization step: its code changes, the per-tensor scale does not.
    layer = probe.model.head.fc
    scale = float(layer.quant_weight().scale.detach())
    weight = state["head.fc.weight"].clone()
    index = int(weight.abs().argmin())
    weight.view(-1)[index] += scale
    moved = ls.quantized_weights(probe.model, {**state, "head.fc.weight": weight}, True)
    flips = ls.code_flips(same, moved)
    total = sum(codes.size for _, codes in same.values())
    assert flips["total"] == 1 / total and flips["fc"] == 1 / weight.numel()
    assert flips["conv1"] == flips["conv2"] == 0.0


def test_pca_projection_reproduces_the_coordinates_of_a_planar_trajectory():
    generator = torch.Generator().manual_seed(0)
    origin = torch.randn(50, generator=generator, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(50, 2, generator=generator, dtype=torch.float64))[0].T  # orthonormal
    coords = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    coords[-1] = 0  # the last point is the centre
    vectors = origin + coords @ basis
    directions, explained = pca_directions(vectors, origin)
    found, outside = project(vectors, origin, directions)
    torch.testing.assert_close(origin + found @ directions, vectors)  # the plane holds every point
    torch.testing.assert_close(torch.cdist(found, found), torch.cdist(coords, coords))  # up to a rotation
    assert max(outside) < 1e-10 and sum(explained) == pytest.approx(1.0)


def test_pca_coordinates_of_real_snapshots_are_their_dot_products(probe, snaps):
    names = ls.float_parameter_names(snaps[-1].state, probe.model)
    vectors = torch.stack([flatten(s.state, names) for s in snaps])
    directions, _ = pca_directions(vectors, vectors[-1])
    coords, outside = project(vectors, vectors[-1], directions)
    torch.testing.assert_close(coords, (vectors - vectors[-1]) @ directions.T)
    assert coords[-1].abs().max() == 0 and outside[-1] == 0
    assert (coords[0] >= 0).all()  # oriented: the start on the positive side


def test_random_directions_are_filter_normalised(probe, snaps):
    state = snaps[-1].state
    names = ls.float_parameter_names(state, probe.model)
    directions = random_directions(state, probe.model, torch.Generator().manual_seed(0))
    first = ls.interpolate_state(state, state, [], 0)  # a copy to unflatten into
    for d in directions:
        parts = unflatten(d, first, names)
        for name in names:
            if state[name].dim() > 1:  # each output filter has the norm of the weight's filter
                torch.testing.assert_close(parts[name].flatten(1).norm(dim=1), state[name].flatten(1).norm(dim=1))
            else:  # BatchNorm's weight and bias stay where they are
                assert parts[name].abs().max() == 0


def test_the_command_line_writes_every_csv_and_figure(run_dir, tmp_path, capsys):
    landscape = runpy.run_path(str(ROOT / "landscape.py"))["main"]
    out = tmp_path / "out"
    small = ["--train_images", "32", "--bn_images", "512", "--out", str(out)]
    assert landscape(["interpolate", str(run_dir), "--pairs", "troughs", "--other", str(run_dir), "--points", "3",
                      "--test_images", "40", *small]) == 0
    summary = read_csv(out / "interpolation_summary.csv")
    assert [(r["pair"], r["kind"]) for r in summary] == [("e1-e3", "troughs"), ("ls:e3-ls:e3", "seeds")]
    assert float(summary[1]["barrier"]) == 0.0 and float(summary[0]["distance"]) > 0
    curve = read_csv(out / "interp_e1-e3.csv")
    assert list(curve[0]) == ["alpha", "train_loss", "train_acc", "test_acc"] and len(curve) == 3
    assert float(curve[0]["train_loss"]) == float(summary[0]["loss_a"])

    assert landscape(["distances", str(run_dir), "--out", str(out)]) == 0
    rows = read_csv(out / "distances.csv")
    assert [r["relation"] for r in rows] == ["consecutive"] * 3 + ["to_final"] * 3
    assert all(0 <= float(r["code_flips"]) <= 1 for r in rows)

    assert landscape(["plane", str(run_dir), "--grid", "3", *small]) == 0
    assert len(read_csv(out / "plane_pca.csv")) == 9 and len(read_csv(out / "plane_pca_trajectory.csv")) == 4
    for stem in ("interpolation", "distances", "plane_pca"):
        assert (out / f"{stem}.png").stat().st_size > 10_000 and (out / f"{stem}.pdf").is_file()
    assert not list(out.glob(".*"))  # no temporary file left

    capsys.readouterr()
    assert landscape(["interpolate", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

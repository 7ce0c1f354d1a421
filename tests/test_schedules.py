"""Each scheduler's learning rate at known iterations (stepped once per iteration)."""
import math

import pytest
import torch

from qsnn.schedules import build_scheduler

BASE = {"lr": 1e-2, "t_max": 10, "eta_min": 0.0, "t_0": 10, "t_mult": 2, "base_lr": 1e-3,
        "step_size_up": 5, "step_size": 4, "gamma": 0.5}


def lr_curve(name, iterations, **overrides):
    """The LR used at iterations 0..iterations-1."""
    cfg = {**BASE, "scheduler": name, **overrides}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg["lr"])
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_is_periodic_the_papers_boost():
    lrs = lr_curve("cosine", 41)
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[5] == pytest.approx(0.5e-2)  # halfway down: (1 + cos(pi/2)) / 2
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)  # eta_min at T_max
    assert lrs[15] == pytest.approx(0.5e-2)  # rising again
    assert lrs[20] == pytest.approx(1e-2)  # back to lr at 2 * T_max
    assert lrs[30] == pytest.approx(0.0, abs=1e-12) and lrs[40] == pytest.approx(1e-2)


def test_cosine_with_eta_min():
    lrs = lr_curve("cosine", 21, eta_min=1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[20] == pytest.approx(1e-2)


def test_cosine_restarts_jump_back_with_growing_periods():
    lrs = lr_curve("cosine_restarts", 31)
    assert lrs[5] == pytest.approx(0.5e-2)
    assert lrs[10] == pytest.approx(1e-2)  # restart after t_0
    assert lrs[20] == pytest.approx(0.5e-2)  # the second period lasts 2 * t_0
    assert lrs[30] == pytest.approx(1e-2)


def test_cyclic_triangle_between_base_and_max():
    lrs = lr_curve("cyclic", 21)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-2)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(1e-3 + 2 / 5 * 9e-3)
    assert lrs[15] == pytest.approx(1e-2) and lrs[20] == pytest.approx(1e-3)


def test_step_and_constant():
    lrs = lr_curve("step", 9)
    assert lrs[:4] == [pytest.approx(1e-2)] * 4
    assert lrs[4] == pytest.approx(5e-3) and lrs[8] == pytest.approx(2.5e-3)
    assert lr_curve("constant", 50) == [pytest.approx(1e-2)] * 50


def test_cosine_closed_form_over_many_periods():
    lrs = lr_curve("cosine", 200)
    for t in (3, 57, 123, 199):
        expected = 1e-2 * (1 + math.cos(math.pi * t / 10)) / 2
        assert lrs[t] == pytest.approx(expected, abs=1e-9)

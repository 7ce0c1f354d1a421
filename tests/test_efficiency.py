"""Efficiency figures: border fan-out, rates and SynOps on hand-made spikes, weight memory, the eff CSV."""
import csv

import pytest
import torch
import torch.nn.functional as F

from qsnn.runs import runlog
from qsnn.core.efficiency import COLUMNS, EfficiencyMeter, conv_fan_out, weight_memory_kib
from qsnn.runs.experiment import run_experiment
from qsnn.core.models import QSNN, fold_avg_pool
from qsnn.core.loop import evaluate

# kernel 3 -> folded 4x4 taps at stride 2: 16x16 input -> 2x7x7 -> 3x2x2 -> 4 classes
TINY = dict(in_channels=1, channels=(2, 3), input_size=16, num_classes=4, kernel_size=3)


def tiny_net(**kw):
    return QSNN(**{**TINY, "num_bits": 4, **kw})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fan_out_of_a_folded_conv_counted_by_hand():
    # 4-wide windows at stride 2 over 9 pixels: windows [0..3], [2..5], [4..7]; pixel 8 is in none.
    per_axis = torch.tensor([1, 1, 2, 2, 2, 2, 1, 1, 0], dtype=torch.float64)
    conv = torch.nn.Conv2d(1, 5, 3)
    fan_out = conv_fan_out(conv, (9, 9), (3, 3))
    assert torch.equal(fan_out, 5 * per_axis[:, None] * per_axis[None, :])


def test_fan_out_equals_the_outputs_a_single_spike_reaches():
    # MNIST's conv2 (5x5 -> 6x6 folded, 12x12 -> 4x4): one spike at a time through all-ones weights.
    conv = torch.nn.Conv2d(16, 64, 5)
    fan_out = conv_fan_out(conv, (12, 12), (4, 4))
    kernel = fold_avg_pool(torch.ones(1, 1, 5, 5))
    for h in range(12):
        for w in range(12):
            spike = torch.zeros(1, 1, 12, 12)
            spike[0, 0, h, w] = 1
            reached = (F.conv2d(spike, kernel, stride=2) != 0).sum().item()
            assert fan_out[h, w] == 64 * reached
    assert fan_out[5, 5] == 64 * 9 and fan_out[0, 0] == 64 and fan_out[0, 5] == 64 * 3


def hand_made_layers():
    """Spikes of T=2 steps for 2 samples of the tiny net, and the spikes' hand-counted fan-outs."""
    conv1, conv2, fc = torch.zeros(2, 2, 2, 7, 7), torch.zeros(2, 2, 3, 2, 2), torch.zeros(2, 2, 4)
    # conv2 sees 7x7 through windows [0..3], [2..5] per axis: per-pixel coverage 1 1 2 2 1 1 0.
    conv1[0, 0, 0, 0, 0] = 1  # 1 x 1 windows x 3 channels = 3
    conv1[1, 1, 1, 3, 2] = 1  # 2 x 2 x 3 = 12
    conv1[0, 1, 0, 6, 6] = 1  # last row and column: no window, 0
    conv1[1, 0, 1, 4, 5] = 1  # 1 x 1 x 3 = 3
    conv2[0, 0, 0, 0, 0] = conv2[1, 0, 2, 1, 1] = conv2[0, 1, 1, 0, 1] = conv2[1, 1, 1, 0, 1] = 1
    conv2[0, 1, 2, 1, 0] = 1  # 5 spikes, each reaching the 4 classes
    fc[0, 0, 1] = fc[1, 0, 1] = fc[1, 1, 3] = 1
    return [(conv1, conv1), (conv2, conv2), (fc, fc)]


def test_rates_and_synops_of_hand_made_spikes():
    meter = EfficiencyMeter(tiny_net())
    layers = hand_made_layers()
    for b in (0, 1):  # two batches of one sample each: counts accumulate
        meter.add(torch.zeros(1, 1, 16, 16), [(spk[:, b:b + 1], mem[:, b:b + 1]) for spk, mem in layers])
    meter.sum_over_ranks(torch.device("cpu"))
    row = dict(zip(COLUMNS[1:], meter.row()))
    assert row["rate_conv1"] == 4 / (2 * 2 * 98)  # spikes / (samples x steps x neurons)
    assert row["rate_conv2"] == 5 / (2 * 2 * 12) and row["rate_fc"] == 3 / (2 * 2 * 4)
    assert row["synops_conv2"] == (3 + 12 + 0 + 3) / 2  # per sample
    assert row["synops_fc"] == 5 * 4 / 2 and row["synops"] == 9 + 10
    assert row["input_macs"] == 98 * 1 * 16  # static image: one dense folded conv per sample


def test_event_input_macs_count_each_nonzero_entry_and_its_reach():
    net = tiny_net(in_channels=2, batch_norm=False)
    events = torch.zeros(2, 1, 2, 16, 16)  # [T, B, C, H, W]; windows [2o, 2o+3] for o = 0..6
    events[0, 0, 0, 0, 0] = 3  # a count of 3 is one multiply: 1 x 1 windows x 2 channels = 2
    events[1, 0, 1, 5, 14] = 1  # rows 4..5 -> 2 windows, column 14 -> 1: 2 x 1 x 2 = 4
    meter = EfficiencyMeter(net)
    meter.add(events, net(events, record=True))
    meter.sum_over_ranks(torch.device("cpu"))
    assert dict(zip(COLUMNS[1:], meter.row()))["input_macs"] == 6


@pytest.mark.parametrize("num_bits, batch_norm, bits", [
    (4, True, 120 * 4 + 10 * 32),  # 18 + 54 + 48 weights; BatchNorm 2 x (2 + 3) values at 32 bits
    (1, True, 120 * 1 + 10 * 32),
    (None, True, 120 * 32 + 10 * 32),
    (8, False, 120 * 8),
])
def test_weight_memory_by_hand(num_bits, batch_norm, bits):
    kib, kib_fp32 = weight_memory_kib(tiny_net(num_bits=num_bits, batch_norm=batch_norm))
    assert kib == bits / 8 / 1024
    assert kib_fp32 == (120 * 32 + (10 * 32 if batch_norm else 0)) / 8 / 1024


def test_evaluate_counts_the_spikes_of_its_own_pass():
    torch.manual_seed(0)
    net = tiny_net(threshold=0.1, batch_norm=False)
    loader = [(torch.rand(3, 1, 16, 16) * 4, torch.tensor([0, 1, 2])),
              (torch.rand(2, 1, 16, 16) * 4, torch.tensor([3, 0]))]
    meter = EfficiencyMeter(net)
    accuracy = evaluate(net, loader, 5, torch.device("cpu"), meter)
    assert accuracy == evaluate(net, loader, 5, torch.device("cpu"))
    with torch.no_grad():
        passes = [net(x, num_steps=5, record=True) for x, _ in loader]
    row = dict(zip(COLUMNS[1:], meter.row()))
    for i, name in enumerate(("rate_conv1", "rate_conv2", "rate_fc")):
        spikes = torch.cat([layers[i][0] for layers in passes], dim=1)
        assert spikes.sum() > 0 and row[name] == pytest.approx(spikes.double().mean().item(), rel=1e-12)
    fc_inputs = sum(layers[1][0].sum().item() for layers in passes)
    assert row["synops_fc"] == pytest.approx(fc_inputs * 4 / 5, rel=1e-12)


def test_training_writes_one_eff_row_per_epoch(tiny_config):
    run_experiment(tiny_config)
    folder = runlog.run_folder(tiny_config)
    rows = read_csv(folder / "eff_mnist_4bit_cosine_t0.csv")
    assert tuple(rows[0]) == COLUMNS == ("epoch", "rate_conv1", "rate_conv2", "rate_fc", "synops",
                                         "synops_conv2", "synops_fc", "input_macs", "weight_kib",
                                         "weight_kib_fp32")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in read_csv(folder / "acc_mnist_4bit_cosine_t0.csv")]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        values = {k: float(v) for k, v in r.items()}
        assert all(0 <= values[f"rate_{layer}"] <= 1 for layer in ("conv1", "conv2", "fc"))
        assert values["synops"] == values["synops_conv2"] + values["synops_fc"] > 0
        assert values["input_macs"] == 16 * 12 * 12 * 36  # one dense folded 6x6 conv per image
        # 4-bit: (400 + 25600 + 10240) weights x 4 bits + BatchNorm 2 x (16 + 64) x 32 bits
        assert values["weight_kib"] == (36240 * 4 + 160 * 32) / 8192 == 18.3203125
        assert values["weight_kib_fp32"] == (36240 * 32 + 160 * 32) / 8192 == 142.1875


def test_resumed_trial_keeps_the_eff_log_consistent(tiny_config):
    run_experiment({**tiny_config, "exp_name": "whole"})
    partial = {**tiny_config, "exp_name": "resumed", "epochs": 2}
    run_experiment(partial)
    folder = runlog.run_folder(partial)
    runlog.update_status(folder, 0, state="interrupted")  # as if stopped after epoch 2
    run_experiment({**partial, "epochs": 3}, resume=True)
    resumed = read_csv(folder / "eff_resumed_t0.csv")
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    assert resumed == read_csv(folder.parent / "whole" / "eff_whole_t0.csv")  # on CPU: identical counts

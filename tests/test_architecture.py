"""Architecture as config: conv channels, kernel sizes, padding, pooling and weight bits per layer.

The keys parse from the command line and JSON, validation refuses a network whose maps shrink to nothing
before any run folder exists, old configs build today's network, and every figure that depends on the
layers (SynOps, weight memory, the memory estimate, the eff CSV, evaluate.py's report, the results table,
the integer export) follows a 3-conv network's real layers. The fast execution against the reference
for such networks: tests/test_models.py.
"""
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
from qsnn.analysis import results
from qsnn.core.efficiency import EfficiencyMeter, columns, conv_fan_out, weight_memory_kib
from qsnn.core.geometry import geometry_problem, map_sizes
from qsnn.core.models import QSNN, build_model, fold_avg_pool
from qsnn.deploy import bundle_files, convert, runtime
from qsnn.errors import UserError
from qsnn.runs import runlog, schema
from qsnn.runs.config import parse_args, precision_name, validate
from qsnn.runs.memory import neurons_per_step
from test_deploy import assert_integer_layers_equal  # the integer network equals the float64 one, layer by layer

ROOT = Path(__file__).resolve().parents[1]
MNIST = runpy.run_path(str(ROOT / "mnist" / "run.py"))
# 28x28 -> conv 5 / pool 2: 12 -> conv 3 pad 1 / pool 1: 12 -> conv 3 pad 1 / pool 4: 3 (x 8 channels = 72 into fc)
THREE_CONV = dict(channels=(4, 6, 8), kernel_size=[5, 3, 3], padding=[0, 1, 1], pool=[2, 1, 4])


@pytest.fixture
def defaults(tmp_path):
    return {**MNIST["config"], "output_dir": str(tmp_path / "runs"), "device": "cpu"}


# ---------------------------------------------------------------- config keys


def test_lists_from_the_command_line_and_from_json(defaults, tmp_path):
    argv = ["--conv_channels", "16,32,64", "--kernel_size", "5,3,3", "--padding=0,1,1", "--pool", "2,2,1",
            "--num_bits", "8,4,4,4"]
    cfg, _ = parse_args(defaults, argv)
    assert (cfg["conv_channels"], cfg["kernel_size"], cfg["padding"], cfg["pool"], cfg["num_bits"]) == (
        [16, 32, 64], [5, 3, 3], [0, 1, 1], [2, 2, 1], [8, 4, 4, 4])
    validate(cfg)
    assert runlog.experiment_name(cfg) == "mnist_8-4-4-4bit_cosine"
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"conv_channels": [8, 8], "kernel_size": 3, "pool": [2, 1], "num_bits": None}))
    cfg, _ = parse_args(defaults, ["--config", str(path), "--padding", "1"])
    assert (cfg["conv_channels"], cfg["kernel_size"], cfg["padding"], cfg["pool"], cfg["num_bits"]) == (
        [8, 8], 3, 1, [2, 1], None)
    validate(cfg)
    single, _ = parse_args(defaults, ["--conv_channels", "32"])  # one conv layer: a list of one
    assert single["conv_channels"] == [32] and build_model(single).head.fc.in_features == 32 * 12 * 12


def test_precision_names_of_per_layer_bits():
    assert [precision_name(b) for b in (None, 4, [8, 4, 4], [1, 2, 3, 16])] == ["fp32", "4bit", "8-4-4bit",
                                                                               "1-2-3-16bit"]
    assert results.precision_label({"config": {"num_bits": [8, 4, 4]}}) == "8-4-4bit"


@pytest.mark.parametrize("argv, message", [
    (["--kernel_size", "3,3,3"], "--kernel_size has 3 values but the network has 2 conv layers (conv_channels None: "
                                 "mnist's 16, 64); give one value or 2"),
    (["--conv_channels", "8,8", "--padding", "1,1,1"], "--padding has 3 values but conv_channels has 2 layers; "
                                                       "give one value or 2"),
    (["--conv_channels", "4,4,4", "--pool", "1,2"], "--pool has 2 values but conv_channels has 3 layers"),
    (["--num_bits", "8,4"], "--num_bits has 2 values but the network has 3 weight layers (2 conv layers, then the "
                            "head); give one value or 3"),
    (["--num_bits", "8,none,4"], "--num_bits expects int or a list of ints, one per layer (e.g. 8,4,4,4) or None"),
    (["--num_bits", "8,4,17"], "--num_bits [8, 4, 17] is not allowed; must be None (full precision) or 1..16"),
    (["--kernel_size", "5,0"], "--kernel_size [5, 0] is not allowed; must be > 0"),
    (["--padding", "-1"], "--padding -1 is not allowed; must be >= 0"),
    (["--pool", "0"], "--pool 0 is not allowed; must be > 0 (1 = no pooling)"),
    (["--conv_channels", "[]"], "--conv_channels expects a list of ints, one per conv layer (e.g. 16,32,64) or None"),
    (["--conv_channels", "16,true"], "--conv_channels expects a list of ints"),
    (["--kernel_size", "2.5,3"], "--kernel_size expects int or a list of ints"),
])
def test_each_bad_architecture_is_one_line(defaults, argv, message):
    with pytest.raises(UserError) as err:
        cfg, _ = parse_args(defaults, argv)
        validate(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


# ---------------------------------------------------------------- geometry


def test_map_sizes_by_hand():
    # (side + 2p - k + 1) // s: 28 -> 24 // 2 = 12 -> 12 // 1 = 12 -> 12 // 4 = 3
    assert map_sizes(28, [(4, 5, 0, 2), (6, 3, 1, 1), (8, 3, 1, 4)]) == [(24, 12), (12, 12), (12, 3)]
    assert map_sizes(32, [(16, 5, 0, 2), (32, 5, 0, 2)]) == [(28, 14), (10, 5)]  # DVS128 Gesture: 32 x 5 x 5
    assert map_sizes(7, [(1, 3, 0, 2), (1, 3, 0, 2)]) == [(5, 2), (0, 0)]  # floor like AvgPool2d, then nothing
    assert geometry_problem(28, [(4, 5, 0, 2), (6, 5, 0, 2), (8, 3, 1, 2)]) is None  # 12 -> 4 -> 4 // 2 = 2
    assert geometry_problem(28, [(4, 5, 0, 2), (6, 5, 0, 2), (8, 5, 0, 2)]) == (
        "conv3 gets a 4x4 map, which its 5x5 kernel with padding 0 shrinks to nothing (3 conv layers on a 28x28 "
        "input); use fewer conv layers, a smaller kernel_size or pool, or more padding")
    assert geometry_problem(28, [(4, 5, 0, 2), (6, 3, 0, 8)]) is None  # 10 // 8 = 1: a 1x1 map fits
    assert geometry_problem(28, [(4, 5, 0, 2), (6, 3, 0, 11)]).startswith(
        "conv2 gets a 12x12 map, its 10x10 conv output is smaller than its 11x11 pool (2 conv layers")


def test_too_deep_network_stops_before_any_folder_is_made(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "mnist" / "run.py"), "--demo", "--conv_channels", "8,8,8",
                           "--output_dir", str(out), "--device", "cpu"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: the network does not fit digits inputs: conv3 gets a 4x4 map, which its 5x5 kernel with "
        "padding 0 shrinks to nothing (3 conv layers on a 28x28 input); use fewer conv layers, a smaller "
        "kernel_size or pool, or more padding"]
    assert not out.exists() or not any(out.iterdir())  # no run folder, no lock file


def test_the_network_refuses_what_validation_refuses():
    with pytest.raises(UserError, match="conv3 gets a 4x4 map"):
        QSNN(1, (4, 4, 4), 28, 10)
    with pytest.raises(UserError, match="num_bits has 2 values"):
        QSNN(1, (4, 4), 28, 10, num_bits=[4, 4])


# ---------------------------------------------------------------- old configs build today's network

# The state_dict of mnist/run.py's network before the architecture keys existed (blocks.{0,1}.lif.* are
# snnTorch's buffers): the same names and shapes, so every checkpoint saved before loads.
OLD_MNIST_STATE = {"blocks.0.conv.weight": (16, 1, 5, 5), "blocks.1.conv.weight": (64, 16, 5, 5),
                   "head.fc.weight": (10, 1024)}
for _b, _c in ((0, 16), (1, 64)):
    OLD_MNIST_STATE.update({f"blocks.{_b}.bn.{k}": (_c,) for k in ("weight", "bias", "running_mean", "running_var")})
    OLD_MNIST_STATE[f"blocks.{_b}.bn.num_batches_tracked"] = ()
for _m in ("blocks.0", "blocks.1", "head"):
    OLD_MNIST_STATE.update({f"{_m}.lif.{k}": () for k in ("threshold", "graded_spikes_factor", "reset_mechanism_val",
                                                          "beta")})


def test_a_config_without_the_new_keys_builds_the_papers_network():
    old = {k: v for k, v in MNIST["config"].items() if k not in ("conv_channels", "kernel_size", "padding", "pool")}
    torch.manual_seed(0)
    net = build_model(old)
    state = net.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OLD_MNIST_STATE
    assert [(b.conv.kernel_size, b.conv.padding, b.pool_size) for b in net.blocks] == [((5, 5), (0, 0), 2)] * 2
    torch.manual_seed(0)
    today = build_model(schema.complete(old))  # the schema's defaults of the new keys: the same network
    today.load_state_dict(state)  # strict: a checkpoint of the old network loads
    assert all(torch.equal(state[k], v) for k, v in today.state_dict().items())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net.eval()(x, 3)[1], today.eval()(x, 3)[1])
    assert schema.experiment_identity(old) == schema.experiment_identity(schema.complete(old))


# ---------------------------------------------------------------- SynOps, weight memory, memory estimate

# 1 input channel 8x8 -> conv 3 pad 1, pool 1: 2 x 8 x 8 -> conv 3 pad 1, pool 2: 3 x 4 x 4 -> conv 3 pad 1,
# pool 1: 2 x 4 x 4 -> fc 32 -> 4 classes
SMALL = dict(in_channels=1, channels=(2, 3, 2), input_size=8, num_classes=4, kernel_size=3, padding=1, pool=[1, 2, 1])


def small_net(**kw):
    return QSNN(**{**SMALL, "num_bits": 4, **kw})


def test_fan_out_with_padding_and_pools_by_hand():
    conv = torch.nn.Conv2d(1, 5, 3, padding=1)
    # pool 1: windows o-1..o+1 over 8 pixels: 2 at each border, 3 inside
    ones = torch.tensor([2, 3, 3, 3, 3, 3, 3, 2], dtype=torch.float64)
    assert torch.equal(conv_fan_out(conv, (8, 8), (8, 8), pool=1), 5 * ones[:, None] * ones[None, :])
    # pool 2 folded: 4 wide at stride 2 from -1: [-1..2], [1..4], [3..6], [5..8]
    twos = torch.tensor([1, 2, 2, 2, 2, 2, 2, 1], dtype=torch.float64)
    assert torch.equal(conv_fan_out(conv, (8, 8), (4, 4), pool=2), 5 * twos[:, None] * twos[None, :])


def brute_force_reach(block, size):
    """Outputs a single spike at each input pixel reaches: conv (its padding) then pool, all-ones weights."""
    conv = block.conv
    reach = torch.zeros(size, size, dtype=torch.float64)
    for h in range(size):
        for w in range(size):
            spike = torch.zeros(1, 1, size, size)
            spike[0, 0, h, w] = 1
            out = F.conv2d(spike, torch.ones(1, 1, *conv.kernel_size), padding=conv.padding)
            out = F.avg_pool2d(out, block.pool_size) if block.pool_size > 1 else out
            reach[h, w] = (out != 0).sum() * conv.out_channels
    return reach


def test_three_conv_synops_equal_a_brute_force_count():
    torch.manual_seed(0)
    net = small_net(threshold=0.1, batch_norm=False)
    x = torch.rand(3, 1, 8, 8) * 4
    with torch.no_grad():
        layers = net(x, 5, record=True)
    assert [tuple(s.shape[2:]) for s, _ in layers] == [(2, 8, 8), (3, 4, 4), (2, 4, 4), (4,)]
    meter = EfficiencyMeter(net)
    meter.add(x, layers)
    meter.sum_over_ranks(torch.device("cpu"))
    row = dict(zip(EfficiencyMeter.columns(net)[1:], meter.row()))
    assert list(row) == ["rate_conv1", "rate_conv2", "rate_conv3", "rate_fc", "synops", "synops_conv2",
                         "synops_conv3", "synops_fc", "input_macs", "weight_kib", "weight_kib_fp32"]
    # brute force: every spike that enters conv2, conv3 and fc, counted one by one
    expected = {}
    for name, i, size in (("synops_conv2", 1, 8), ("synops_conv3", 2, 4)):
        reach = brute_force_reach(net.blocks[i], size)
        spikes = layers[i - 1][0]  # [T, B, C, H, W]
        expected[name] = sum(reach[h, w].item() for *_, h, w in spikes.nonzero().tolist()) / 3
    expected["synops_fc"] = layers[2][0].sum().item() * 4 / 3
    for name, value in expected.items():
        assert value > 0 and row[name] == pytest.approx(value, rel=1e-12), name
    assert row["synops"] == pytest.approx(sum(expected.values()), rel=1e-12)
    for i, name in enumerate(("rate_conv1", "rate_conv2", "rate_conv3", "rate_fc")):
        assert row[name] == pytest.approx(layers[i][0].double().mean().item(), rel=1e-12)
    assert row["input_macs"] == 2 * 8 * 8 * 1 * 9  # conv1's neurons x input channels x 3x3 taps (pool 1)


def test_static_input_macs_count_the_folded_kernel_of_the_first_pool():
    net = small_net(pool=[2, 1, 1], batch_norm=False)  # 8 -> 4 -> 4 -> 4; conv1 folds to 4x4 at stride 2
    meter = EfficiencyMeter(net)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        meter.add(x, net(x, 2, record=True))
    assert dict(zip(EfficiencyMeter.columns(net)[1:], meter.row()))["input_macs"] == 2 * 4 * 4 * 1 * 16


def test_weight_memory_with_bits_per_layer_by_hand():
    net = small_net(num_bits=[8, 4, 2, 1])
    # conv 1->2 3x3: 18 weights x 8, conv 2->3: 54 x 4, conv 3->2: 54 x 2, fc 32->4: 128 x 1 bit;
    # BatchNorm 2 x (2 + 3 + 2) values at 32 bits
    assert weight_memory_kib(net) == ((18 * 8 + 54 * 4 + 54 * 2 + 128 * 1 + 14 * 32) / 8192,
                                      ((18 + 54 + 54 + 128) * 32 + 14 * 32) / 8192)
    assert [int(b.conv.quant_weight().bit_width) for b in net.blocks] == [8, 4, 2]
    assert float(net.head.fc.quant_weight().bit_width) == 1
    mixed = small_net(num_bits=None, batch_norm=False)
    assert weight_memory_kib(mixed)[0] == (18 + 54 + 54 + 128) * 32 / 8192


def test_memory_estimate_counts_the_real_layers():
    cfg = {"dataset": "mnist", "conv_channels": [4, 6, 8], "kernel_size": [5, 3, 3], "padding": [0, 1, 1],
           "pool": [2, 1, 4]}
    assert neurons_per_step(cfg) == (4 * 12 * 12 + 6 * 12 * 12 + 8 * 3 * 3 + 10, 784)
    assert neurons_per_step({"dataset": "mnist"}) == (16 * 12 * 12 + 64 * 4 * 4 + 10, 784)  # the paper's
    assert neurons_per_step({"dataset": "dvs128_gesture", "pool": 1, "padding": 2}) == (
        16 * 32 * 32 + 32 * 32 * 32 + 11, 2 * 32 * 32)


def test_fold_avg_pool_of_any_size_with_padding():
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 13, 13, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for pool in (1, 2, 3, 4):
        for padding in (0, 1, 2):
            expected = F.conv2d(x, w, padding=padding)
            expected = F.avg_pool2d(expected, pool) if pool > 1 else expected
            folded = F.conv2d(x, fold_avg_pool(w, pool), stride=pool, padding=padding)
            assert folded.shape == expected.shape and torch.allclose(folded, expected, atol=1e-12), (pool, padding)
    assert fold_avg_pool(w, 4).shape == (4, 3, 6, 6)


# ---------------------------------------------------------------- the results table


def write_eff_run(root, name, conv_layers, rates):
    """A run folder (via test_results.write_run) whose eff CSV has the header of `conv_layers` conv layers."""
    from test_results import write_lines, write_run

    config = {"conv_channels": [4] * conv_layers} if conv_layers != 2 else {}  # 2: a folder from before the key
    folder = write_run(root, name, "digits", "cosine", [[50.0]], config=config)
    header = columns(conv_layers)
    values = [1, *rates, 100.0, *([10.0] * (conv_layers - 1)), 20.0, 5.0, 2.0, 16.0]
    assert len(values) == len(header)
    write_lines(folder / f"eff_{name}_t0.csv", ",".join(header), [",".join(map(str, values))])
    return folder


def test_table_rate_columns_follow_each_runs_layers(tmp_path):
    write_eff_run(tmp_path / "two", "paper", 2, [0.1, 0.2, 0.05])  # an eff CSV as written before (2 conv layers)
    write_eff_run(tmp_path / "three", "deeper", 3, [0.1, 0.2, 0.3, 0.05])
    both = results.accuracy_table(results.find_runs(tmp_path))
    eff = [c for c in both.columns if c in results.eff_columns(both.columns)]
    assert eff == ["rate_conv1", "rate_conv2", "rate_conv3", "rate_fc", "synops", "synops_conv2", "synops_conv3",
                   "synops_fc", "input_macs", "weight_kib", "weight_kib_fp32"]
    lines = results.to_markdown(both).splitlines()
    assert "| spike rate conv1 / ... / fc |" in lines[0]
    assert " | 0.100 / 0.200 / 0.050 | 100 | 2.0 |" in lines[2] + lines[3]
    assert " | 0.100 / 0.200 / 0.300 / 0.050 | 100 | 2.0 |" in lines[2] + lines[3]
    three = results.accuracy_table(results.find_runs(tmp_path / "three"))
    assert "| spike rate conv1 / conv2 / conv3 / fc |" in results.to_markdown(three).splitlines()[0]
    two = results.accuracy_table(results.find_runs(tmp_path / "two"))
    assert "| spike rate conv1 / conv2 / fc |" in results.to_markdown(two).splitlines()[0]
    assert "rate_conv3" not in two.columns and list(two.columns) == list(results.TABLE_COLUMNS)


# ---------------------------------------------------------------- the integer export


def dyadic_three_conv(bits=(8, 4, 4, 4), seed=0):
    """A 3-conv QSNN (pools 2, 1, 4; padding 0, 1, 1) whose weights, BatchNorm and inputs are all dyadic."""
    generator = torch.Generator().manual_seed(seed)
    net = QSNN(1, input_size=28, num_classes=10, num_bits=list(bits), beta=0.75, threshold=1.0, slope=5.0,
               **THREE_CONV)
    with torch.no_grad():
        for layer, b in zip((*[block.conv for block in net.blocks], net.head.fc), bits):
            top = 2 ** (b - 1) - 1  # codes up to top with one at top: the b-bit scale is exactly 2^-b
            q = torch.randint(-top, top + 1, layer.weight.shape, generator=generator).float()
            q.view(-1)[0] = top
            layer.weight.copy_(q * 2.0 ** -b)
        for block in net.blocks:
            bn, channels = block.bn, block.bn.num_features
            bn.eps = 0.0
            bn.running_var.copy_(torch.tensor([0.25, 4.0])[torch.randint(0, 2, (channels,), generator=generator)])
            bn.running_mean.copy_(torch.randint(-8, 9, (channels,), generator=generator) / 16.0)
            bn.weight.copy_(torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.0])[torch.randint(0, 5, (channels,),
                                                                                    generator=generator)])
            bn.bias.copy_(torch.randint(-8, 9, (channels,), generator=generator) / 8.0)
    codes = torch.randint(0, 17, (3, 1, 28, 28), generator=generator)
    return net.eval(), codes


def test_three_conv_integer_export_equals_pytorch_bit_for_bit(tmp_path):
    net, codes = dyadic_three_conv()
    with torch.no_grad():
        layers32 = net(codes.float() / 16, 5, record=True)
        layers64 = net.double()(codes.double() / 16, 5, record=True)
    info = {"kind": "pixel_codes", "scale": 1 / 16, "max_code": 16}
    bundle = convert.export_model(net, "digits", 32, 7, 24, input_info=info)
    assert [(l["kind"], l["pool"], l["stride"], l["padding"], l["weight_bits"]) for l in bundle.meta["layers"]] == [
        ("conv", 2, 2, 0, 8), ("conv", 1, 1, 1, 4), ("conv", 4, 4, 1, 4), ("linear", 1, 1, 0, 4)]
    assert bundle.meta["version"] == 2
    integer_layers, saturated = runtime.run_bundle(bundle, codes.numpy(), 5, record=True)
    assert saturated == 0 and len(integer_layers) == 4
    assert_integer_layers_equal(bundle, layers32, layers64, integer_layers)
    # saved and loaded (the checks of every field), it runs the same
    bundle_files.save_bundle(bundle, tmp_path / "three")
    again, _ = runtime.run_bundle(bundle_files.load_bundle(tmp_path / "three"), codes.numpy(), 5)
    np.testing.assert_array_equal(again, integer_layers[-1][0])


def test_a_version_1_bundle_still_loads_and_runs(tmp_path):
    from test_deploy import INPUT_INFO, dyadic_net

    net, generator = dyadic_net("image")
    codes = torch.randint(0, 17, (2, 1, 28, 28), generator=generator).numpy()
    bundle = convert.export_model(net, "digits", 16, 1, 24, input_info=INPUT_INFO["image"])
    expected, _ = runtime.run_bundle(bundle, codes, 4)
    npz, json_path = bundle_files.save_bundle(bundle, tmp_path / "old")
    meta = json.loads(json_path.read_text())
    meta["version"] = 1
    for layer in meta["layers"]:  # version 1: the 2x2 pool as true / false, no padding field
        layer["pool"] = layer["pool"] == 2
        layer.pop("padding")
    json_path.write_text(json.dumps(meta))
    old = bundle_files.load_bundle(tmp_path / "old")
    assert [(l["pool"], l["padding"]) for l in old.meta["layers"]] == [(2, 0), (2, 0), (1, 0)]
    np.testing.assert_array_equal(runtime.run_bundle(old, codes, 4)[0], expected)
    meta["version"] = 3
    json_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="is not a qsnn-integer-bundle version 1 or 2 file"):
        bundle_files.load_bundle(tmp_path / "old")


# ---------------------------------------------------------------- a 3-conv run from the command line


@pytest.fixture(scope="module")
def trained_three_conv(tmp_path_factory):
    """The digits demo with 3 conv layers and per-layer bits, trained for 1 epoch by mnist/run.py."""
    out = tmp_path_factory.mktemp("three_conv")
    argv = ["--demo", "--epochs", "1", "--num_steps", "4", "--device", "cpu", "--output_dir", str(out),
            "--test_batch_size", "400", "--conv_channels", "4,8,8", "--kernel_size", "5,3,3", "--padding", "0,1,1",
            "--pool", "2,2,1", "--num_bits", "8,4,4,4"]
    proc = subprocess.run([sys.executable, str(ROOT / "mnist" / "run.py"), *argv], capture_output=True, text=True,
                          timeout=300, cwd=out, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return out / "digits_8-4-4-4bit_cosine"


def test_three_conv_eff_csv_follows_the_layers(trained_three_conv):
    lines = (trained_three_conv / "eff_digits_8-4-4-4bit_cosine_t0.csv").read_text().splitlines()
    assert lines[0] == ("epoch,rate_conv1,rate_conv2,rate_conv3,rate_fc,synops,synops_conv2,synops_conv3,"
                        "synops_fc,input_macs,weight_kib,weight_kib_fp32")
    row = dict(zip(lines[0].split(","), map(float, lines[1].split(","))))
    assert row["synops"] == pytest.approx(row["synops_conv2"] + row["synops_conv3"] + row["synops_fc"])
    assert all(0 < row[f"rate_{layer}"] < 1 for layer in ("conv1", "conv2", "conv3"))
    assert row["input_macs"] == 4 * 12 * 12 * 36  # conv1's 4x12x12 neurons x 6x6 folded taps
    # weights: conv 1->4 5x5 x 8 bits, conv 4->8 3x3 x 4, conv 8->8 3x3 x 4, fc 8*6*6->10 x 4; BatchNorm 2 x 20 x 32
    assert row["weight_kib"] == (100 * 8 + 288 * 4 + 576 * 4 + 2880 * 4 + 40 * 32) / 8192
    assert row["weight_kib_fp32"] == ((100 + 288 + 576 + 2880) * 32 + 40 * 32) / 8192
    saved = json.loads((trained_three_conv / "config.json").read_text())
    assert saved["precision"] == "8-4-4-4bit" and saved["config"]["conv_channels"] == [4, 8, 8]


def test_evaluate_reports_every_layer_of_a_three_conv_checkpoint(trained_three_conv, capsys):
    checkpoint = str(trained_three_conv / "digits_8-4-4-4bit_cosine_t0.pt")
    reports = {}
    for execution in ("fast", "reference"):
        assert evaluate.main([checkpoint, "--device", "cpu", "--execution", execution]) == 0
        reports[execution] = capsys.readouterr().out.splitlines()
    report = reports["fast"]
    assert report[0].endswith("digits, 8/4/4/4-bit weights, 4 steps")
    rates = [re.fullmatch(r"spike rate (\w+): ([0-9.]+) spikes per neuron per step", line) for line in report]
    assert [m[1] for m in rates if m] == ["conv1", "conv2", "conv3", "fc"]
    assert all(float(m[2]) > 0 for m in rates if m)
    synops = next(line for line in report if line.startswith("synaptic operations per sample"))
    assert not synops.startswith("synaptic operations per sample: 0 ") and "20,736 multiply-accumulates" in synops
    assert "weight memory: 2.08 KiB (15.17 KiB in fp32)" in report
    eff = (trained_three_conv / "eff_digits_8-4-4-4bit_cosine_t0.csv").read_text().splitlines()
    logged = dict(zip(eff[0].split(","), map(float, eff[1].split(","))))
    assert f"spike rate conv3: {logged['rate_conv3']:.4f} spikes per neuron per step" in report
    assert f"{logged['synops']:,.0f}" in synops  # the test pass of training counted the same spikes
    # the reference execution of the same checkpoint: equal up to float rounding near a threshold
    accuracy = {name: float(lines[1].split()[-1].rstrip("%")) for name, lines in reports.items()}
    assert abs(accuracy["fast"] - accuracy["reference"]) <= 100 / 360 + 1e-9, accuracy


def test_results_table_row_of_a_three_conv_run(trained_three_conv):
    table = results.accuracy_table(results.find_runs(trained_three_conv.parent))
    assert table.loc[0, "precision"] == "8-4-4-4bit" and table.loc[0, "rate_conv3"] > 0
    lines = results.to_markdown(table).splitlines()
    assert "| spike rate conv1 / conv2 / conv3 / fc |" in lines[0]
    cell = lines[2].split(" | ")[-3]
    assert len(cell.split(" / ")) == 4 and cell.split(" / ")[2] == f"{table.loc[0, 'rate_conv3']:.3f}"


def test_integer_export_of_a_three_conv_run_agrees_with_pytorch(trained_three_conv):
    cfg, model, _ = convert.load_trial(trained_three_conv)
    bundle = convert.export_model(model, cfg["dataset"], 32, 1, 24)
    assert [(l["pool"], l["padding"], l["weight_bits"]) for l in bundle.meta["layers"]] == [
        (2, 0, 8), (2, 1, 4), (1, 1, 4), (1, 0, 4)]
    x, y = convert.test_inputs(cfg)
    rows = convert.compare_widths(model, [("integer, 32-bit membrane", bundle)], x, y, cfg["num_steps"],
                                  batch_size=120)
    _, _, _, _, agree_same, differ_same, _ = rows[1]
    assert len(x) == 360 and agree_same == 100.0 and differ_same == 0.0  # the integer arithmetic: all predictions

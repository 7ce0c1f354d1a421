"""The integer-only bundle: bit-for-bit equality with PyTorch where every value is exact, files, refusals.

The exactness tests use the dyadic setting of tests/test_models.py (weights k * 2^-4 with the 4-bit
scale exactly 2^-4, inputs on a 1/16 grid, beta 0.75, threshold 1) and make BatchNorm dyadic too
(eps 0, running variances 1/4 or 4, gammas +-1/2, +-1, +-2, some negative), so the float
network computes exact real numbers (checked: float32 equals float64) and the integer network, with
a 32-bit membrane (headroom 7 bits: no saturation), must give the same spikes in every layer and
membranes equal to mem / unit.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export
from conftest import untrained_run_folder
from qsnn.deploy import bundle_files, convert as integer_export, runtime as deploy
from qsnn.core.models import QSNN, architecture, fold_avg_pool

from qsnn.data import registry  # noqa: E402

# The two input kinds' networks, as build_model makes them for MNIST and DVS128 Gesture.
ARCHITECTURES = {"image": architecture(registry.get("mnist")), "event": architecture(registry.get("dvs128_gesture"))}

ROOT = Path(__file__).resolve().parents[1]


def dyadic_net(kind, seed=0):
    """A 4-bit QSNN whose weights, BatchNorm statistics and affine parameters are all dyadic."""
    generator = torch.Generator().manual_seed(seed)
    net = QSNN(**ARCHITECTURES[kind], num_bits=4, beta=0.75, threshold=1.0, slope=5.0, dropout=0.0)
    with torch.no_grad():
        for layer in (*[b.conv for b in net.blocks], net.head.fc):
            q = torch.randint(-7, 8, layer.weight.shape, generator=generator).float()
            q.view(-1)[0] = 7  # max |w| = 7 * 2^-4, so the 4-bit scale max|w| / 7 is exactly 2^-4
            layer.weight.copy_(q * 2.0 ** -4)
        for block in net.blocks:
            bn, channels = block.bn, block.bn.num_features
            bn.eps = 0.0
            bn.running_var.copy_(torch.tensor([0.25, 4.0])[torch.randint(0, 2, (channels,), generator=generator)])
            bn.running_mean.copy_(torch.randint(-8, 9, (channels,), generator=generator) / 16.0)
            gains = torch.tensor([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
            bn.weight.copy_(gains[torch.randint(0, 6, (channels,), generator=generator)])
            bn.weight[:2] = torch.tensor([-1.0, -0.5])  # at least two negative-scale channels
            bn.bias.copy_(torch.randint(-8, 9, (channels,), generator=generator) / 8.0)
    return net.eval(), generator


def dyadic_inputs(kind, generator, batch=4, steps=6):
    """(float input, integer codes, num_steps): images on a 1/16 grid, or event counts 0..2."""
    if kind == "image":
        codes = torch.randint(0, 17, (batch, 1, 28, 28), generator=generator)
        return codes.float() / 16, codes.numpy(), steps
    codes = torch.randint(0, 3, (steps, batch, 2, 32, 32), generator=generator)
    return codes.float(), codes.numpy(), None


INPUT_INFO = {"image": {"kind": "pixel_codes", "scale": 1 / 16, "max_code": 16},
              "event": {"kind": "event_counts", "scale": 1.0, "max_code": None}}


@pytest.mark.parametrize("kind", ["image", "event"])
def test_integer_spikes_equal_pytorch_bit_for_bit(kind):
    net, generator = dyadic_net(kind)
    x, codes, steps = dyadic_inputs(kind, generator)
    with torch.no_grad():
        layers32 = net(x, steps, record=True)
        layers64 = net.double()(x.double(), steps, record=True)
    # headroom 7: these random networks reach |mem| = 75 thr; 6 steps of beta 3/4 add 10 fraction bits
    bundle = integer_export.export_model(net, "digits" if kind == "image" else "dvs128_gesture", 32, 7, 24,
                                 input_info=INPUT_INFO[kind])
    integer_layers, saturated = deploy.run_bundle(bundle, codes, steps, record=True)
    assert saturated == 0
    assert_integer_layers_equal(bundle, layers32, layers64, integer_layers)


def assert_integer_layers_equal(bundle, layers32, layers64, integer_layers):
    """Every layer's integer spikes equal the float64 network's, and its membranes times the unit equal its
    membranes; float32 computed the same spikes (so the dyadic values were exact)."""
    for i, ((spk32, _), (spk64, mem64), (spikes, mems)) in enumerate(zip(layers32, layers64, integer_layers)):
        assert torch.equal(spk32.double(), spk64)  # float32 computed the exact values too
        assert 0 < spikes.sum() < spikes.size, f"layer {i}: the comparison needs neurons that fire and some that do not"
        np.testing.assert_array_equal(spikes, spk64.numpy().astype(np.int8), err_msg=f"layer {i}")
        unit = np.asarray(bundle.meta["layers"][i]["membrane_unit"]).reshape((-1,) + (1,) * (mems.ndim - 3))
        np.testing.assert_array_equal(mems * unit, mem64.numpy(), err_msg=f"layer {i} membranes")


def test_negative_bn_scale_channels_fire_as_in_pytorch():
    net, generator = dyadic_net("image", seed=3)
    x, codes, steps = dyadic_inputs("image", generator)
    with torch.no_grad():
        spk = net(x, steps, record=True)[0][0]
    bundle = integer_export.export_model(net, "digits", 32, 7, 24, input_info=INPUT_INFO["image"])
    weight, shift, threshold, bias = bundle.layer_arrays(0)
    codes_w = net.blocks[0].conv.quant_weight().int().numpy()
    gamma = net.blocks[0].bn.weight.detach().numpy()
    negative = gamma < 0
    # Negative-scale channels carry negated weight codes and a positive threshold.
    np.testing.assert_array_equal(weight[negative], -codes_w[negative])
    np.testing.assert_array_equal(weight[~negative], codes_w[~negative])
    assert (threshold > 0).all()
    spikes = deploy.run_bundle(bundle, codes, steps, record=True)[0][0][0]
    assert spikes[:, :, negative].sum() > 0  # those channels do fire, and exactly when PyTorch's do
    np.testing.assert_array_equal(spikes[:, :, negative], spk[:, :, negative].numpy())


def test_lif_integer_by_hand():
    # W = 5 bits ([-16, 15]), theta = 6, beta = 3/4 (B = 3, b = 2): decay(M) = floor((3 M + 2) / 4).
    meta = {"membrane_bits": 5, "beta_multiplier": 3, "beta_shift": 2}
    current = np.array([2, 5, 4, -40, 3], np.int64).reshape(5, 1, 1)  # [T, N=1, one channel]
    spikes, mems, saturated = deploy.lif_integer(current, [6], meta, record=True)
    # t0: 2 | t1: 0.75 * 2 = 1.5 rounds up to floor(8/4) = 2, +5 = 7 > 6: spike | t2: floor(23/4)=5 +4 -6 = 3
    # t3: floor(11/4)=2 -40 = -38 -> -16 (saturated) | t4: floor(-46/4)=-12 +3 = -9
    assert mems.ravel().tolist() == [2, 7, 3, -16, -9]
    assert spikes.ravel().tolist() == [0, 1, 0, 0, 0]
    assert saturated == 1


def test_scaled_current_rounds_right_shifts_half_up():
    acc = np.array([[5], [-5], [6], [-6], [3]], np.int64)  # [N=5, one channel]
    halved = deploy.scaled_current(acc, np.array([-1]), np.array([0]))  # A / 2, ties up
    assert halved.ravel().tolist() == [3, -2, 3, -3, 2]
    shifted = deploy.scaled_current(acc, np.array([2]), np.array([1]))  # 4 A + 1
    assert shifted.ravel().tolist() == [21, -19, 25, -23, 13]


def test_pool_folded_kernel_is_four_times_fold_avg_pool():
    codes = torch.randint(-7, 8, (3, 2, 5, 5))
    folded = deploy.pool_folded_kernel(codes.numpy())
    np.testing.assert_array_equal(folded, (4 * fold_avg_pool(codes.float())).numpy().astype(np.int64))


def test_bundle_round_trip_needs_only_numpy(tmp_path):
    net, generator = dyadic_net("image")
    _, codes, steps = dyadic_inputs("image", generator, batch=2, steps=4)
    bundle = integer_export.export_model(net, "digits", 16, 1, 24, input_info=INPUT_INFO["image"])
    npz_path, json_path = bundle_files.save_bundle(bundle, tmp_path / "model")
    assert npz_path.is_file() and json_path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.json", "model.npz"]
    with np.load(npz_path, allow_pickle=False) as data:
        assert all(np.issubdtype(data[name].dtype, np.integer) for name in data.files)
        assert data["layer0.weight"].dtype == np.int8 and data["layer0.threshold"].dtype == np.int32
    meta = json.loads(json_path.read_text())
    assert meta["membrane_bits"] == 16 and meta["beta_multiplier"] == round(0.75 * 2 ** 24)
    np.save(tmp_path / "codes.npy", codes)
    expected = deploy.run_bundle(bundle, codes, steps)[0]
    script = ("import sys, numpy as np; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]);"
              "from qsnn.deploy.bundle_files import load_bundle; from qsnn.deploy.runtime import run_bundle;"
              "out, _ = run_bundle(load_bundle(sys.argv[2]), np.load(sys.argv[3]), 4);"
              "np.save(sys.argv[4], out)")
    subprocess.run([sys.executable, "-c", script, str(ROOT), str(json_path), str(tmp_path / "codes.npy"),
                    str(tmp_path / "out.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


# ---------------------------------------------------------------- export.py on a run folder

@pytest.fixture
def run_dir(tmp_path):
    """A run folder as training writes it (config.json, status.json, best checkpoint), untrained weights."""
    return untrained_run_folder(tmp_path)


def test_export_writes_bundle_and_table(run_dir, capsys):
    assert export.main([str(run_dir), "--membrane_bits", "12", "--widths", "8,12", "--limit", "6"]) == 0
    out = capsys.readouterr().out
    bundle = bundle_files.load_bundle(run_dir / "int_tiny_t0")
    assert bundle.meta["membrane_bits"] == 12 and bundle.meta["source"]["trial"] == 0
    assert "| integer, 8-bit membrane |" in out and "| integer, 12-bit membrane |" in out
    assert "(6 test samples)" in out


def refusal(argv, capsys):
    """(exit code, stderr lines) of export.main."""
    code = export.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def rewrite_config(run_dir, **changes):
    record = json.loads((run_dir / "config.json").read_text())
    record["config"].update(changes)
    (run_dir / "config.json").write_text(json.dumps(record))


@pytest.mark.parametrize("case, expected", [
    ("not_a_run", "is not a run folder"),
    ("missing_checkpoint", "has no best checkpoint"),
    ("damaged_checkpoint", "cannot load the checkpoint"),
    ("state_bits", "'state_bits' = 8 is not implemented"),
    ("full_precision", "full-precision weights"),
    ("unknown_key", "reset_to_zero are not implemented"),
    ("bad_width", "--membrane_bits 40 is not allowed"),
])
def test_refusals_are_one_line_exit_2(run_dir, tmp_path, capsys, case, expected):
    argv = [str(run_dir)]
    if case == "not_a_run":
        argv = [str(tmp_path)]
    elif case == "missing_checkpoint":
        argv += ["--trial", "3"]
    elif case == "damaged_checkpoint":
        (run_dir / "tiny_t0.pt").write_bytes(b"not a checkpoint")
    elif case == "state_bits":
        rewrite_config(run_dir, state_bits=8)
    elif case == "full_precision":
        rewrite_config(run_dir, num_bits=None)
    elif case == "unknown_key":
        rewrite_config(run_dir, reset_to_zero=True)
    elif case == "bad_width":
        argv += ["--membrane_bits", "40"]
    code, lines = refusal(argv, capsys)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_export_script_runs_from_anywhere_and_refuses_in_one_line(tmp_path):
    # A real process started outside the repository: the script finds the package, and a user error
    # is one line on stderr with exit code 2 (the full export is tested in-process above).
    result = subprocess.run([sys.executable, str(ROOT / "export.py"), str(tmp_path)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path} is not a run folder (its config, "
                                                  "config.json, is missing)"]

"""NIR export: the graph's nodes, folded weights and metadata, and the round trip through each importer.

The model is the digits network (1x28x28 -> 16 -> 64 -> 10) with random 4-bit weights and BatchNorm
statistics made non-trivial, so that every layer spikes; the inputs are the first test digits.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

import export  # noqa: E402
from qsnn.core.models import QSNN, architecture, effective_weight  # noqa: E402
from qsnn.data import registry  # noqa: E402
from qsnn.deploy import convert, nir_check  # noqa: E402
from qsnn.deploy.nir_export import read_nir, to_nir, write_nir  # noqa: E402
from qsnn.deploy.nir_run import run_graph  # noqa: E402
from conftest import untrained_run_folder  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCH = architecture(registry.get("digits"))
SHAPE = (1, 28, 28)
STEPS = 8


def spiking_net(reset="subtract", seed=0):
    """The digits QSNN with random weights and BatchNorm statistics under which every layer fires."""
    torch.manual_seed(seed)
    net = QSNN(**ARCH, num_bits=4)
    with torch.no_grad():
        for block in net.blocks:
            bn = block.bn
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.05, 0.3)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    return nir_check.with_reset(net, reset).eval()


@pytest.fixture(scope="module")
def digits():
    """The first 60 test digits as the network sees them, and their labels."""
    return convert.test_inputs({**demo_config(), "dataset": "digits"}, 60)


def demo_config():
    import runpy

    return runpy.run_path(str(ROOT / "mnist" / "run.py"))["config"]


def test_graph_written_and_read_back_has_expected_nodes_and_shapes(tmp_path):
    write_nir(tmp_path / "m.nir", to_nir(spiking_net(), SHAPE, num_steps=STEPS))
    graph = read_nir(tmp_path / "m.nir")
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds == {"input": "Input", "conv1": "Conv2d", "pool1": "AvgPool2d", "lif1": "LIF", "conv2": "Conv2d",
                     "pool2": "AvgPool2d", "lif2": "LIF", "flatten": "Flatten", "fc": "Linear", "lif_out": "LIF",
                     "output": "Output"}
    assert [a for a, _ in graph.edges] == ["input", "conv1", "pool1", "lif1", "conv2", "pool2", "lif2", "flatten",
                                           "fc", "lif_out"]
    assert graph.nodes["conv1"].weight.shape == (16, 1, 5, 5) and graph.nodes["conv2"].weight.shape == (64, 16, 5, 5)
    assert graph.nodes["lif1"].tau.shape == (16, 12, 12) and graph.nodes["lif2"].tau.shape == (64, 4, 4)
    assert graph.nodes["fc"].weight.shape == (10, 1024)
    lif = graph.nodes["lif_out"]
    assert np.allclose(lif.tau, 1e-4 / (1 - 0.9)) and np.allclose(lif.r, lif.tau / 1e-4)
    assert np.all(lif.v_reset == 0) and np.all(lif.v_leak == 0) and np.all(lif.v_threshold == 1.0)
    assert lif.metadata["reset_mechanism"] == "subtract" and lif.metadata["discretisation"] == "forward Euler"
    assert graph.metadata["num_steps"] == STEPS and graph.metadata["input_encoding"] == "static"


def test_folded_weights_are_effective_weight_times_batch_norm_gain_and_codes_times_scale():
    net = spiking_net()
    graph = to_nir(net, SHAPE)
    for index, block in enumerate(net.blocks, start=1):
        node, bn = graph.nodes[f"conv{index}"], block.bn
        weight = effective_weight(block.conv).detach().double()
        gain = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).detach()
        assert np.allclose(node.weight, (weight * gain[:, None, None, None]).numpy(), rtol=1e-12, atol=0)
        assert np.allclose(node.bias, (bn.bias.double() - bn.running_mean.double() * gain).detach().numpy())
        meta = node.metadata
        codes_times_scale = meta["weight_codes"] * meta["weight_scale"][:, None, None, None]
        assert meta["weight_bits"] == 4 and np.abs(meta["weight_codes"]).max() <= 8
        assert np.allclose(codes_times_scale, weight.numpy(), rtol=1e-6, atol=0)
        # the folded conv, then the pool, is the network's conv -> pool -> BatchNorm
        x = torch.rand(2, block.conv.in_channels, 12 if index == 2 else 28, 12 if index == 2 else 28).double()
        ours = torch.nn.functional.avg_pool2d(torch.nn.functional.conv2d(
            x, torch.from_numpy(node.weight), torch.from_numpy(node.bias)), 2)
        bn64 = torch.nn.BatchNorm2d(bn.num_features).double().eval()
        bn64.load_state_dict(bn.state_dict())
        theirs = bn64(torch.nn.functional.avg_pool2d(torch.nn.functional.conv2d(x, weight), 2))
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    fc = graph.nodes["fc"]
    assert np.allclose(fc.metadata["weight_codes"] * fc.metadata["weight_scale"][:, None], fc.weight, rtol=1e-6)
    assert np.array_equal(fc.weight, effective_weight(net.head.fc).detach().double().numpy())


@pytest.mark.parametrize("reset, fold_pool", [("subtract", False), ("zero", False), ("subtract", True)])
def test_own_reader_reproduces_pytorch_output_spikes(reset, fold_pool, digits, tmp_path):
    x, _ = digits
    net = spiking_net(reset)
    write_nir(tmp_path / "m.nir", to_nir(net, SHAPE, num_steps=STEPS, fold_pool=fold_pool))
    graph = read_nir(tmp_path / "m.nir")
    reference = nir_check.pytorch_spikes(net, x, STEPS)
    assert 0.02 < reference.mean() < 0.9  # the output layer really spikes, and not always
    # float32 as PyTorch computes: the same spikes here (BatchNorm folded rounds differently, so in general
    # a membrane within float32 rounding of the threshold could flip a spike)
    assert np.array_equal(nir_check.own_reader_spikes(graph, x, STEPS, np.float32), reference)
    assert np.array_equal(run_graph(graph, x[:8].numpy()), reference[:, :8])  # float64, num_steps from metadata
    kinds = [type(node).__name__ for node in graph.nodes.values()]
    assert kinds.count("AvgPool2d") == (0 if fold_pool else 2)


def test_snntorch_import_agrees_exactly_for_zero_reset_only(digits):
    pytest.importorskip("nirtorch")  # snnTorch's import_from_nir needs it
    x, y = digits
    measured = {}
    for reset in ("zero", "subtract"):
        net = spiking_net(reset)
        graph = to_nir(net, SHAPE, num_steps=STEPS)
        imported = nir_check.snntorch_network(graph)
        measured[reset] = nir_check.agreement_row("snnTorch", nir_check.snntorch_spikes(imported, x, STEPS),
                                                  nir_check.pytorch_spikes(net, x, STEPS), y)
    assert measured["zero"][2:] == (100.0, 100.0)  # predictions and every output spike
    assert measured["subtract"][3] < 100.0  # snnTorch imports reset to zero: other spikes


def test_leaky_whose_reset_was_changed_after_construction_is_refused():
    net = spiking_net()
    net.head.lif.reset_mechanism = "zero"  # snnTorch 1.0 still computes subtract
    with pytest.raises(UserError, match="computes 'subtract'"):
        to_nir(net, SHAPE)


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as training writes it (config.json, status.json, best checkpoint), untrained weights."""
    return make_run(tmp_path)


def make_run(tmp_path, **keys):
    """A run folder of the digits demo network at 4 steps, with config keys changed by `keys`."""
    return untrained_run_folder(tmp_path, **keys)


def test_cli_writes_a_readable_nir_file_and_checks_it(run_dir, capsys):
    assert export.main([str(run_dir), "--format", "nir", "--check", "--limit", "12"]) == 0
    graph = nir.read(run_dir / "nir_tiny_t0.nir")
    assert graph.metadata["num_steps"] == 4 and graph.metadata["trial"] == 0
    out = capsys.readouterr().out
    assert "| qsnn NIR reader (float32) |" in out and "| snnTorch import_from_nir |" in out
    assert "reset subtract, 12 test samples" in out and "reset zero, same weights, LIFs rebuilt" in out


@pytest.mark.parametrize("extra, expected", [
    (["--format", "onnx"], "invalid choice: 'onnx'"),
    (["--format", "nir", "--widths", "8"], "--widths applies to the integer bundle"),
    (["--check"], "--check, --dt and --fold_pool only apply to --format nir"),
    (["--format", "nir", "--dt", "0"], "--dt 0.0 is not allowed"),
])
def test_cli_bad_option_is_one_error_line_exit_2(run_dir, capsys, extra, expected):
    code = export.main([str(run_dir), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_a_network_trained_with_reset_zero_exports_to_nir_but_not_to_the_integer_bundle(tmp_path, capsys):
    folder = make_run(tmp_path, reset_mechanism="zero")
    assert export.main([str(folder), "--format", "nir", "--check", "--limit", "12"]) == 0
    out = capsys.readouterr().out
    assert "reset zero, 12 test samples" in out and "LIFs rebuilt" not in out  # trained so: one table
    assert nir.read(folder / "nir_tiny_t0.nir").nodes["lif1"].metadata["reset_mechanism"] == "zero"
    assert export.main([str(folder)]) == 2  # the integer runtime implements reset by subtraction only
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'reset_mechanism' = 'zero' is not implemented by the integer export "
                   "(it implements reset_mechanism 'subtract')"]


@pytest.mark.parametrize("keys, expected", [
    ({"neuron": "synaptic"}, "config key 'neuron' = 'synaptic' is not implemented by the NIR export"),
    ({"learn_beta": True, "learn_per_channel": True}, "one beta and one threshold per layer"),
])
def test_what_nir_export_does_not_implement_is_one_error_line(tmp_path, capsys, keys, expected):
    folder = make_run(tmp_path, **keys)
    assert export.main([str(folder), "--format", "nir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (folder / "nir_tiny_t0.nir").exists()

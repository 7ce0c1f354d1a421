"""compute_precision bf16 (qsnn.core.precision): exact integer forwards of the spike-fed layers, bf16 gradients.

Exactness: on the dyadic networks of tests/test_deploy.py and tests/test_architecture.py every product and
sum is exact in fp32 too, so the bf16 setting must give the fp32 fast path's spikes and membranes bit for
bit. On random non-dyadic scales the kernels must equal the integer sum times the scale, rounded once.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from qsnn.core import models
from qsnn.core.models import QSNN, architecture
from qsnn.core.precision import (exact_kernel, exact_spike_layer, fold_pool_sum, int8_kernels_available,
                                 output_bound)
from qsnn.data import registry
from test_architecture import dyadic_three_conv
from test_deploy import dyadic_inputs, dyadic_net

needs_int8 = pytest.mark.skipif(not int8_kernels_available(), reason="this torch has no oneDNN int8 kernels")
CPU = torch.device("cpu")


def run_both(net, x, steps):
    """Every layer's (spikes, membrane) with compute_precision fp32 and bf16, and the warnings of the bf16 run."""
    with torch.no_grad():
        net.compute_precision = "fp32"
        fp32 = net(x, steps, record=True)
        net.compute_precision = "bf16"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bf16 = net(x, steps, record=True)
    return fp32, bf16, [str(w.message) for w in caught]


@needs_int8
@pytest.mark.parametrize("kind", ["image", "event"])
def test_dyadic_network_spikes_equal_fp32_bit_for_bit(kind):
    net, generator = dyadic_net(kind)
    x, _, steps = dyadic_inputs(kind, generator)
    fp32, bf16, caught = run_both(net, x, steps)
    assert caught == []  # every spike-fed layer ran on its codes
    for (spk32, mem32), (spk16, mem16) in zip(fp32, bf16):
        assert spk32.sum() > 0
        assert torch.equal(spk32, spk16) and torch.equal(mem32, mem16)


@needs_int8
def test_three_conv_pools_2_1_4_equal_fp32_bit_for_bit():
    net, codes = dyadic_three_conv()  # 8-bit first layer (never on codes), then 4-bit pool-1 and pool-4 convs
    fp32, bf16, caught = run_both(net, codes.float() / 16, 5)
    assert caught == []
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fp32, bf16))


def random_conv(out=32, channels=8, side=10, batch=64, code_max=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(batch, channels, side, side, generator=generator) < 0.3).float()
    codes = torch.randint(-code_max, code_max + 1, (out, channels, 6, 6), generator=generator)
    scale = torch.rand(out, generator=generator) * 0.01 + 1e-3  # not dyadic: products round in fp32
    return spikes, codes, scale


@needs_int8
@pytest.mark.parametrize("stride,padding", [(2, 0), (1, 2)])
def test_int8_conv_is_the_integer_sum_times_the_scale_rounded_once(stride, padding):
    spikes, codes, scale = random_conv()
    weight = codes.float() * scale.view(-1, 1, 1, 1)
    got = exact_spike_layer(spikes, weight, codes, scale, "int8", (stride, padding))
    sums = F.conv2d(spikes.double(), codes.double(), stride=stride, padding=padding)
    assert torch.equal(got, (sums * scale.double().view(1, -1, 1, 1)).float())
    assert sums.abs().max() > 256  # beyond what a bf16 output could hold exactly


@needs_int8
def test_int8_linear_is_the_integer_sum_times_the_scale_rounded_once():
    generator = torch.Generator().manual_seed(1)
    spikes = (torch.rand(300, 1024, generator=generator) < 0.3).float()
    codes = torch.randint(-7, 8, (10, 1024), generator=generator)
    scale = torch.rand(10, generator=generator) * 0.01 + 1e-3
    got = exact_spike_layer(spikes, codes.float() * scale.view(-1, 1), codes, scale, "int8")
    assert torch.equal(got, ((spikes.double() @ codes.double().t()) * scale.double()).float())


def test_bf16_kernel_is_exact_where_the_codes_bound_every_sum_by_256():
    spikes, codes, scale = random_conv(code_max=1, channels=4)  # 4 x 36 codes of |c| <= 1: sums <= 144
    assert output_bound(codes) <= 256
    got = exact_spike_layer(spikes, codes.float() * scale.view(-1, 1, 1, 1), codes, scale, "bf16", (2, 0))
    sums = F.conv2d(spikes.double(), codes.double(), stride=2)
    assert torch.equal(got, (sums * scale.double().view(1, -1, 1, 1)).float())


def test_output_bound_and_kernel_choice():
    codes = torch.tensor([[[3, -2], [5, -7]], [[-1, -1], [1, 0]]])  # channel 0: +8 / -9; channel 1: +1 / -2
    assert output_bound(codes) == 9
    big = torch.full((2, 3, 10, 10), 3)  # 300 per output channel
    assert exact_kernel(big, torch.device("cuda"))[0] is None
    assert "beyond bf16's exact integers" in exact_kernel(big, torch.device("cuda"))[1]
    assert exact_kernel(codes, torch.device("cuda")) == ("bf16", "")
    if int8_kernels_available():
        assert exact_kernel(big, CPU) == ("int8", "")
        assert "beyond int8" in exact_kernel(torch.full((1, 1, 2, 2), 128), CPU)[1]


@needs_int8
@pytest.mark.parametrize("conv", [(2, 0), None])
def test_gradients_are_bf16_roundings_of_the_fp32_gradients(conv):
    generator = torch.Generator().manual_seed(2)
    if conv:
        spikes, codes, scale = random_conv(seed=2)
        weight = codes.float() * scale.view(-1, 1, 1, 1)
        fp32 = lambda x, w: F.conv2d(x, w, stride=2)  # noqa: E731
    else:
        spikes = (torch.rand(200, 256, generator=generator) < 0.3).float()
        codes, scale = torch.randint(-7, 8, (10, 256), generator=generator), torch.full((10,), 0.01)
        weight = codes.float() * scale.view(-1, 1)
        fp32 = F.linear
    grads = []
    for forward in (lambda x, w: exact_spike_layer(x, w, codes, scale, "int8", conv), fp32):
        x, w = spikes.clone().requires_grad_(), weight.clone().requires_grad_()
        out = forward(x, w)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
        grads.append((x.grad, w.grad))
    for exact, reference in zip(*grads):
        assert exact.dtype == torch.float32
        relative = (exact - reference).norm() / reference.norm()
        assert 0 < relative < 1e-2  # bf16 operands: about 2^-9 per element, never the fp32 result itself


def test_fold_pool_sum_is_four_times_the_folded_average():
    weight = torch.randint(-7, 8, (3, 2, 5, 5))
    folded = fold_pool_sum(weight, 2)
    assert folded.shape == (3, 2, 6, 6) and folded.dtype == weight.dtype
    assert torch.equal(folded.float() / 4, models.fold_avg_pool(weight.float(), 2))
    assert folded[0, 0, 0, 0] == weight[0, 0, 0, 0] and folded[0, 0, 1, 1] == weight[0, 0, :2, :2].sum()


@needs_int8
def test_what_cannot_be_exact_stays_fp32_and_says_so():
    torch.manual_seed(0)
    arch = architecture(registry.get("mnist"))
    x = torch.rand(2, 1, 28, 28)
    float_net = QSNN(**arch, num_bits=None).eval()
    fp32, bf16, caught = run_both(float_net, x, 3)
    assert any("a conv layer stays fp32 (float weights have no integer codes)" in m for m in caught)
    assert any("the head stays fp32" in m for m in caught)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fp32, bf16))
    eight_bit = QSNN(**arch, num_bits=8).eval()  # the pool-folded 8-bit codes reach 4 x 127
    _, _, caught = run_both(eight_bit, x, 3)
    assert any("a conv layer stays fp32 (its folded codes reach" in m and "beyond int8" in m for m in caught)
    assert not any("head" in m for m in caught)  # the head's 8-bit codes fit


@needs_int8
def test_training_step_under_bf16_matches_fp32_closely():
    net, generator = dyadic_net("image")
    x, _, steps = dyadic_inputs("image", generator)
    net.train()
    net.head.dropout.p = 0.0
    for block in net.blocks:
        block.bn.eps = 1e-5  # training BatchNorm needs eps > 0
    grads = {}
    for precision in ("fp32", "bf16"):
        net.compute_precision = precision
        net.zero_grad()
        spikes, _ = net(x, steps)
        spikes.sum().backward()  # any loss of the spikes: the forward is identical, only the backward differs
        grads[precision] = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    assert grads["fp32"].keys() == grads["bf16"].keys() and len(grads["fp32"]) >= 5
    for name, reference in grads["fp32"].items():
        relative = (grads["bf16"][name] - reference).norm() / reference.norm().clamp(min=1e-12)
        assert relative < 3e-2, name


def test_first_layer_spikes_stay_channels_last_and_the_head_reads_them_in_order():
    torch.manual_seed(0)
    net = QSNN(**architecture(registry.get("mnist")), num_bits=4).eval()
    with torch.no_grad():
        layers = net(torch.rand(3, 1, 28, 28), 4, record=True)
        spikes = layers[0][0]  # [T, B, C, H, W], channels_last at every step: the next conv copies nothing
        assert spikes[0].is_contiguous(memory_format=torch.channels_last) and not spikes[0].is_contiguous()
        mixed = layers[1][0]
        features, (weight,) = models._flat_features(mixed, [net.head.fc.weight])
        assert torch.equal(F.linear(features, weight), F.linear(mixed.contiguous().flatten(2), net.head.fc.weight))


def test_evaluate_keeps_the_trained_neuron_and_takes_compute_precision_from_the_command_line(tmp_path):
    import evaluate
    from conftest import untrained_run_folder

    folder = untrained_run_folder(tmp_path, reset_mechanism="zero", surrogate="atan")
    path = folder / "tiny_t0.pt"
    checkpoint = evaluate.read_checkpoint(path)
    cfg = evaluate.test_config(path, checkpoint, evaluate.parse([str(path), "--compute_precision", "bf16"]))
    assert (cfg["reset_mechanism"], cfg["surrogate"], cfg["compute_precision"]) == ("zero", "atan", "bf16")
    assert evaluate.test_config(path, checkpoint, evaluate.parse([str(path)]))["compute_precision"] == "fp32"
    assert evaluate.main([str(path), "--compute_precision", "int4"]) == 2

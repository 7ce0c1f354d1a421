"""The QSNNs: shapes per bit width, and the fast execution against the paper's per-step reference.

Folding the 2x2 average pool into the convolution changes the order of float additions, so on
arbitrary real inputs a membrane value within rounding of the threshold may spike in one
execution and not the other. The equivalence tests therefore use a dyadic setting in which every
convolution is exact in float32: inputs and weights are small multiples of powers of two (the
4-bit quantizer's scale max|w| / 7 is then exactly 2^-4), and beta is 0.75. BatchNorm and the LIF
recurrence use identical arithmetic in both executions, so spikes and membranes must be equal
bit for bit; gradients and running statistics are summed in a different order and are compared
with a float tolerance.

With `state_bits` the membrane is quantized after every update. The tests then use the threshold
1275/1024: snnTorch's levels span -thr .. 1.2 thr in 2^b - 1 steps of 2.2 thr / (2^b - 1), which
for 1, 2, 4 and 8 bits is a multiple of 2^-10, so every level (and every midpoint) is dyadic.
"""
import copy

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate

from qsnn.core.equivalence import compare_executions
from qsnn.errors import UserError
from qsnn.core.models import QSNN, architecture, build_model, effective_weight, fold_avg_pool
from qsnn.core.neurons import lif_sequence, nearest_level, snntorch_state_quant, state_levels

from qsnn.data import registry  # noqa: E402

# The two input kinds' networks, as build_model makes them for MNIST and DVS128 Gesture.
ARCHITECTURES = {"image": architecture(registry.get("mnist")), "event": architecture(registry.get("dvs128_gesture"))}

NEURON = dict(beta=0.75, threshold=1.0, slope=5.0)
DYADIC_THRESHOLD = 1275 / 1024  # every state_quant level a multiple of 2^-10 at 1, 2, 4 and 8 bits



def assert_executions_agree(agreement):
    """Bit-identical spikes and membranes in eval and train mode (meaningful only because every layer fires),
    equal loss, gradients to float tolerance and matching BatchNorm statistics."""
    for layers in (agreement.layers, agreement.train.layers):
        assert all(layer.spikes > 0 and layer.identical for layer in layers), layers
    train = agreement.train
    assert train.loss_diff == 0 and not train.zero_gradients
    assert train.worst_gradient()[1] < 1e-4, train.grad_rel_diff
    assert train.running_stats_diff < 1e-5 and train.batches_tracked_equal

def make_net(kind, num_bits, batch_norm=True, **kw):
    return QSNN(**ARCHITECTURES[kind], num_bits=num_bits, dropout=0.0, batch_norm=batch_norm,
                **{**NEURON, **kw})


def dyadic_weights_(net, generator, exponent=4):
    """Integer weights in [-7, 7] times 2^-exponent, with one entry at 7 so 4-bit quantization is exact."""
    with torch.no_grad():
        for layer in (*[b.conv for b in net.blocks], net.head.fc):
            q = torch.randint(-7, 8, layer.weight.shape, generator=generator).float()
            q.view(-1)[0] = 7
            layer.weight.copy_(q * 2.0 ** -exponent)


def dyadic_input(kind, generator, batch=6, steps=10):
    if kind == "image":
        return torch.randint(0, 17, (batch, 1, 28, 28), generator=generator).float() / 16, steps
    return torch.randint(0, 3, (steps, batch, 2, 32, 32), generator=generator).float(), None


@pytest.mark.parametrize("num_bits", [None, 1, 2, 4, 8])
def test_forward_shapes_and_finite_weights(num_bits):
    torch.manual_seed(0)
    net = make_net("image", num_bits)
    spk, mem = net(torch.rand(3, 1, 28, 28), num_steps=7)
    assert spk.shape == mem.shape == (7, 3, 10)
    assert set(spk.unique().tolist()) <= {0.0, 1.0}
    for layer in (net.blocks[0].conv, net.blocks[1].conv, net.head.fc):
        weight = effective_weight(layer)
        assert torch.isfinite(weight).all()
        if num_bits is not None:
            assert weight.unique().numel() <= 2 ** num_bits - (0 if num_bits == 1 else 1)


def test_event_network_shapes():
    net = make_net("event", 4, batch_norm=False)
    layers = net(torch.rand(5, 2, 2, 32, 32), record=True)
    shapes = [tuple(spk.shape) for spk, _ in layers]
    assert shapes == [(5, 2, 16, 14, 14), (5, 2, 32, 5, 5), (5, 2, 11)]


def test_build_model_follows_the_config():
    cfg = dict(dataset="dvs128_gesture", num_bits=None, beta=0.6, threshold=0.4, slope=4.0,
               dropout=0.2, batch_norm=False, execution="reference", time_chunk=3)
    net = build_model(cfg)
    assert net.head.fc.in_features == 800 and net.head.fc.out_features == 11
    assert net.blocks[0].bn is None and net.execution == "reference" and net.time_chunk == 3
    assert isinstance(net.blocks[0].conv, torch.nn.Conv2d)


def test_folded_pool_equals_conv_then_avg_pool():
    torch.manual_seed(0)
    x, w = torch.randn(4, 3, 14, 14, dtype=torch.float64), torch.randn(5, 3, 5, 5, dtype=torch.float64)
    expected = F.avg_pool2d(F.conv2d(x, w), 2)
    assert torch.allclose(F.conv2d(x, fold_avg_pool(w), stride=2), expected, atol=1e-12)


@pytest.mark.parametrize("state_bits", [None, 2, 8])
@pytest.mark.parametrize("static", [False, True])
def test_lif_sequence_matches_snntorch_leaky_step_by_step(static, state_bits):
    torch.manual_seed(0)
    steps, beta, threshold, slope = 9, 0.9, 0.8, 3.0
    current = torch.randn((4, 5) if static else (steps, 4, 5), requires_grad=True)
    quant = dict(state_quant=snntorch_state_quant(state_bits, threshold)) if state_bits else {}
    leaky = snn.Leaky(beta=beta, threshold=threshold, spike_grad=surrogate.fast_sigmoid(slope=slope), **quant)
    mem, spikes, mems = leaky.reset_mem(), [], []
    for t in range(steps):
        spk, mem = leaky(current if static else current[t], mem)
        spikes.append(spk)
        mems.append(mem)
    ref_spk, ref_mem = torch.stack(spikes), torch.stack(mems)
    levels = state_levels(state_bits, threshold) if state_bits else None
    spk, mem = lif_sequence(current, leaky.beta, leaky.threshold, slope, steps if static else None, levels)
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem)
    if state_bits:
        assert torch.isin(mem, levels).all() and ref_spk.sum() > 0
    # Straight-through quantizer: the same analytic backward, on the quantized membranes.
    weights = torch.randn_like(ref_spk)
    (ref_grad,) = torch.autograd.grad((ref_spk * weights).sum() + ref_mem.pow(2).sum(), current)
    (grad,) = torch.autograd.grad((spk * weights).sum() + mem.pow(2).sum(), current)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_bits", [1, 2, 4, 8])
def test_state_levels_are_snntorchs_levels_and_dyadic(num_bits):
    levels = state_levels(num_bits, DYADIC_THRESHOLD)
    assert len(levels) == 2**num_bits and (levels[1:] > levels[:-1]).all()
    # Each level is its own nearest snnTorch level, so the 2^b distinct levels are snnTorch's 2^b.
    assert torch.equal(snntorch_state_quant(num_bits, DYADIC_THRESHOLD)(levels), levels)
    assert levels[0] == -DYADIC_THRESHOLD and torch.equal(levels * 1024, (levels * 1024).round())


@pytest.mark.parametrize("threshold", [1.0, 2.915, DYADIC_THRESHOLD])
@pytest.mark.parametrize("num_bits", [1, 4, 8, 12])
def test_nearest_level_equals_snntorch_state_quant(num_bits, threshold):
    levels = state_levels(num_bits, threshold)
    every = max(1, len(levels) // 256)  # snnTorch's quantizer holds inputs x levels distances
    midpoints = (levels[1:] + levels[:-1]) / 2  # ties: snnTorch takes the lower level
    x = torch.cat([levels[::every], midpoints[::every], levels[::every].nextafter(torch.tensor(9.0)),
                   torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 3,
                   torch.tensor([-1e4, -threshold - 1e-3, 1.2 * threshold + 1e-3, 1e4])])
    assert torch.equal(nearest_level(x, levels), snntorch_state_quant(num_bits, threshold)(x))


def test_huge_membranes_fall_back_to_snntorch_quantizer():
    # Far outside the levels float32 distances tie and snnTorch's argmin picks a low level.
    current = torch.tensor([[1e7, 3e7, 0.5]])
    leaky = snn.Leaky(beta=0.5, threshold=1.0, state_quant=snntorch_state_quant(8, 1.0))
    _, expected = leaky(current[0], leaky.reset_mem())
    assert not torch.equal(nearest_level(current[0], state_levels(8, 1.0)), expected)  # the case is real
    _, mem = lif_sequence(current, leaky.beta, leaky.threshold, 5.0, state_levels=state_levels(8, 1.0))
    assert torch.equal(mem[0], expected)


def paired_nets(kind, num_bits, seed=0, state_bits=None, **neuron):
    """A reference-execution net with dyadic weights, its fast copy and the generator; neuron: QSNN's neuron keys."""
    generator = torch.Generator().manual_seed(seed)
    quant = dict(state_bits=state_bits, threshold=DYADIC_THRESHOLD) if state_bits else {}
    reference = make_net(kind, num_bits, **quant, **neuron)
    dyadic_weights_(reference, generator)
    fast = copy.deepcopy(reference)
    reference.execution = "reference"
    return reference, fast, generator


def assert_membranes_on_levels(net, layers):
    levels = net.head.state_levels
    if levels is not None:
        assert all(torch.isin(mem, levels).all() for _, mem in layers)


@pytest.mark.parametrize("kind", ["image", "event"])
@pytest.mark.parametrize("num_bits, state_bits", [(None, None), (4, None), (None, 8), (4, 4), (4, 8)])
def test_fast_equals_reference(kind, num_bits, state_bits):
    """Eval mode, then a train-mode forward and backward: the check the bench and notebook share."""
    reference, fast, generator = paired_nets(kind, num_bits, seed=1, state_bits=state_bits)
    x, steps = dyadic_input(kind, generator)
    labels = torch.randint(0, ARCHITECTURES[kind]["num_classes"], (x.shape[-4],), generator=generator)
    agreement = compare_executions(reference, x, steps, labels=labels)
    assert_executions_agree(agreement)
    with torch.no_grad():
        assert_membranes_on_levels(fast, fast.eval()(x, steps, record=True))


# Three conv layers with every per-layer setting mixed: kernels 5, 3, 3; padding 0, 1, 1; pools 2, 1, 4 (a
# 4x4 pool divides by 16, still exact; DVS's 14x14 map floors to 3x3 under it); 8-bit, 4-bit, 2-bit convs.
THREE_CONV = dict(channels=(4, 6, 8), kernel_size=[5, 3, 3], padding=[0, 1, 1], pool=[2, 1, 4],
                  num_bits=[8, 4, 2, 4])


def dyadic_per_layer_weights_(net, generator, bits):
    """Codes in [-(2^(b-1) - 1), 2^(b-1) - 1] with one at the top, times 2^-b: each b-bit scale is exactly 2^-b."""
    with torch.no_grad():
        for layer, b in zip((*[block.conv for block in net.blocks], net.head.fc), bits):
            top = 2 ** (b - 1) - 1
            q = torch.randint(-top, top + 1, layer.weight.shape, generator=generator).float()
            q.view(-1)[0] = top
            layer.weight.copy_(q * 2.0 ** -b)


@pytest.mark.parametrize("kind", ["image", "event"])
def test_three_conv_fast_equals_reference(kind):
    generator = torch.Generator().manual_seed(1)
    sizes = {k: ARCHITECTURES[kind][k] for k in ("in_channels", "input_size", "num_classes")}
    net = QSNN(**sizes, **THREE_CONV, dropout=0.0, **NEURON)
    dyadic_per_layer_weights_(net, generator, THREE_CONV["num_bits"])
    x, steps = dyadic_input(kind, generator, batch=4, steps=6)
    labels = torch.randint(0, sizes["num_classes"], (4,), generator=generator)
    agreement = compare_executions(net, x, steps, labels=labels)
    side = 12 if kind == "image" else 14  # conv2 keeps conv1's map (3x3, padding 1, no pool); conv3 pools by 4
    assert [layer.elements for layer in agreement.layers] == [e * 6 * 4 for e in (
        4 * side * side, 6 * side * side, 8 * 3 * 3, sizes["num_classes"])]
    assert_executions_agree(agreement)


@pytest.mark.parametrize("time_chunk", [1, 3, 0])
def test_time_chunk_does_not_change_results(time_chunk):
    reference, _, generator = paired_nets("event", 4)
    x, _ = dyadic_input("event", generator)
    assert all(layer.identical for layer in compare_executions(reference, x, time_chunk=time_chunk).layers)


def test_real_valued_inputs_agree_up_to_rounding():
    # Arbitrary float weights: the executions may differ by float rounding only.
    torch.manual_seed(0)
    reference = make_net("image", 4, threshold=1.0)
    fast = copy.deepcopy(reference)
    reference.execution = "reference"
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        ref_layers = reference.eval()(x, 8, record=True)
        fast_layers = fast.eval()(x, 8, record=True)
    ref_mem, mem = ref_layers[0][1], fast_layers[0][1]
    flipped = ref_layers[0][0] != fast_layers[0][0]
    # A spike may differ only where the membrane sat within rounding of the threshold.
    assert ((ref_mem[flipped] - 1.0).abs() < 1e-4).all()
    if not flipped.any():
        torch.testing.assert_close(mem, ref_mem, rtol=0, atol=1e-4)


@pytest.mark.parametrize("change, words", [
    (lambda net: setattr(net.blocks[1].lif, "spike_grad", surrogate.atan()),
     "blocks.1: a surrogate other than fast_sigmoid"),
    (lambda net: setattr(net.head.lif, "inhibition", True), "head: inhibition or graded spikes"),  # dense only
    (lambda net: setattr(net.blocks[1].lif, "graded_spikes_factor", torch.tensor(0.5)),
     "blocks.1: inhibition or graded spikes"),
    (lambda net: setattr(net.blocks[1], "lif", snn.Lapicque(beta=0.75, threshold=1.0)),
     "blocks.1: Lapicque neurons"),
])
def test_fast_execution_steps_neuron_settings_it_does_not_fuse(change, words):
    """What the fused path lacks runs by stepping the neuron module (with a warning): still the reference's spikes."""
    reference, _, generator = paired_nets("image", 4)
    change(reference)
    x, steps = dyadic_input("image", generator, batch=2, steps=4)
    with pytest.warns(UserWarning, match=f"fast execution steps these neurons .*{words}"):
        agreement = compare_executions(reference, x, steps)
    assert all(layer.identical for layer in agreement.layers), agreement.layers


def test_inference_without_record_keeps_two_membranes_and_the_same_outputs():
    """forward(record=False) under no_grad lets hidden Leaky layers keep two membranes; the outputs are the same."""
    reference, fast, generator = paired_nets("image", 4, seed=3)
    x, steps = dyadic_input("image", generator)
    with torch.no_grad():
        layers = fast.eval()(x, steps, record=True)
        spikes, mem = fast(x, steps)
    assert torch.equal(spikes, layers[-1][0]) and torch.equal(mem, layers[-1][1])
    current = torch.randn(5, 3, 4, 2, 2, generator=generator)
    beta, threshold = torch.tensor(0.75), torch.tensor(0.5)
    full_spikes, full_mem = lif_sequence(current, beta, threshold, 5.0)
    with torch.no_grad():
        two_spikes, two_mem = lif_sequence(current, beta, threshold, 5.0, keep_membrane=False)
    assert torch.equal(full_spikes, two_spikes) and two_mem.shape[0] == 2
    assert torch.equal(two_mem[(5 - 1) % 2], full_mem[-1])  # the last step's membrane is in its slot
    trained = current.clone().requires_grad_()
    kept = lif_sequence(trained, beta, threshold, 5.0, keep_membrane=False)[1]  # a backward needs them all
    assert kept.shape[0] == 5

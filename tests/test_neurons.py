"""The neuron options (reset, surrogate, learnable beta/threshold, Synaptic): the fast execution against snnTorch.

Forward equality is bit for bit on the dyadic setting of tests/test_models.py (alpha 0.5 keeps the
synaptic current dyadic); gradients, including those of learnable beta and threshold, to float tolerance.
"""
import runpy
from pathlib import Path

import pytest
import snntorch as snn
import torch

from qsnn.core.equivalence import compare_executions
from qsnn.core.models import build_model
from qsnn.core.neurons import lif_sequence, synaptic_sequence
from qsnn.core.surrogates import spike_function
from qsnn.deploy.convert import check_supported_config, neuron_constants
from qsnn.errors import UserError
from qsnn.runs.config import parse_args, validate
from qsnn.runs.schema import SCHEMA
from test_models import ARCHITECTURES, assert_executions_agree, dyadic_input, make_net, paired_nets

MNIST_RUN = Path(__file__).resolve().parents[1] / "mnist" / "run.py"
PARAM = {"fast_sigmoid": 5.0, "atan": 2.0, "sigmoid": 5.0, "triangular": None, "straight_through": None}

OPTIONS = {
    "zero": dict(reset_mechanism="zero"),
    "none": dict(reset_mechanism="none"),
    "atan": dict(surrogate="atan", surrogate_alpha=3.0),
    "sigmoid": dict(surrogate="sigmoid", slope=2.0),  # snnTorch's exp(-k x) overflows (NaN) for k x < -88
    "triangular": dict(surrogate="triangular"),
    "straight_through": dict(surrogate="straight_through"),
    "learn_beta": dict(learn_beta=True),
    "learn_threshold": dict(learn_threshold=True),
    "learn_both_per_channel": dict(learn_beta=True, learn_threshold=True, learn_per_channel=True),
    "synaptic": dict(neuron="synaptic", alpha=0.5),
    "synaptic_zero_learned": dict(neuron="synaptic", alpha=0.5, reset_mechanism="zero", learn_beta=True,
                                  learn_threshold=True, learn_per_channel=True),
    "synaptic_none_atan": dict(neuron="synaptic", alpha=0.5, reset_mechanism="none", surrogate="atan"),
    "state_bits_zero_learned": dict(state_bits=4, reset_mechanism="zero", learn_threshold=True),
}


@pytest.mark.parametrize("kind", ["image", "event"])
@pytest.mark.parametrize("option", OPTIONS)
def test_fast_equals_reference_for_every_neuron_option(kind, option):
    reference, _, generator = paired_nets(kind, 4, seed=1, **OPTIONS[option])
    assert not reference.unsupported_by_fast()  # fused, not stepped
    x, steps = dyadic_input(kind, generator, batch=4, steps=8)
    labels = torch.randint(0, ARCHITECTURES[kind]["num_classes"], (x.shape[-4],), generator=generator)
    agreement = compare_executions(reference, x, steps, labels=labels)
    if option == "straight_through":
        # The spike gradient no longer depends on the membrane, so the first BatchNorm's bias gradient is a sum
        # of per-channel zero-mean gradients: analytically 0, float noise (1e-5 against 1e2) in both executions.
        del agreement.train.grad_rel_diff["blocks.0.bn.bias"]
    assert_executions_agree(agreement)
    learned = [name for name in agreement.train.grad_rel_diff if name.endswith((".beta", ".threshold"))]
    wanted = sum(OPTIONS[option].get(k, False) for k in ("learn_beta", "learn_threshold"))
    assert len(learned) == 3 * wanted  # every layer's learnable beta / threshold compared too


def snntorch_run(neuron, current, steps):
    """snnTorch's neuron stepped over time (the static current at every step, or current[t])."""
    state = neuron.reset_mem()
    state = state if isinstance(state, tuple) else (state,)
    spikes, mems = [], []
    for t in range(steps):
        spk, *state = neuron(current if current.dim() == 2 else current[t], *state)
        spikes.append(spk)
        mems.append(state[-1])
    return torch.stack(spikes), torch.stack(mems)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("surrogate", list(PARAM))
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("kind", ["leaky", "synaptic"])
def test_sequences_match_snntorch_with_learnable_parameters(kind, reset, surrogate, static):
    """Real-valued currents: same operations, so bit-identical forward; gradients of I, beta and thr to tolerance."""
    torch.manual_seed(0)
    steps = 7
    current = torch.randn((4, 5) if static else (steps, 4, 5), requires_grad=True)
    beta = torch.nn.Parameter(torch.rand(5) * 0.5 + 0.4)
    threshold = torch.nn.Parameter(torch.rand(5) * 0.5 + 0.5)
    options = dict(spike_grad=spike_function(surrogate, PARAM[surrogate]), reset_mechanism=reset,
                   learn_beta=True, learn_threshold=True)
    if kind == "leaky":
        neuron = snn.Leaky(beta=beta.detach().clone(), threshold=threshold.detach().clone(), **options)
        spk, mem = lif_sequence(current, beta, threshold, PARAM[surrogate], steps if static else None,
                                reset=reset, surrogate=surrogate)
    else:
        neuron = snn.Synaptic(alpha=0.7, beta=beta.detach().clone(), threshold=threshold.detach().clone(), **options)
        spk, mem = synaptic_sequence(current, neuron.alpha, beta, threshold, PARAM[surrogate],
                                     steps if static else None, reset=reset, surrogate=surrogate)
    ref_spk, ref_mem = snntorch_run(neuron, current, steps)
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem) and 0 < ref_spk.sum() < ref_spk.numel()
    weights = torch.randn_like(ref_spk)
    ref_grads = torch.autograd.grad((ref_spk * weights).sum() + ref_mem.pow(2).sum(),
                                    (current, neuron.beta, neuron.threshold))
    grads = torch.autograd.grad((spk * weights).sum() + mem.pow(2).sum(), (current, beta, threshold))
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_beta_outside_unit_interval_is_clamped_with_no_gradient():
    current = torch.tensor([[0.5], [0.5], [0.5]])
    beta = torch.nn.Parameter(torch.tensor(1.5))
    _, mem = lif_sequence(current, beta, torch.tensor(5.0), 1.0)
    mem.sum().backward()
    assert mem.flatten().tolist() == [0.5, 1.0, 1.5] and beta.grad == 0  # beta 1, as snnTorch's clamp


def test_zero_reset_by_hand():
    # beta 0.5, thr 1: 1.5 spikes; the zeroed membrane decays to 0 and takes 0.5; then 0.5 * 0.5 + 1.0 spikes.
    current = torch.tensor([[1.5], [0.5], [1.0]])
    spk, mem = lif_sequence(current, torch.tensor(0.5), torch.tensor(1.0), 5.0, reset="zero")
    assert mem.flatten().tolist() == [1.5, 0.5, 1.25] and spk.flatten().tolist() == [1.0, 0.0, 1.0]
    _, subtracted = lif_sequence(current, torch.tensor(0.5), torch.tensor(1.0), 5.0)
    assert subtracted.flatten().tolist() == [1.5, 0.25, 1.125]  # 0.75 + 0.5 - 1; 0.125 + 1


def test_synaptic_by_hand():
    # alpha = beta = 0.5, thr 1, I = 1, 0.5, 0: syn 1, 1, 0.5; mem 1 (no spike: not > 1), 0.5 + 1 = 1.5 (spike),
    # then subtract: 0.75 + 0.5 - 1 = 0.25; zero: snnTorch zeroes the whole update 0.75 + 0.5.
    current = torch.tensor([[1.0], [0.5], [0.0]])
    half, one = torch.tensor(0.5), torch.tensor(1.0)
    spk, mem = synaptic_sequence(current, half, half, one, 5.0)
    assert mem.flatten().tolist() == [1.0, 1.5, 0.25] and spk.flatten().tolist() == [0.0, 1.0, 0.0]
    _, zeroed = synaptic_sequence(current, half, half, one, 5.0, reset="zero")
    assert zeroed.flatten().tolist() == [1.0, 1.5, 0.0]
    _, integrated = synaptic_sequence(current, half, half, one, 5.0, reset="none")
    assert integrated.flatten().tolist() == [1.0, 1.5, 1.25]


@pytest.mark.parametrize("swap, words", [
    (lambda net: setattr(net.head, "lif", snn.Leaky(beta=0.75, inhibition=True)), "head: inhibition"),
    (lambda net: setattr(net.blocks[0], "lif", snn.Alpha(alpha=0.75, beta=0.5, threshold=0.5)),
     "blocks.0: Alpha neurons"),
    (lambda net: setattr(net.blocks[1], "lif", snn.Synaptic(alpha=0.5, beta=0.75, learn_alpha=True)),
     "blocks.1: a Synaptic neuron with learnable alpha"),
])
@pytest.mark.filterwarnings("ignore:Inhibition is an unstable feature")
def test_stepped_fallback_equals_reference(swap, words):
    reference, _, generator = paired_nets("image", 4, seed=2)
    swap(reference)
    x, steps = dyadic_input("image", generator, batch=4, steps=6)
    labels = torch.randint(0, 10, (4,), generator=generator)
    with pytest.warns(UserWarning, match=f"steps these neurons .*{words}"):
        agreement = compare_executions(reference, x, steps, labels=labels)
    for layers in (agreement.layers, agreement.train.layers):
        assert all(layer.spikes > 0 and layer.identical for layer in layers), layers
    assert agreement.train.worst_gradient()[1] < 1e-4


def test_synaptic_with_state_bits_is_stepped_and_exact():
    reference, _, generator = paired_nets("image", 4, seed=1, state_bits=4, neuron="synaptic", alpha=0.5)
    assert all("Synaptic neuron with learnable alpha or state quantization" in p
               for p in reference.unsupported_by_fast())
    x, steps = dyadic_input("image", generator, batch=4, steps=6)
    with pytest.warns(UserWarning):
        agreement = compare_executions(reference, x, steps)
    assert all(layer.identical for layer in agreement.layers)


def test_per_channel_shapes_and_build_model():
    cfg = dict(dataset="mnist", num_bits=4, beta=0.9, threshold=1.0, slope=5.0, dropout=0.0, batch_norm=True,
               execution="fast", time_chunk=0, neuron="synaptic", alpha=0.25, reset_mechanism="zero",
               surrogate="atan", surrogate_alpha=3.0, learn_beta=True, learn_threshold=True, learn_per_channel=True)
    net = build_model(cfg)
    lifs = [b.lif for b in net.blocks] + [net.head.lif]
    assert all(type(lif) is snn.Synaptic and float(lif.alpha) == 0.25 for lif in lifs)
    assert [tuple(lif.beta.shape) for lif in lifs] == [(c, 1, 1) for c in ARCHITECTURES["image"]["channels"]] + [(10,)]
    assert all(isinstance(lif.threshold, torch.nn.Parameter) for lif in lifs)
    assert net.surrogate == "atan" and net.surrogate_param == 3.0
    old = build_model({k: v for k, v in cfg.items() if k in ("dataset", "num_bits", "beta", "threshold", "slope",
                                                            "dropout", "batch_norm", "execution", "time_chunk")})
    lif = old.head.lif  # a config written before the neuron keys: the paper's Leaky
    assert type(lif) is snn.Leaky and lif.reset_mechanism == "subtract" and not isinstance(lif.beta, torch.nn.Parameter)


def test_defaults_reproduce_the_paper_neuron():
    net = make_net("image", 4)
    assert all(type(m.lif) is snn.Leaky and m.lif.beta.dim() == 0 for m in [*net.blocks, net.head])
    assert net.surrogate == "fast_sigmoid" and net.surrogate_param == 5.0
    assert SCHEMA["reset_mechanism"].default == "subtract" and SCHEMA["neuron"].default == "leaky"


@pytest.mark.parametrize("key, value, allowed", [
    ("reset_mechanism", "foo", "choose one of subtract, zero, none"),
    ("surrogate", "relu", "choose one of fast_sigmoid, atan, sigmoid, triangular, straight_through"),
    ("neuron", "izhikevich", "choose one of leaky, synaptic"),
    ("alpha", 1.5, "must be within [0, 1]"),
    ("surrogate_alpha", 0.0, "must be > 0"),
])
def test_bad_neuron_values_are_refused_in_one_line(tmp_path, key, value, allowed):
    defaults = {**runpy.run_path(str(MNIST_RUN))["config"], "output_dir": str(tmp_path)}
    cfg, _ = parse_args(defaults, [f"--{key}", str(value)])
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert str(err.value).splitlines() == [f"--{key} {value!r} is not allowed; {allowed}"]


@pytest.mark.parametrize("change", [dict(learn_beta=True), dict(learn_threshold=True), dict(neuron="synaptic"),
                                    dict(reset_mechanism="zero"), dict(reset_mechanism="none")])
def test_integer_export_refuses_neuron_options(change):
    base = {key.name: key.default for key in SCHEMA.values()}
    check_supported_config(base)  # every new key at its default: accepted
    check_supported_config({**base, "surrogate": "atan", "learn_per_channel": True})  # training-only settings
    with pytest.raises(UserError, match=f"config key '{next(iter(change))}' = .* is not implemented"):
        check_supported_config({**base, **change})
    with pytest.raises(UserError, match="integer export implements"):
        neuron_constants(make_net("image", 4, **change, **({"learn_per_channel": True} if "learn_beta" in change
                                                          or "learn_threshold" in change else {})))

"""The snnTorch neuron modules of a QSNN: how one is built from the config keys, whether the fast execution's
fused Functions (qsnn.core.neurons) implement it, and running it over all time steps (fused or stepped)."""
import snntorch as snn
import torch
from torch import nn

from qsnn.core.neurons import lif_sequence, step_sequence, synaptic_sequence
from qsnn.errors import UserError

def run_neuron(lif, current, fused, num_steps=None, state_levels=None, keep_membrane=True):
    """Fast: the neuron over every step of `current`, by its fused Function (fused: a dict) or by stepping lif.

    keep_membrane=False: the caller discards the membranes (a Leaky may then keep only the last two steps)."""
    if fused is None:
        return step_sequence(lif, current, num_steps)
    common = dict(reset=fused["reset"], surrogate=fused["surrogate"])
    if isinstance(lif, snn.Synaptic):
        return synaptic_sequence(current, lif.alpha, lif.beta, lif.threshold, fused["param"], num_steps, **common)
    return lif_sequence(current, lif.beta, lif.threshold, fused["param"], num_steps, state_levels,
                        keep_membrane=keep_membrane, **common)


# snnTorch 1.0 picks the reset from reset_mechanism once, in __init__ (setting reset_mechanism later
# changes only reset_mechanism_val): the state function it picked is what the neuron computes.
RESET_OF_STATE_FUNCTION = {"_base_sub": "subtract", "_base_zero": "zero", "_base_int": "none"}


def reset_of(lif):
    """The reset an snnTorch Leaky or Synaptic really applies ("subtract", "zero", "none"), or None if unknown."""
    function = getattr(lif, "state_function", None)
    if getattr(function, "__self__", None) is not lif:
        return None
    return RESET_OF_STATE_FUNCTION.get(function.__name__)


def make_neuron(kind, shape, beta, threshold, spike_grad, reset_mechanism="subtract", learn_beta=False,
                learn_threshold=False, learn_per_channel=False, alpha=0.9, state_quant=False):
    """The snnTorch neuron of one layer whose output has `shape` per sample's channel axis ([C, 1, 1] or [classes]).

    With learn_per_channel, a learnable beta or threshold holds one value per output channel."""
    if learn_per_channel:
        beta = torch.full(shape, float(beta)) if learn_beta else beta
        threshold = torch.full(shape, float(threshold)) if learn_threshold else threshold
    kw = dict(beta=beta, threshold=threshold, spike_grad=spike_grad, reset_mechanism=reset_mechanism,
              learn_beta=learn_beta, learn_threshold=learn_threshold, state_quant=state_quant)
    if kind == "synaptic":
        return snn.Synaptic(alpha=alpha, **kw)
    if kind == "leaky":
        return snn.Leaky(**kw)
    raise UserError(f"--neuron {kind!r} is not allowed; must be one of leaky, synaptic")


def neuron_problems(lif, spike_grad, surrogate_text, quantized):
    """Why the fused Functions do not implement `lif` (built with spike_grad; quantized: state_bits set); [] if they do."""
    problems = []
    if type(lif) not in (snn.Leaky, snn.Synaptic):
        return [f"{type(lif).__name__} neurons"]
    if reset_of(lif) is None:
        problems.append(f"a state function {lif.state_function.__name__}")
    if not lif.reset_delay or lif.init_hidden:
        problems.append(f"reset_delay={lif.reset_delay}, init_hidden={lif.init_hidden}")
    if lif.spike_grad is not spike_grad:
        problems.append(f"a surrogate other than {surrogate_text}")
    if lif.inhibition or isinstance(lif.graded_spikes_factor, nn.Parameter) \
            or float(lif.graded_spikes_factor) != 1.0:
        problems.append("inhibition or graded spikes")
    if isinstance(lif, snn.Synaptic) and (isinstance(lif.alpha, nn.Parameter) or lif.state_quant):
        problems.append("a Synaptic neuron with learnable alpha or state quantization")
    if bool(lif.state_quant) != quantized:
        problems.append("a state quantizer other than state_bits'")
    return problems

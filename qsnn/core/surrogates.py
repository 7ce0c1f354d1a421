"""The surrogate gradients a network may train with: snnTorch's spike function, and its backward for the fast path.

Every one spikes where mem - thr > 0 (forward); they differ in d spk / d(mem - thr), here computed
with snnTorch 1.0's own expressions (`snntorch.surrogate`) so both executions' gradients agree:

    fast_sigmoid(k)       1 / (k |x| + 1)^2                     (the paper's; k = slope)
    atan(a)               a / 2 / (1 + (pi / 2 a x)^2)           (a = surrogate_alpha)
    sigmoid(k)            k exp(-k x) / (exp(-k x) + 1)^2       (k = slope; inf / inf = NaN for k x < -88 in
                                                                  float32, in snnTorch as here)
    triangular()          +1 for x < 0, -1 for x >= 0           (snnTorch 1.0's Triangular, threshold 1)
    straight_through      1
"""
import math

import torch
from snntorch import surrogate as snn_surrogate

from qsnn.core.neuron_names import SURROGATES


def surrogate_parameter(name, slope, alpha):
    """The one parameter the surrogate `name` takes: slope, surrogate_alpha, or None."""
    return {"fast_sigmoid": slope, "sigmoid": slope, "atan": alpha}.get(name)


def spike_function(name, param):
    """snnTorch's spike function (a neuron's spike_grad) for surrogate `name` with its parameter."""
    if name == "fast_sigmoid":
        return snn_surrogate.fast_sigmoid(slope=param)
    if name == "atan":
        return snn_surrogate.atan(alpha=param)
    if name == "sigmoid":
        return snn_surrogate.sigmoid(slope=param)
    if name == "triangular":
        return snn_surrogate.triangular()
    if name == "straight_through":
        return snn_surrogate.straight_through_estimator()
    raise ValueError(f"unknown surrogate {name!r}; one of {', '.join(SURROGATES)}")


def surrogate_grad(name, param, x, grad_spk):
    """grad_spk * d spk / dx for every element of x = mem - thr (x is consumed); zeros where grad_spk is None."""
    if grad_spk is None:
        return x.zero_()
    if name == "fast_sigmoid":
        x.abs_().mul_(param).add_(1.0)
        x.mul_(x)
        return torch.div(grad_spk, x, out=x)
    if name == "atan":
        x.mul_(math.pi / 2 * param).pow_(2).add_(1)
        return torch.div(param / 2, x).mul_(grad_spk)
    if name == "sigmoid":
        decay = x.mul_(-param).exp_()
        return grad_spk * param * decay / (decay + 1) ** 2
    if name == "triangular":
        return torch.where(x >= 0, -grad_spk, grad_spk)
    if name == "straight_through":
        return grad_spk.clone()
    raise ValueError(f"unknown surrogate {name!r}; one of {', '.join(SURROGATES)}")

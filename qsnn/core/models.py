"""The paper's quantized spiking networks, with a reference and a fast execution of the same maths.

Every conv layer is `conv (no bias, zero padding p) -> s x s avg-pool -> BatchNorm (optional) -> LIF`
and the head is `flatten -> linear (no bias) -> dropout -> LIF`. The paper's networks have two conv
layers with 5x5 kernels, no padding and 2x2 pools; the config keys conv_channels, kernel_size,
padding, pool and a per-layer num_bits describe others (`conv_layers`, `map_sizes`). Tensors are
time-first: `[T, B, C, H, W]`.

- reference: the paper's formulation. Each layer module is called once per time step, so
  Brevitas re-quantizes the weights and BatchNorm updates its running statistics T times.
- fast: the layers run one after the other over all time steps (SpikingJelly's multi-step
  mode). Weights are quantized once per forward, each s x s average pool is folded into its
  convolution (a stride-s conv with a (k+s-1)x(k+s-1) kernel: 6x6 at stride 2 for the paper's),
  a static input's first layer is computed once, and the LIF recurrence runs in one autograd
  Function (`qsnn.core.neurons`).

With `state_bits`, both executions quantize every membrane after each update to the levels of
snnTorch's `state_quant` (the reference through `snn.Leaky(state_quant=...)`).

The neuron keys (`neuron`, `reset_mechanism`, `surrogate`, `learn_beta`, `learn_threshold`,
`learn_per_channel`, `alpha`) choose the snnTorch neuron the reference steps; the fast execution runs
the same maths in `qsnn.core.neurons`, and steps the module itself for any neuron it does not fuse.
"""
import inspect
import logging
import warnings

# Brevitas imports torch.utils.cpp_extension, which warns on every CPU-only machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import brevitas.nn as qnn  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
from brevitas.quant.binary import SignedBinaryWeightPerTensorConst
from torch import nn

from qsnn.errors import UserError
from qsnn.core.geometry import (ARCHITECTURE_DEFAULTS, architecture, config_layers, conv_layers,  # noqa: F401
                                geometry_problem, layer_bits, map_sizes, per_layer)  # (re-exported)
from qsnn.core.neuron_modules import make_neuron, neuron_problems, reset_of, run_neuron
from qsnn.core.neurons import neuron_step, snntorch_state_quant, state_levels
from qsnn.core.precision import PRECISIONS, exact_kernel, exact_spike_layer, fold_pool_sum
from qsnn.core.surrogates import spike_function, surrogate_parameter


def quant_layer(kind, *args, num_bits, **kwargs):
    """A bias-free Conv2d/Linear: plain float when num_bits is None, else Brevitas-quantized weights."""
    plain, quant = {"conv": (nn.Conv2d, qnn.QuantConv2d), "linear": (nn.Linear, qnn.QuantLinear)}[kind]
    if num_bits is None:
        return plain(*args, bias=False, **kwargs)
    if num_bits == 1:
        # Brevitas' default integer quantizer divides by 2^(b-1) - 1 = 0 at one bit (NaN weights).
        return quant(*args, bias=False, weight_quant=SignedBinaryWeightPerTensorConst, **kwargs)
    return quant(*args, bias=False, weight_bit_width=num_bits, **kwargs)


def effective_weight(layer):
    """The weight the layer really multiplies by: dequantized for Brevitas layers (STE gradient)."""
    if isinstance(layer, (qnn.QuantConv2d, qnn.QuantLinear)):
        return layer.quant_weight().value
    return layer.weight


def weight_codes(layer):
    """(integer codes, per-output-channel scale [O], bit width) of a Brevitas layer, checked."""
    if not isinstance(layer, (qnn.QuantConv2d, qnn.QuantLinear)):
        raise UserError("full-precision weights (num_bits None) have no integer codes; the integer export "
                        "needs a quantized network (num_bits 1..16)")
    with torch.no_grad():
        quant = layer.quant_weight()
        codes = quant.int().cpu().numpy().astype(np.int64)
        scale = quant.scale.double().cpu().numpy().reshape(-1)
        bits, zero = int(quant.bit_width), quant.zero_point.cpu().numpy()
        value = quant.value.double().cpu().numpy()
    low, high = (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if np.any(zero != 0) or codes.min() < low or codes.max() > high or scale.size not in (1, len(codes)):
        raise UserError(f"{type(layer).__name__}: weight codes outside {bits}-bit signed integers "
                        "(or a zero point / scale layout the integer export does not implement)")
    scale = np.broadcast_to(scale, (len(codes),)).copy()
    if not np.allclose(codes * scale.reshape((-1,) + (1,) * (codes.ndim - 1)), value, rtol=1e-6, atol=0):
        raise UserError(f"{type(layer).__name__}: quant_weight() value is not int x scale")
    return codes, scale, bits


def fold_avg_pool(weight, pool=2):
    """Kernel K' with conv(x, K', stride s) == avg_pool_s(conv(x, K)): K correlated with an s x s box of 1/s^2.

    The padding of the conv stays as it is (it pads the input of both). pool 1 is K itself.
    """
    return weight if pool == 1 else fold_pool_sum(weight, pool) / pool**2


def integer_weight(layer, pool=1):
    """For compute_precision bf16: (fp32 weight with the pool folded in, differentiable; its integer codes
    (int32); the scale [O] with weight == codes * scale), from one quant_weight() call; None for float weights."""
    if not isinstance(layer, (qnn.QuantConv2d, qnn.QuantLinear)):
        return None
    quant = layer.quant_weight()
    codes = fold_pool_sum(quant.int().to(torch.int32), pool)  # int32: sums of 8-bit codes overflow int8
    scale = quant.scale.detach().float().reshape(-1).expand(len(codes)) / pool**2
    return fold_avg_pool(quant.value, pool), codes, scale.contiguous()


def exact_weights(layer, pool, exact, device, name):
    """(integer_weight(layer, pool), its exact kernel) for a spike-fed layer under compute_precision bf16;
    (None, None) when not asked for, and a warning naming the layer when it must stay fp32."""
    if not exact:
        return None, None
    found = integer_weight(layer, pool)
    kernel, why = exact_kernel(found[1], device) if found else (None, "float weights have no integer codes")
    if kernel is None:
        warnings.warn(f"compute_precision bf16: {name} stays fp32 ({why})", stacklevel=5)
    return found, kernel


def batch_norm_static(x, bn, num_steps):
    """BatchNorm of an input that is identical at all num_steps steps, as T sequential calls would leave it."""
    if not bn.training:
        return bn(x)
    # T updates with the same statistics s: r <- (1-m)^T r + (1 - (1-m)^T) s, in one call.
    momentum = bn.momentum
    bn.momentum = 1 - (1 - momentum) ** num_steps
    try:
        out = bn(x)  # also right for SyncBatchNorm, whose statistics span all ranks
    finally:
        bn.momentum = momentum
    bn.num_batches_tracked.add_(num_steps - 1)
    return out


def batch_norm_over_time(x, bn):
    """BatchNorm of a [T, B, C, H, W] sequence with per-time-step batch statistics, as T calls would."""
    steps, batch, channels = x.shape[:3]
    if not bn.training:
        return bn(x.flatten(0, 1)).view(x.shape)
    if isinstance(bn, nn.SyncBatchNorm):  # statistics across ranks: one synchronised call per step
        return torch.stack([bn(x_t) for x_t in x.unbind(0)])
    # Each (step, channel) pair becomes one channel of a [B, T*C, H, W] batch: one kernel call
    # computes every step's statistics, with the same arithmetic as T separate calls.
    by_sample = x.transpose(0, 1).reshape(batch, steps * channels, *x.shape[3:])
    out = F.batch_norm(by_sample, None, None, bn.weight.repeat(steps), bn.bias.repeat(steps),
                       True, 0.0, bn.eps)
    with torch.no_grad():
        variances, means = torch.var_mean(x, (1, 3, 4), unbiased=True)  # running_var is unbiased
        _update_running_stats(bn, means, variances)
    return out.view(batch, steps, *x.shape[2:]).transpose(0, 1)  # back to [T, B, C, H, W]


def _update_running_stats(bn, means, variances):
    """Apply T sequential running-statistics updates (rows of means/variances, [T, C]) in closed form."""
    steps = means.shape[0]
    keep = 1 - bn.momentum
    # The statistics of step t are weighted m * (1-m)^(T-1-t); the old value (1-m)^T.
    weights = bn.momentum * keep ** torch.arange(steps - 1, -1, -1, device=means.device, dtype=means.dtype)
    bn.running_mean.mul_(keep**steps).add_(weights @ means)
    bn.running_var.mul_(keep**steps).add_(weights @ variances)
    bn.num_batches_tracked.add_(steps)


class SpikingConvBlock(nn.Module):
    """conv k x k (no bias, zero padding) -> avg-pool s x s (none for s = 1) -> BatchNorm (optional) -> LIF."""

    def __init__(self, in_channels, out_channels, kernel_size, num_bits, batch_norm, lif, levels=None,
                 padding=0, pool=2):
        super().__init__()
        self.conv = quant_layer("conv", in_channels, out_channels, kernel_size, num_bits=num_bits,
                                padding=padding)
        self.padding, self.pool_size = padding, pool
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.lif = lif  # an snnTorch neuron module
        self.register_buffer("state_levels", levels, persistent=False)  # membrane levels, or None

    def step(self, x, state):
        """Reference: one time step on x [B, C, H, W]; returns (spk, mem, state)."""
        current = self.pool(self.conv(x))
        if self.bn is not None:
            current = self.bn(current)
        return neuron_step(self.lif, current, state)

    def pooled_current(self, x, time_chunk=0, exact=False):
        """Fast: conv then pool as one strided conv (the pool folded in), for a static x [B, C, H, W]
        (one map) or every step of x [T, B, C, H, W]; what the BatchNorm then normalises.

        exact (0/1 spikes in x, compute_precision bf16): integer codes with exact sums where a kernel allows."""
        found, kernel = exact_weights(self.conv, self.pool_size, exact, x.device, "a conv layer")
        weight = found[0] if found else fold_avg_pool(effective_weight(self.conv), self.pool_size)
        if x.dim() == 4:
            return F.conv2d(x, weight, stride=self.pool_size, padding=self.padding)
        integer = (found[1], found[2], kernel) if kernel else None
        return conv_over_time(x, weight, time_chunk, self.pool_size, self.padding, integer)

    def run(self, x, fused, num_steps=None, time_chunk=0, exact=False, keep_membrane=True):
        """Fast: all steps of x [T, B, C, H, W], or of a static x [B, C, H, W] repeated num_steps times.

        `fused` (QSNN.fused_neuron) says how the neuron runs: its fused Function, or None to step it;
        `exact`: x holds 0/1 spikes and the layer computes on integer codes (compute_precision bf16)."""
        current = self.pooled_current(x, time_chunk, exact)
        if self.bn is not None:
            if num_steps is not None:
                current = batch_norm_static(current, self.bn, num_steps)
            else:
                current = batch_norm_over_time(current, self.bn)
        if num_steps is not None:
            # channels_last on CPU (after BatchNorm, which must round as the reference's NCHW calls do): the
            # LIF trace takes its current's layout, so the next conv reads these spikes without a copy
            current = current.contiguous(memory_format=channels_last_on(current))
        return run_neuron(self.lif, current, fused, num_steps, self.state_levels, keep_membrane)


def conv_over_time(x, weight, time_chunk, stride=2, padding=0, integer=None):
    """Conv (stride 2: the paper's folded pool) of every step of x [T, B, C, H, W], time_chunk steps per call
    (0: all at once). integer: (codes, scale, kernel) to run it exactly on 0/1 spikes (qsnn.core.precision)."""
    steps = x.shape[0]
    chunk = steps if time_chunk <= 0 else time_chunk
    layout = channels_last_on(x)
    weight = weight.contiguous(memory_format=layout)

    def conv(part):  # [t, B, C, H, W] -> [t, B, O, H', W']
        maps = part.flatten(0, 1)
        if integer is not None:
            codes, scale, kernel = integer
            out = exact_spike_layer(maps, weight, codes, scale, kernel, (stride, padding))
        else:
            out = F.conv2d(maps.contiguous(memory_format=layout), weight, stride=stride, padding=padding)
        return out.unflatten(0, part.shape[:2])

    # One call: no split (its backward would copy the whole input gradient). Several: split gives views;
    # indexing x[t] inside autograd would cost a full-size gradient per step.
    if chunk >= steps:
        return conv(x)
    return torch.cat([conv(part) for part in x.split(chunk, dim=0)], dim=0)


# oneDNN's NHWC (channels_last) kernels on CPU: a paper-MNIST training iteration 9% faster (0.547 against
# 0.600 s/it, 150 MiB less peak memory) and eval 8% faster than NCHW on the 2-core Intel Xeon (AMX) host,
# DVS unchanged (`bench/bench_speed.py --nchw` times both). GPUs keep torch's default layout: not measured.
CHANNELS_LAST_ON_CPU = True


def channels_last_on(x):
    """The memory format for the spike-fed convolutions of x's device."""
    return torch.channels_last if CHANNELS_LAST_ON_CPU and x.device.type == "cpu" else torch.contiguous_format


class SpikingHead(nn.Module):
    """flatten -> linear (no bias) -> dropout -> LIF: the output layer; its spikes vote for a class."""

    def __init__(self, in_features, num_classes, num_bits, dropout, lif, levels=None):
        super().__init__()
        self.fc = quant_layer("linear", in_features, num_classes, num_bits=num_bits)
        self.dropout = nn.Dropout(dropout)
        self.lif = lif  # an snnTorch neuron module
        self.register_buffer("state_levels", levels, persistent=False)  # membrane levels, or None

    def step(self, x, state):
        """Reference: one time step on x [B, ...]; returns (spk, mem, state)."""
        return neuron_step(self.lif, self.dropout(self.fc(x.flatten(1))), state)

    def run(self, x, fused, exact=False):
        """Fast: all steps of x [T, B, ...] in one matmul (exact: on integer codes, as SpikingConvBlock.run)."""
        found, kernel = exact_weights(self.fc, 1, exact, x.device, "the head")
        features, weights = _flat_features(x, [found[0], found[1]] if kernel else [effective_weight(self.fc)])
        if kernel:
            current = exact_spike_layer(features.flatten(0, 1), *weights, found[2], kernel).unflatten(0, x.shape[:2])
        else:
            current = F.linear(features, weights[0])
        return run_neuron(self.lif, self.dropout(current), fused, state_levels=self.state_levels)


def _flat_features(x, weights):
    """(x [T, B, ...] as [T, B, F] without a copy, the [O, F] weights with their columns in that order):
    a channels_last map [T, B, C, H, W] is read in (h, w, c) order."""
    if x.dim() == 5 and not x[0].is_contiguous() and x[0].is_contiguous(memory_format=torch.channels_last):
        channels, height, width = x.shape[2:]
        columns = [w.unflatten(1, (channels, height, width)).permute(0, 2, 3, 1).flatten(1) for w in weights]
        return x.permute(0, 1, 3, 4, 2).flatten(2), columns
    return x.flatten(2), weights


class QSNN(nn.Module):
    """Spiking conv blocks (the paper's: two) and a spiking linear head, with reference and fast executions.

    kernel_size, padding and pool take one value for every conv layer or a list with one per layer;
    num_bits one value (None: float) for every layer or a list: each conv layer's, then the head's.
    """

    def __init__(self, in_channels, channels, input_size, num_classes, num_bits=4, beta=0.9,
                 threshold=1.0, slope=25.0, dropout=0.0, batch_norm=True, kernel_size=5,
                 execution="fast", time_chunk=0, state_bits=None, padding=0, pool=2, neuron="leaky",
                 reset_mechanism="subtract", surrogate="fast_sigmoid", surrogate_alpha=2.0, learn_beta=False,
                 learn_threshold=False, learn_per_channel=False, alpha=0.9, compute_precision="fp32"):
        super().__init__()
        if compute_precision not in PRECISIONS:
            raise UserError(f"--compute_precision {compute_precision!r} is not allowed; use {' or '.join(PRECISIONS)}")
        self.compute_precision = compute_precision  # bf16: the fast path's spike-fed layers (qsnn.core.precision)
        layers = conv_layers(channels, kernel_size, padding, pool)
        problem = geometry_problem(input_size, layers)
        if problem:
            raise UserError(problem)
        bits = layer_bits(num_bits, len(layers))
        self.slope = slope
        # The one surrogate object: the reference's neurons call it, the fast backward computes its derivative.
        self.surrogate = surrogate
        self.surrogate_param = surrogate_parameter(surrogate, slope, surrogate_alpha)
        self.spike_grad = spike_function(surrogate, self.surrogate_param)
        options = dict(beta=beta, threshold=threshold, spike_grad=self.spike_grad, reset_mechanism=reset_mechanism,
                       learn_beta=learn_beta, learn_threshold=learn_threshold,
                       learn_per_channel=learn_per_channel, alpha=alpha)
        levels = None
        if state_bits is not None:  # the reference quantizes with snnTorch, the fast one with its levels
            options["state_quant"] = snntorch_state_quant(state_bits, threshold)
            levels = state_levels(state_bits, threshold)
        blocks, width = [], in_channels
        for (out, kernel, pad, pool_size), block_bits in zip(layers, bits):
            lif = make_neuron(neuron, (out, 1, 1), **options)
            blocks.append(SpikingConvBlock(width, out, kernel, block_bits, batch_norm, lif,
                                           None if levels is None else levels.clone(), pad, pool_size))
            width = out
        side = map_sizes(input_size, layers)[-1][1] if layers else input_size
        self.blocks = nn.ModuleList(blocks)
        self.head = SpikingHead(width * side * side, num_classes, bits[-1], dropout,
                                make_neuron(neuron, (num_classes,), **options), levels)
        self.execution = execution
        self.time_chunk = time_chunk

    def forward(self, x, num_steps=None, record=False):
        """x: static [B, C, H, W] shown at each of num_steps steps, or a sequence [T, B, C, H, W].

        Returns the output layer's (spikes, membrane), each [T, B, classes]; with record=True a
        list of (spikes, membrane) for every layer instead.
        """
        if (num_steps is None) == (x.dim() == 4):
            raise ValueError("give num_steps with a static [B, C, H, W] input and only then")
        if self.execution == "reference":
            layers = self._run_reference(x, num_steps)
        else:  # the hidden layers' membranes are needed only when recorded or for the backward
            layers = self._run_fast(x, num_steps, keep_membranes=record)
        return layers if record else layers[-1]

    def _run_reference(self, x, num_steps):
        modules = [*self.blocks, self.head]
        states = [m.lif.reset_mem() for m in modules]  # zero state at the start of every sample
        record = [([], []) for _ in modules]
        steps = x.unbind(0) if num_steps is None else [x] * num_steps
        for x_t in steps:
            out = x_t
            for i, module in enumerate(modules):
                out, mem, states[i] = module.step(out, states[i])
                record[i][0].append(out)
                record[i][1].append(mem)
        return [(torch.stack(spk), torch.stack(mem)) for spk, mem in record]

    def _run_fast(self, x, num_steps, keep_membranes=True):
        modules = [*self.blocks, self.head]
        problems = [self._neuron_problems(module) for module in modules]  # checked once per forward
        if any(problems):  # stepped: still exact, only slower
            warnings.warn(f"the fast execution steps these neurons one time step at a time (its fused path does "
                          f"not implement {'; '.join(self._named(problems))})", stacklevel=3)
        fused = [None if found else self.fused_neuron(module) for module, found in zip(modules, problems)]
        # A layer's input is 0/1 spikes when the layer before it fired through a fused neuron.
        spikes_in = [False] + [self.compute_precision == "bf16" and f is not None for f in fused[:-1]]
        layers, out = [], x
        for i, block in enumerate(self.blocks):
            out, mem = block.run(out, fused[i], num_steps if i == 0 else None, self.time_chunk, spikes_in[i],
                                 keep_membranes)
            layers.append((out, mem))
        layers.append(self.head.run(out, fused[-1], spikes_in[-1]))
        return layers

    def fused_neuron(self, module):
        """{"surrogate", "param", "reset"}: how the fused Functions run module.lif (one they implement exactly)."""
        return {"surrogate": self.surrogate, "param": self.surrogate_param, "reset": reset_of(module.lif)}

    def _neuron_problems(self, module):
        """Why module.lif (perhaps changed after construction) is not what the fused Functions implement."""
        return neuron_problems(module.lif, self.spike_grad, f"{self.surrogate}({self.surrogate_param or ''})",
                               module.state_levels is not None)

    def unsupported_by_fast(self):
        """Neuron settings (changed after construction) that the fused path does not implement: those layers'
        neurons are stepped instead (exact, slower)."""
        return self._named([self._neuron_problems(module) for module in [*self.blocks, self.head]])

    def _named(self, problems):
        """Each layer's problems (blocks, then the head) as "blocks.i: problem" / "head: problem"."""
        names = [*(f"blocks.{i}" for i in range(len(self.blocks))), "head"]
        return [f"{name}: {problem}" for name, found in zip(names, problems) for problem in found]


def build_model(cfg):
    """The network that a config dict describes, its input and output sizes from the dataset registry."""
    from qsnn.data import registry  # the data layer sits above the core: asked only when a config names a dataset

    return QSNN(**architecture(registry.get(cfg["dataset"]), cfg), num_bits=cfg["num_bits"], beta=cfg["beta"],
                threshold=cfg["threshold"], slope=cfg["slope"], dropout=cfg["dropout"],
                batch_norm=cfg["batch_norm"], execution=cfg["execution"],
                time_chunk=cfg["time_chunk"], state_bits=cfg.get("state_bits"),
                **{key: cfg.get(key, NEURON_DEFAULTS[key].default) for key in (*NEURON_KEYS, "compute_precision")})


# The neuron keywords of QSNN; a config written before a key existed (these, compute_precision) ran with its
# default here.
NEURON_KEYS = ("neuron", "reset_mechanism", "surrogate", "surrogate_alpha", "learn_beta", "learn_threshold",
               "learn_per_channel", "alpha")
NEURON_DEFAULTS = inspect.signature(QSNN).parameters

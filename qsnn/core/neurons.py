"""Spiking neurons over a whole sequence, with snnTorch's `Leaky` and `Synaptic` semantics.

snnTorch (`reset_delay=True`) computes, per step t, with reset_t = H(mem_{t-1} - thr) detached
(it equals spk_{t-1}) and beta, alpha clamped to [0, 1]:

    Leaky     subtract: mem_t = (beta mem_{t-1} + I_t) - thr reset_t
              zero:     mem_t = beta ((1 - reset_t) mem_{t-1}) + I_t     (the old membrane is zeroed)
              none:     mem_t = beta mem_{t-1} + I_t
    Synaptic  syn_t = alpha syn_{t-1} + I_t,  pre_t = beta mem_{t-1} + syn_t, and
              subtract: mem_t = pre_t - thr reset_t;  zero: mem_t = pre_t - pre_t reset_t;  none: pre_t
    spk_t = H(mem_t - thr), its gradient the surrogate's (`qsnn.core.surrogates`).

Running the recurrence inside one autograd Function keeps the forward loop free of autograd
bookkeeping; the backward is the short reverse recursion G_t = dL/dmem_t = direct_t +
(d mem_{t+1} / d mem_t) G_{t+1}, from which the input, beta and threshold gradients follow
(thr enters through the spike test and, for subtract, the reset term; the reset itself is detached).

With `state_bits` the membrane is quantized right after each update (`qsnn.core.state_quant`,
Leaky only); the quantizer's gradient is straight-through, so the backward is unchanged.

Any other neuron (a module swapped in after construction, a setting the Functions lack) runs
by stepping the module itself (`step_sequence`): the same calls as the reference execution.
"""
import torch

from qsnn.core.state_quant import (STATE_LOWER_LIMIT, STATE_UPPER_LIMIT, membrane_quantizer,  # noqa: F401
                                   nearest_level, snntorch_state_quant, state_levels)  # (re-exported)
from qsnn.core.neuron_names import NEURONS, RESETS, SURROGATES  # noqa: F401 (re-exported)
from qsnn.core.surrogates import surrogate_grad


def _new_trace(current, static, steps, shape):
    """An empty [steps, *shape] trace laid out per step as `current` is: a channels_last current (the
    spike-fed convolutions' layout on CPU) gives channels_last spikes, which the next conv reads without a copy."""
    step = current if static else current[0]
    if len(shape) == 4 and tuple(step.shape) == tuple(shape) and not step.is_contiguous() \
            and step.is_contiguous(memory_format=torch.channels_last):
        batch, channels, height, width = shape
        return current.new_empty((steps, batch, height, width, channels)).permute(0, 1, 4, 2, 3)
    return current.new_empty((steps, *shape))


def _reduce_to(grad, like):
    """Sum a [T, B, ...] gradient to the shape of a parameter that broadcast against [B, ...]."""
    return grad.sum(0).sum_to_size(like.shape) if like.dim() else grad.sum()


def _fire_grads(ctx, grad_spk, grad_mem, mem, threshold, keep_spike_part):
    """(dL/dmem_t directly: through each step's spike (the surrogate) plus the membranes' own gradient,
    the spike part alone or None): the threshold's gradient needs the spike part again."""
    spike_part = surrogate_grad(ctx.surrogate, ctx.param, torch.sub(mem, threshold), grad_spk)
    grad = spike_part.clone() if keep_spike_part else spike_part
    if grad_mem is not None:
        grad.add_(grad_mem)
    return grad, (spike_part if keep_spike_part else None)


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, reset, surrogate, param, num_steps, quantize, keep_membrane=True):
        static = num_steps is not None
        steps = num_steps if static else current.shape[0]
        shape = torch.broadcast_shapes(current.shape if static else current.shape[1:], beta.shape, threshold.shape)
        spk = _new_trace(current, static, steps, shape)
        # Without keep_membrane (inference that discards the membranes) two membranes take turns.
        slots = steps if keep_membrane else min(steps, 2)
        mem = _new_trace(current, static, slots, shape)
        # [T, ...] inputs are read step by step with unbind: a view per step, no copies.
        inputs = [current] * steps if static else current.unbind(0)
        for t, cur in enumerate(inputs):
            now, before = mem[t % slots], mem[(t - 1) % slots]
            # Written straight into the trace, in snnTorch's order of operations (same rounding).
            if t == 0:
                now.copy_(cur)  # beta * 0 + I, and no reset from a zero membrane
            elif reset == "zero":
                torch.mul(before, 1 - spk[t - 1], out=now).mul_(beta).add_(cur)
            else:
                torch.mul(before, beta, out=now).add_(cur)
                if reset == "subtract":
                    now.addcmul_(spk[t - 1], threshold, value=-1)
            if quantize is not None:
                now.copy_(quantize(now))
            torch.gt(now, threshold, out=spk[t])
        ctx.save_for_backward(mem, beta, threshold)
        ctx.reset, ctx.surrogate, ctx.param, ctx.static = reset, surrogate, param, static
        ctx.set_materialize_grads(False)
        return spk, mem

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        mem, beta, threshold = ctx.saved_tensors
        grad, spike_part = _fire_grads(ctx, grad_spk, grad_mem, mem, threshold, ctx.needs_input_grad[2])
        zero = ctx.reset == "zero"
        # reset_{t+1} = spk_t, needed only by the zero reset and the threshold's gradient
        fired = (mem > threshold).to(mem.dtype) if zero or spike_part is not None else None
        for t in range(grad.shape[0] - 2, -1, -1):
            if zero:
                grad[t].addcmul_(grad[t + 1] * (1 - fired[t]), beta)
            else:
                grad[t].addcmul_(grad[t + 1], beta)  # beta stays a tensor: no device sync
        grad_current = grad.sum(0) if ctx.static else grad
        grad_beta = None
        if ctx.needs_input_grad[1]:  # what beta multiplies: the old membrane, zeroed where it fired
            grad_beta = _reduce_to(grad[1:] * (mem[:-1] * (1 - fired[:-1]) if zero else mem[:-1]), beta)
        grad_threshold = _threshold_grad(ctx.reset, spike_part, threshold, grad, fired)
        return grad_current, grad_beta, grad_threshold, None, None, None, None, None, None


def _threshold_grad(reset, spike_part, threshold, grad_pre, fired):
    """dL/dthr: minus the spike tests' surrogate gradients, minus the subtracted resets' (grad_pre: dL/dpre_t)."""
    if spike_part is None:
        return None
    total = spike_part.neg_()
    if reset == "subtract":
        total[1:].addcmul_(grad_pre[1:], fired[:-1], value=-1)
    return _reduce_to(total, threshold)


class _SynapticSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, alpha, beta, threshold, reset, surrogate, param, num_steps):
        static = num_steps is not None
        steps = num_steps if static else current.shape[0]
        shape = torch.broadcast_shapes(current.shape if static else current.shape[1:], alpha.shape, beta.shape,
                                       threshold.shape)
        spk, mem = _new_trace(current, static, steps, shape), _new_trace(current, static, steps, shape)
        syn = torch.empty_like(mem[0])
        inputs = [current] * steps if static else current.unbind(0)
        for t, cur in enumerate(inputs):
            if t == 0:
                syn.copy_(cur)  # alpha * 0 + I
                mem[0].copy_(syn)  # beta * 0 + syn, and no reset from a zero membrane
            else:
                syn.mul_(alpha).add_(cur)
                torch.mul(mem[t - 1], beta, out=mem[t]).add_(syn)
                if reset == "subtract":
                    mem[t].addcmul_(spk[t - 1], threshold, value=-1)
                elif reset == "zero":
                    mem[t].sub_(mem[t] * spk[t - 1])  # snnTorch's pre - pre * reset
            torch.gt(mem[t], threshold, out=spk[t])
        ctx.save_for_backward(mem, alpha, beta, threshold)
        ctx.reset, ctx.surrogate, ctx.param, ctx.static = reset, surrogate, param, static
        ctx.set_materialize_grads(False)
        return spk, mem

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        mem, alpha, beta, threshold = ctx.saved_tensors
        grad, spike_part = _fire_grads(ctx, grad_spk, grad_mem, mem, threshold, ctx.needs_input_grad[3])
        fired = (mem > threshold).to(mem.dtype)
        # keep_t = d mem_t / d pre_t: 1, or 1 - reset_t for zero (the whole pre_t is reset).
        keep = torch.ones_like(mem)
        if ctx.reset == "zero":
            keep[1:] = 1 - fired[:-1]
        for t in range(grad.shape[0] - 2, -1, -1):
            grad[t].addcmul_(grad[t + 1] * keep[t + 1], beta)
        grad_pre = grad * keep  # dL/dpre_t = dL/dsyn_t through the membrane
        grad_syn = grad_pre.clone()
        for t in range(grad.shape[0] - 2, -1, -1):
            grad_syn[t].addcmul_(grad_syn[t + 1], alpha)
        grad_current = grad_syn.sum(0) if ctx.static else grad_syn
        grad_beta = _reduce_to(grad_pre[1:] * mem[:-1], beta) if ctx.needs_input_grad[2] else None
        grad_threshold = _threshold_grad(ctx.reset, spike_part, threshold, grad_pre, fired)
        return grad_current, None, grad_beta, grad_threshold, None, None, None, None


def lif_sequence(current, beta, threshold, slope, num_steps=None, state_levels=None, reset="subtract",
                 surrogate="fast_sigmoid", keep_membrane=True):
    """Run a Leaky layer over all time steps; returns (spikes, membrane), each [T, B, ...].

    `current` is [T, B, ...], or [B, ...] with `num_steps` set when the same current enters at
    every step. `beta` and `threshold` are tensors (a `snntorch.Leaky`'s buffers or parameters:
    gradients flow to them). `slope` is the surrogate's parameter (`qsnn.core.surrogates`).
    `state_levels` (from `state_levels`) quantizes the membrane after every update. keep_membrane=False
    (inference that discards the membranes): the returned membrane holds only the last two steps.
    """
    beta = beta.clamp(0, 1).to(current.dtype)  # snnTorch clamps beta in every forward
    threshold = threshold.to(current.dtype)
    quantize = None
    if state_levels is not None:
        quantize = membrane_quantizer(state_levels.to(current.dtype), current, threshold)
    if not keep_membrane and torch.is_grad_enabled() and (current.requires_grad or beta.requires_grad
                                                          or threshold.requires_grad):
        keep_membrane = True  # the backward needs every membrane
    return _LIFSequence.apply(current, beta, threshold, reset, surrogate, _param(slope), num_steps, quantize,
                              keep_membrane)


def synaptic_sequence(current, alpha, beta, threshold, param, num_steps=None, reset="subtract",
                      surrogate="fast_sigmoid"):
    """Run a Synaptic layer over all time steps (as `lif_sequence`); alpha's gradient is not computed."""
    alpha = alpha.detach().clamp(0, 1).to(current.dtype)
    beta, threshold = beta.clamp(0, 1).to(current.dtype), threshold.to(current.dtype)
    return _SynapticSequence.apply(current, alpha, beta, threshold, reset, surrogate, _param(param), num_steps)


def _param(value):
    """A surrogate parameter as a Python float (None for the parameter-free surrogates)."""
    return None if value is None else float(value)


def neuron_step(lif, current, state):
    """One step of any snnTorch neuron; state is what its reset_mem() returned. Returns (spk, mem, state).

    snnTorch neurons take (input, *state) and return (spk, *outputs), the membrane last; the new
    state is the last len(state) of (spk, *outputs) (RLeaky's state includes the spike).
    """
    states = state if isinstance(state, tuple) else (state,)
    spk, *outputs = lif(current, *states)
    new = (spk, *outputs)[-len(states):]
    return spk, outputs[-1], new if isinstance(state, tuple) else new[0]


def step_sequence(lif, current, num_steps=None):
    """The general fallback: step the neuron module over t from its own initial state; (spikes, membrane)."""
    state = lif.reset_mem()
    spikes, mems = [], []
    for cur in [current] * num_steps if num_steps is not None else current.unbind(0):
        spk, mem, state = neuron_step(lif, cur, state)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)

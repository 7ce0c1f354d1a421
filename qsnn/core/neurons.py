"""Leaky integrate-and-fire dynamics over a whole sequence, with snnTorch's semantics.

snnTorch's `Leaky` (reset by subtraction, `reset_delay=True`) computes, per step t,

    reset_t = H(mem_{t-1} - thr)            (detached: no gradient through the reset)
    mem_t   = beta * mem_{t-1} + I_t - thr * reset_t
    spk_t   = H(mem_t - thr)                (fast-sigmoid surrogate: d spk / d mem = 1 / (k |mem - thr| + 1)^2)

Since reset_t equals spk_{t-1}, the whole recurrence needs only the previous spike. Running it
inside one autograd Function keeps the forward loop free of autograd bookkeeping, and the
backward pass is the short reverse recursion

    G_t = dL/dmem_t = dL/dspk_t * surrogate(mem_t - thr) + dL/dmem_t (direct) + beta * G_{t+1},

with dL/dI_t = G_t (summed over t when the input current is the same at every step).

With `state_bits` set, snnTorch's `state_quant` replaces mem_t by the nearest of 2^bits uniform
levels right after the update (before the spike test). Its gradient is straight-through, so the
backward above is unchanged: it runs on the quantized membranes, as snnTorch's surrogate does.
"""
import torch
from snntorch.functional.quant import StateQuant, state_quant

# snnTorch's state_quant defaults: levels from -thr (lower_limit 0) to thr + 0.2 thr.
STATE_LOWER_LIMIT, STATE_UPPER_LIMIT = 0, 0.2


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, slope, num_steps, quantize):
        static = num_steps is not None
        steps = num_steps if static else current.shape[0]
        shape = current.shape if static else current.shape[1:]
        spk = current.new_empty((steps, *shape))
        mem = current.new_empty((steps, *shape))
        # [T, ...] inputs are read step by step with unbind: a view per step, no copies.
        inputs = [current] * steps if static else current.unbind(0)
        for t, cur in enumerate(inputs):
            # Written straight into the trace, in snnTorch's order of operations (same rounding).
            if t == 0:
                mem[0].copy_(cur)  # beta * 0 + I, and no reset from a zero membrane
            else:
                torch.mul(mem[t - 1], beta, out=mem[t])
                mem[t].add_(cur).addcmul_(spk[t - 1], threshold, value=-1)
            if quantize is not None:
                mem[t].copy_(quantize(mem[t]))
            torch.gt(mem[t], threshold, out=spk[t])
        ctx.save_for_backward(mem, beta, threshold)
        ctx.slope = slope
        ctx.static = static
        ctx.set_materialize_grads(False)
        return spk, mem

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        mem, beta, threshold = ctx.saved_tensors
        # snntorch.surrogate.FastSigmoid.backward for all steps at once, in one buffer.
        grad = torch.sub(mem, threshold).abs_().mul_(ctx.slope).add_(1.0)
        grad.mul_(grad)
        if grad_spk is None:
            grad.zero_()
        else:
            torch.div(grad_spk, grad, out=grad)
        if grad_mem is not None:
            grad.add_(grad_mem)
        for t in range(grad.shape[0] - 2, -1, -1):
            grad[t].addcmul_(grad[t + 1], beta)  # beta stays a tensor: no device sync
        grad_current = grad.sum(0) if ctx.static else grad
        return grad_current, None, None, None, None, None


def lif_sequence(current, beta, threshold, slope, num_steps=None, state_levels=None):
    """Run a LIF layer over all time steps; returns (spikes, membrane), each [T, B, ...].

    `current` is [T, B, ...], or [B, ...] with `num_steps` set when the same current enters at
    every step. `beta` and `threshold` are tensors (e.g. a `snntorch.Leaky`'s buffers).
    `state_levels` (from `state_levels`) quantizes the membrane after every update.
    """
    beta = beta.detach().clamp(0, 1).to(current.dtype)
    threshold = threshold.detach().to(current.dtype)
    quantize = None
    if state_levels is not None:
        quantize = membrane_quantizer(state_levels.to(current.dtype), current, threshold)
    return _LIFSequence.apply(current, beta, threshold, float(slope), num_steps, quantize)


def snntorch_state_quant(num_bits, threshold):
    """snnTorch's uniform membrane quantizer (the reference execution's `Leaky(state_quant=...)`)."""
    return state_quant(num_bits=num_bits, uniform=True, threshold=threshold,
                       lower_limit=STATE_LOWER_LIMIT, upper_limit=STATE_UPPER_LIMIT)


def state_levels(num_bits, threshold):
    """The 2^num_bits levels of `snntorch_state_quant(num_bits, threshold)`, same expression and rounding."""
    return torch.linspace(-threshold - threshold * STATE_LOWER_LIMIT,
                          threshold + threshold * STATE_UPPER_LIMIT, 2 << num_bits - 1)


def nearest_level(x, levels):
    """snnTorch's StateQuant forward (closest level, the lower one on a tie), without its [N, 2^bits] distances.

    The uniform spacing places x in its interval (levels[i], levels[i + 1]] to within one index,
    one comparison with each end corrects that, and the distances to both ends (computed as
    snnTorch computes them) choose. This is snnTorch's argmin whenever float rounding keeps
    the distances to different levels apart (see `membrane_quantizer`).
    """
    last = len(levels) - 1
    spacing = (levels[-1] - levels[0]) / last
    below = ((x - levels[0]) / spacing).floor_().clamp_(0, last - 1)
    estimate = below.long()
    below += (x > _take(levels, estimate + 1)).to(x.dtype)
    below -= (x <= _take(levels, estimate)).to(x.dtype)
    index = below.clamp_(0, last - 1).long()
    lower, upper = _take(levels, index), _take(levels, index + 1)
    index += (lower - x).abs_() > (upper - x).abs_()  # a tie keeps the lower level, as argmin does
    return _take(levels, index)


def _take(levels, index):
    """levels[index] for an index tensor of any shape (index_select: the fastest gather on CPU)."""
    return levels.index_select(0, index.view(-1)).view(index.shape)


def membrane_quantizer(levels, current, threshold):
    """The per-step quantizer for a layer fed `current`: `nearest_level`, or snnTorch's own when unsafe.

    A membrane before quantization is at most |I| + 2 max|level| + thr in size. While that stays
    below 2^22 times the smallest level gap, float32 rounding cannot make two levels' distances
    to it equal, so the nearest level (first on a tie) is what snnTorch's argmin picks. Beyond
    (a diverging network, or NaN) snnTorch's argmin breaks such ties towards the lowest level;
    then its StateQuant itself is used, so both executions still agree exactly.
    """
    levels = levels.to(current.device)
    largest = current.detach().abs().max() + 2 * levels.abs().max() + threshold
    smallest_gap = (levels[1:].double() - levels[:-1].double()).min()
    if bool(largest < smallest_gap * 2**22):  # one device sync per layer and forward
        return lambda mem: nearest_level(mem, levels)
    return lambda mem: StateQuant.apply(mem, levels)

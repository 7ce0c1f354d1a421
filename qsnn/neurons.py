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
"""
import torch


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, slope, num_steps):
        static = num_steps is not None
        steps = num_steps if static else current.shape[0]
        shape = current.shape if static else current.shape[1:]
        spk = current.new_empty((steps, *shape))
        mem_trace = current.new_empty((steps, *shape))
        mem = current.new_zeros(shape)
        # [T, ...] inputs are read step by step with unbind: a view per step, no copies.
        inputs = [current] * steps if static else current.unbind(0)
        for t, cur in enumerate(inputs):
            mem.mul_(beta).add_(cur)
            if t > 0:
                mem.sub_(spk[t - 1] * threshold)
            torch.gt(mem, threshold, out=spk[t])
            mem_trace[t].copy_(mem)
        ctx.save_for_backward(mem_trace, beta, threshold)
        ctx.slope = slope
        ctx.static = static
        ctx.set_materialize_grads(False)
        return spk, mem_trace

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        mem_trace, beta, threshold = ctx.saved_tensors
        # Same expression as snntorch.surrogate.FastSigmoid.backward, for all steps at once.
        if grad_spk is None:
            grad = torch.zeros_like(mem_trace)
        else:
            grad = grad_spk / (ctx.slope * torch.abs(mem_trace - threshold) + 1.0) ** 2
        if grad_mem is not None:
            grad = grad + grad_mem
        carry = torch.zeros_like(grad[0])
        for t in range(grad.shape[0] - 1, -1, -1):
            carry.mul_(beta).add_(grad[t])
            grad[t].copy_(carry)
        grad_current = grad.sum(0) if ctx.static else grad
        return grad_current, None, None, None, None


def lif_sequence(current, beta, threshold, slope, num_steps=None):
    """Run a LIF layer over all time steps; returns (spikes, membrane), each [T, B, ...].

    `current` is [T, B, ...], or [B, ...] with `num_steps` set when the same current enters at
    every step. `beta` and `threshold` are tensors (e.g. a `snntorch.Leaky`'s buffers).
    """
    beta = beta.detach().clamp(0, 1).to(current.dtype)
    threshold = threshold.detach().to(current.dtype)
    return _LIFSequence.apply(current, beta, threshold, float(slope), num_steps)

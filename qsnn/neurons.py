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
        return grad_current, None, None, None, None


def lif_sequence(current, beta, threshold, slope, num_steps=None):
    """Run a LIF layer over all time steps; returns (spikes, membrane), each [T, B, ...].

    `current` is [T, B, ...], or [B, ...] with `num_steps` set when the same current enters at
    every step. `beta` and `threshold` are tensors (e.g. a `snntorch.Leaky`'s buffers).
    """
    beta = beta.detach().clamp(0, 1).to(current.dtype)
    threshold = threshold.detach().to(current.dtype)
    return _LIFSequence.apply(current, beta, threshold, float(slope), num_steps)

"""compute_precision "bf16": the spike-fed layers on integer codes with exact sums, their gradients in bf16.

A layer fed by 0/1 spikes (every conv block after the first, and the head) computes
y = sum(spike * code) * scale with the weights' integer codes (the avg-pool folded in as a sum of codes,
`fold_pool_sum`) and the per-output-channel scale. The sum is an exact integer, so y is rounded once, at
the multiplication by the scale: the same value as the fp32 path wherever that one is exact (dyadic
weights), and within one rounding of the true sum elsewhere. The kernels:

- CPU: oneDNN's int8 convolution / matmul (uint8 spikes x int8 codes -> int32 -> fp32 times the scale),
  exact for any sum; AVX512-VNNI or AMX-INT8 where the CPU has them.
- CUDA: a bf16 convolution accumulates in fp32 but rounds its output to bf16, which keeps integers
  exact only up to 256: used where the codes bound every output's sum to that (max over output channels
  of the larger of the positive and the negative codes' sums), else the layer's forward stays fp32.
  (CPU bf16 convolutions round their output the same way: 2.0 off on sums near 1,000, measured.)

The backward (input and weight gradients of those layers) runs in bf16 with fp32 results, the usual
mixed-precision practice; the weights the optimizer updates stay fp32 (master weights), and the first
layer, BatchNorm, the LIF recurrence and its surrogate are never in bf16 (beta 0.994 is 0.9921875 there).
"""
import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16")
BF16_EXACT_INTEGERS = 256  # every integer of magnitude <= 2^8 is a bf16 value (8 significant bits)
INT8_MAX = 127


def fold_pool_sum(weight, pool=2):
    """K' with conv(x, K', stride s) == s^2 avg_pool_s(conv(x, K)): K correlated with an s x s box of ones."""
    if pool == 1:
        return weight
    last = pool - 1
    shifted = [F.pad(weight, (left, last - left, top, last - top)) for top in range(pool) for left in range(pool)]
    return sum(shifted[1:], shifted[0])


def int8_kernels_available():
    """True if this torch has oneDNN's int8 convolution and matmul with fp32 outputs (the CPU kernels)."""
    onednn = getattr(torch.ops, "onednn", None)
    return torch.backends.mkldnn.is_available() and all(
        hasattr(onednn, name) for name in ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack",
                                           "qlinear_pointwise"))


def exact_kernel(codes, device):
    """(kernel, why not) of the exact forward for these integer codes ([O, ...]) on `device`: ("int8", ""),
    ("bf16", "") or (None, the reason)."""
    if device.type == "cpu":
        if not int8_kernels_available():
            return None, "this torch has no oneDNN int8 kernels"
        largest = int(codes.abs().max())
        if largest > INT8_MAX:
            return None, f"its folded codes reach {largest}, beyond int8"
        return "int8", ""
    bound = output_bound(codes)
    if bound > BF16_EXACT_INTEGERS:
        return None, f"its codes allow sums up to {bound}, beyond bf16's exact integers (256)"
    return "bf16", ""


def output_bound(codes):
    """The largest |sum(spike * code)| any 0/1 input can give, over output channels (codes [O, ...])."""
    flat = codes.flatten(1).to(torch.int64)
    return int(torch.maximum(flat.clamp(min=0).sum(1), (-flat).clamp(min=0).sum(1)).max())


def _cast(tensor, dtype):
    """tensor in dtype; a conv's [N, C, H, W] in the layout its kernels take (channels_last on CPU)."""
    if tensor.dim() != 4:
        return tensor.to(dtype)
    layout = torch.channels_last if tensor.device.type == "cpu" else torch.contiguous_format
    return tensor.to(dtype, memory_format=layout)


class _ExactSpikeLayer(torch.autograd.Function):
    """y = (spikes . codes) * scale computed exactly; the gradients of spikes and `weight` (= codes * scale,
    differentiable) in bf16. conv: (stride, padding) for a convolution of [N, C, H, W], None for a linear
    layer of [N, F]."""

    @staticmethod
    def forward(ctx, spikes, weight, codes, scale, conv, kernel):
        if kernel == "int8":
            x = _cast(spikes, torch.uint8)
            y = _int8_forward(x, codes.to(torch.int8), scale.float(), conv)
        else:  # bf16 with fp32 accumulation: exact because exact_kernel bounded every sum by 256
            x = _cast(spikes, torch.bfloat16)
            c = codes.to(torch.bfloat16)
            y = (F.conv2d(x, c, stride=conv[0], padding=conv[1]) if conv else F.linear(x, c)).float()
            y = y * (scale.view(1, -1, 1, 1) if conv else scale)
        ctx.save_for_backward(x, weight)  # the spikes as uint8 / bf16: a quarter / half of fp32
        ctx.conv = conv
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        x16, w16, g16 = (_cast(t, torch.bfloat16) for t in (x, weight, grad_y))
        grad_x = grad_w = None
        if ctx.conv:
            stride, padding = ctx.conv
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                g16, x16, w16, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        else:
            grad_x = g16 @ w16 if need_x else None
            grad_w = g16.t() @ x16 if need_w else None
        return (None if grad_x is None else grad_x.float(), None if grad_w is None else grad_w.float(),
                None, None, None, None)


def _int8_forward(x, codes, scale, conv):
    """oneDNN: uint8 x [N, C, H, W] or [N, F] times int8 codes, int32 sums, times the fp32 scale [O]."""
    zero = torch.zeros(len(codes), dtype=torch.long)
    if conv is None:
        packed = torch.ops.onednn.qlinear_prepack(codes, None)
        return torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, scale, zero, None, 1.0, 0, torch.float32,
                                                  "none", [], "")
    stride, padding = [conv[0]] * 2, [conv[1]] * 2
    packed = torch.ops.onednn.qconv_prepack(codes, scale, 1.0, 0, stride, padding, [1, 1], 1, None)
    return torch.ops.onednn.qconv2d_pointwise(x, 1.0, 0, packed, scale, zero, None, stride, padding, [1, 1], 1,
                                              1.0, 0, torch.float32, "none", [], "")


def exact_spike_layer(spikes, weight, codes, scale, kernel, conv=None):
    """The exact forward of a spike-fed layer (kernel from exact_kernel): spikes [N, C, H, W] (conv:
    (stride, padding)) or [N, F]; weight = codes * scale [O] is the differentiable fp32 weight."""
    return _ExactSpikeLayer.apply(spikes, weight, codes, scale, conv, kernel)

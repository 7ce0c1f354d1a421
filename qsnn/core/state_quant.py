"""snnTorch's uniform membrane quantizer (`state_quant`) and the fast execution's exact equivalent of it.

With `state_bits` set, snnTorch's `state_quant` replaces the membrane by the nearest of 2^bits uniform
levels right after each update (before the spike test). Its gradient is straight-through.
"""
import torch
from snntorch.functional.quant import StateQuant, state_quant

# snnTorch's state_quant defaults: levels from -thr (lower_limit 0) to thr + 0.2 thr.
STATE_LOWER_LIMIT, STATE_UPPER_LIMIT = 0, 0.2


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
    return levels.index_select(0, index.reshape(-1)).view(index.shape)  # reshape: index may be channels_last


def membrane_quantizer(levels, current, threshold):
    """The per-step quantizer for a layer fed `current`: `nearest_level`, or snnTorch's own when unsafe.

    A membrane before quantization is at most |I| + 2 max|level| + thr in size. While that stays
    below 2^22 times the smallest level gap, float32 rounding cannot make two levels' distances
    to it equal, so the nearest level (first on a tie) is what snnTorch's argmin picks. Beyond
    (a diverging network, or NaN) snnTorch's argmin breaks such ties towards the lowest level;
    then its StateQuant itself is used, so both executions still agree exactly.
    """
    levels = levels.to(current.device)
    largest = current.detach().abs().max() + 2 * levels.abs().max() + threshold.detach().abs().max()
    smallest_gap = (levels[1:].double() - levels[:-1].double()).min()
    if bool(largest < smallest_gap * 2**22):  # one device sync per layer and forward
        return lambda mem: nearest_level(mem, levels)
    return lambda mem: StateQuant.apply(mem, levels)

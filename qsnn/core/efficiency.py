"""Efficiency figures of a test pass: spike rates, synaptic operations, input MACs, weight memory.

The counts come from the spikes of the evaluation's own forward pass (`record=True`), so they
cost no second pass over the test set. Operations are counted as the fast execution runs the
network, with each s x s average pool folded into its convolution (a stride-s conv with a
(k+s-1)x(k+s-1) kernel, `qsnn.core.models.fold_avg_pool`; the paper's 5x5 conv and 2x2 pool: 6x6
at stride 2; pool 1: the conv itself at stride 1), with the conv's own zero padding:

- spike rate: spikes per neuron per time step, over the test set, for every conv layer and the head.
- SynOps (spike-fed layers, i.e. conv2..convN and fc): every input spike costs one accumulate per
  connection it really reaches. A spike at input pixel (h, w) of a folded conv reaches
  out_channels x (number of output windows that cover (h, w)); for the paper's layers that count
  is 9 inside the map and smaller at the borders, and is computed exactly by a transposed conv of a
  ones output map with the kernel's taps at the layer's stride and padding (`conv_fan_out`; padded
  positions hold no spikes). A spike into the fc layer reaches every class.
- input MACs (first layer, whose input is not spikes): a static image current is one dense
  folded conv per sample (the fast execution computes it once and reuses it at every step);
  event frames (DVS) cost one multiply-accumulate (weight x event count) per nonzero input
  entry and connection it reaches, with the same border rule.
- weight memory: conv/linear weights at each layer's bit width, BatchNorm weight and bias at 32 bits.

Counts are per test sample over all its time steps. Connections are structural: a weight that
quantizes to zero still counts, as a dense accelerator would still visit it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from qsnn import distributed
from qsnn.core.models import fold_avg_pool, qnn  # brevitas.nn, imported by models without its CPU warning

def columns(conv_layers):
    """Columns of eff_<exp>_t<k>.csv for a network of `conv_layers` conv layers and the head (the trial
    writes them, qsnn.analysis.results reads them): rate per layer, SynOps in total and per spike-fed layer."""
    convs = [f"conv{i + 1}" for i in range(conv_layers)]
    return ("epoch", *(f"rate_{layer}" for layer in convs), "rate_fc", "synops",
            *(f"synops_{layer}" for layer in convs[1:]), "synops_fc", "input_macs", "weight_kib", "weight_kib_fp32")


# The paper's two conv layers: the columns of every eff CSV written before the architecture keys existed.
COLUMNS = columns(2)


def folded_taps(conv, pool=2):
    """The [k+s-1, k+s-1] tap pattern (1 where a weight exists) of a conv with its s x s pool folded in."""
    kernel = torch.ones(1, 1, *conv.kernel_size)
    return (fold_avg_pool(kernel, pool) != 0).float()


def conv_fan_out(conv, in_size, out_size, pool=2):
    """Connections per input pixel [H, W] of a pool-folded conv (stride = pool, the conv's own padding):
    out_channels x the output windows covering it."""
    taps = folded_taps(conv, pool)
    # With padding p, output window o covers input pixels o*s - p .. o*s - p + K' - 1: the transposed conv
    # with padding p drops the p padded positions on each side.
    covered = F.conv_transpose2d(torch.ones(1, 1, *out_size), taps, stride=pool, padding=conv.padding)[0, 0]
    fan_out = torch.zeros(in_size)  # a last row/column that no window reaches stays 0
    fan_out[:covered.shape[0], :covered.shape[1]] = covered
    return fan_out.double() * conv.out_channels


def weight_bits(layer):
    """Bit width of a layer's weights: Brevitas' quantizer width, else 32 (float)."""
    if isinstance(layer, (qnn.QuantConv2d, qnn.QuantLinear)):
        return int(layer.quant_weight().bit_width.item())
    return 32


def weight_memory_kib(model):
    """(KiB of weights at their bit widths, KiB in fp32); BatchNorm weight and bias count at 32 bits."""
    bits = bits_fp32 = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bits += module.weight.numel() * weight_bits(module)
            bits_fp32 += module.weight.numel() * 32
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            values = 32 * (module.weight.numel() + module.bias.numel())
            bits, bits_fp32 = bits + values, bits_fp32 + values
    return bits / 8 / 1024, bits_fp32 / 8 / 1024


class EfficiencyMeter:
    """Accumulates spike counts of one test pass of a QSNN and turns them into the eff CSV row."""

    @staticmethod
    def columns(model):
        """The eff CSV header of a QSNN: its real conv layers, then the head (see `columns`)."""
        return columns(len(model.blocks))

    def __init__(self, model):
        self.model = model
        self.totals = None  # float64 on the device: spikes per layer, synops per layer, input MACs
        self.samples = 0
        self.shapes = None  # (steps, neuron shape per layer) of the last batch
        self.static_input = None
        self._fan_outs = None

    def add(self, x, layers):
        """Count one batch: x as the network got it, layers its forward(record=True) output."""
        steps, batch = layers[0][0].shape[:2]
        if self._fan_outs is None:
            self._fan_outs = self._fan_out_maps(x, layers)
        # Spikes per neuron over steps and samples: integers below 2^24, so exact in float32.
        spike_maps = [spk.sum((0, 1)).double() for spk, _ in layers]
        counts = [m.sum() for m in spike_maps]
        fed_by_spikes = [(spike_maps[i] * fan_out).sum() for i, fan_out in enumerate(self._fan_outs[1:])]
        batch_totals = torch.stack([*counts, *fed_by_spikes, self._input_macs(x, batch)])
        self.totals = batch_totals if self.totals is None else self.totals + batch_totals
        self.samples += batch
        self.shapes = (steps, [spk.shape[2:] for spk, _ in layers])

    def _fan_out_maps(self, x, layers):
        """Connections per input entry of each layer: conv1 (for events), conv2 .. convN, fc."""
        blocks = self.model.blocks
        maps = [conv_fan_out(blocks[0].conv, x.shape[-2:], layers[0][0].shape[-2:], blocks[0].pool_size)]
        for i in range(1, len(blocks)):
            maps.append(conv_fan_out(blocks[i].conv, layers[i - 1][0].shape[-2:], layers[i][0].shape[-2:],
                                     blocks[i].pool_size))
        maps.append(torch.tensor(float(self.model.head.fc.out_features), dtype=torch.float64))
        return [m.to(layers[0][0].device) for m in maps]

    def _input_macs(self, x, batch):
        """First-layer MACs of the batch: dense once per static image, per nonzero event entry otherwise."""
        self.static_input = x.dim() == 4
        if self.static_input:
            return torch.zeros((), dtype=torch.float64, device=x.device)  # known from shapes: see row()
        nonzero = (x != 0).sum((0, 1)).double()  # [C, H, W] over steps and samples
        return (nonzero * self._fan_outs[0]).sum()

    def sum_over_ranks(self, device):
        """Add the counts of every rank (a no-op in one process)."""
        values = distributed.sum_over_ranks(self.samples, *self.totals.tolist(), device=device)
        self.samples, self.totals = values[0], torch.tensor(values[1:], dtype=torch.float64)

    def row(self):
        """The eff CSV values after "epoch", per test sample (see `EfficiencyMeter.columns`)."""
        steps, neuron_shapes = self.shapes
        layers = len(neuron_shapes)
        totals = (self.totals.cpu() / self.samples).tolist()
        rates = [totals[i] / (steps * neuron_shapes[i].numel()) for i in range(layers)]
        synops = totals[layers:2 * layers - 1]
        input_macs = totals[-1]
        if self.static_input:
            block = self.model.blocks[0]
            taps = folded_taps(block.conv, block.pool_size).sum().item()
            input_macs = neuron_shapes[0].numel() * block.conv.in_channels * taps
        return (*rates, sum(synops), *synops, input_macs, *weight_memory_kib(self.model))

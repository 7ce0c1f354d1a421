"""Do the fast and the reference execution of a QSNN agree? One check shared by tests, bench and notebook.

`compare_executions` runs two copies of a network with the same weights on the same input, one per
execution, and reports per layer how many spikes differ and how far the membranes are apart; given
labels, it also compares a train-mode forward and backward (loss, gradients, BatchNorm statistics).
Where every convolution is exact in float (tests/test_models.py's dyadic inputs) all must be equal; on
real inputs a membrane within rounding of the threshold may flip a spike (see bench/README.md).
"""
import copy
from dataclasses import dataclass

import snntorch.functional as SF
import torch
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class LayerAgreement:
    """One layer of two runs on the same input: spikes that differ and membrane distance."""

    layer: str
    spikes: int  # spikes in the first (reference) run
    elements: int
    differing_spikes: int
    max_count_diff: float  # largest |difference| of one neuron's spike count over all steps
    max_mem_diff: float
    # Before the first step at which any layer's spikes differ, the membranes show rounding alone
    # (a flipped spike moves a membrane by about one threshold); None when step 0 differs already.
    max_mem_diff_before_flip: float | None
    first_flip: int | None  # first step at which any layer's spikes differ; None: none differ
    differing_predictions: int | None = None  # output layer: samples whose most-spiking class differs

    @property
    def identical(self):
        return self.differing_spikes == 0 and self.max_mem_diff == 0


@dataclass
class TrainAgreement:
    """A train-mode forward + backward of both executions (dropout off) on the same batch."""

    layers: list[LayerAgreement]
    loss: float  # the reference's
    loss_diff: float
    grad_rel_diff: dict[str, float]  # per parameter: max |g_fast - g_ref| / max |g_ref|
    zero_gradients: list[str]  # parameters whose reference gradient is all zero (a vacuous comparison)
    running_stats_diff: float  # largest |difference| of any BatchNorm running mean or variance
    batches_tracked_equal: bool

    def worst_gradient(self):
        """(parameter name, relative difference) of the parameter whose gradients differ most."""
        return max(self.grad_rel_diff.items(), key=lambda item: item[1], default=("", 0.0))


@dataclass
class Agreement:
    layers: list[LayerAgreement]  # eval mode
    train: TrainAgreement | None  # None unless labels were given


def with_execution(model, execution, time_chunk=None):
    """A deep copy of a QSNN set to `execution` ('fast' or 'reference'), optionally with a time_chunk."""
    clone = copy.deepcopy(model)
    clone.execution = execution
    if time_chunk is not None:
        clone.time_chunk = time_chunk
    return clone


@torch.no_grad()
def layer_agreement(reference_layers, other_layers):
    """Compare two lists of per-layer (spikes, membrane), each [T, B, ...]; the last is the output layer."""
    steps = reference_layers[0][0].shape[0]
    first_flip = steps
    for (spk_r, _), (spk_o, _) in zip(reference_layers, other_layers):
        differs = (spk_r != spk_o).flatten(1).any(1).nonzero()
        if len(differs):
            first_flip = min(first_flip, int(differs[0]))
    names = [f"conv{i + 1}" for i in range(len(reference_layers) - 1)] + ["output"]
    rows = []
    for name, (spk_r, mem_r), (spk_o, mem_o) in zip(names, reference_layers, other_layers):
        rows.append(LayerAgreement(
            layer=name, spikes=int(spk_r.sum()), elements=spk_r.numel(),
            differing_spikes=int((spk_r != spk_o).sum()),
            max_count_diff=float((spk_r.sum(0) - spk_o.sum(0)).abs().max()),
            max_mem_diff=float((mem_r - mem_o).abs().max()),
            max_mem_diff_before_flip=float((mem_r[:first_flip] - mem_o[:first_flip]).abs().max())
            if first_flip else None,
            first_flip=first_flip if first_flip < steps else None))
    output_r, output_o = reference_layers[-1][0].sum(0), other_layers[-1][0].sum(0)
    rows[-1].differing_predictions = int((output_r.argmax(-1) != output_o.argmax(-1)).sum())
    return rows


def compare_executions(model, x, num_steps=None, labels=None, loss_fn=None, time_chunk=None):
    """Reference vs fast execution of copies of `model` on x ([B, C, H, W] with num_steps, or [T, B, ...]).

    Always compares every layer in eval mode; with `labels`, also one train-mode forward and
    backward with dropout off (the executions draw dropout masks differently). `model` is not changed.
    """
    pair = [with_execution(model, "reference"), with_execution(model, "fast", time_chunk)]
    with torch.no_grad():
        reference_layers, fast_layers = (net.eval()(x, num_steps, record=True) for net in pair)
    layers = layer_agreement(reference_layers, fast_layers)
    if labels is None:
        return Agreement(layers, None)
    loss_fn = loss_fn or SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)
    return Agreement(layers, train_agreement(model, x, num_steps, labels, loss_fn, time_chunk))


def train_agreement(model, x, num_steps, labels, loss_fn, time_chunk=None):
    """One train-mode forward + loss + backward per execution (dropout off), compared."""
    runs = []
    for execution in ("reference", "fast"):
        net = with_execution(model, execution, time_chunk).train()
        net.head.dropout.p = 0.0
        layers = net(x, num_steps, record=True)
        loss = loss_fn(layers[-1][0], labels)
        net.zero_grad(set_to_none=True)
        loss.backward()
        runs.append((net, loss.item(), [(s.detach(), m.detach()) for s, m in layers]))
    (ref, ref_loss, ref_layers), (fast, fast_loss, fast_layers) = runs
    grad_rel, zero = {}, []
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        if p_ref.grad is None or p_fast.grad is None:
            continue
        scale = float(p_ref.grad.abs().max())
        diff = float((p_fast.grad - p_ref.grad).abs().max())
        grad_rel[name] = diff / scale if scale > 0 else diff
        if scale == 0:
            zero.append(name)
    stats_diff, tracked_equal = 0.0, True
    for bn_ref, bn_fast in zip(ref.modules(), fast.modules()):
        if isinstance(bn_ref, _BatchNorm):
            for stat in ("running_mean", "running_var"):
                stats_diff = max(stats_diff, float((getattr(bn_ref, stat) - getattr(bn_fast, stat)).abs().max()))
            tracked_equal &= bool(bn_ref.num_batches_tracked == bn_fast.num_batches_tracked)
    return TrainAgreement(layer_agreement(ref_layers, fast_layers), ref_loss, abs(ref_loss - fast_loss),
                          grad_rel, zero, stats_diff, tracked_equal)

"""Loss landscape between training snapshots (qsnn.runs.snapshots): interpolation barriers, distances, code flips.

- Linear interpolation: latent float weights (every parameter: conv/linear weights and BatchNorm's affine
  weight and bias) w(alpha) = (1 - alpha) w_A + alpha w_B. The Brevitas layers quantize their latent
  weights in every forward, so running the model at w(alpha) re-quantizes with the model's own quantizer.
- BatchNorm statistics are recomputed at every point (`recompute_batch_norm`): interpolated or stored
  running statistics do not belong to the interpolated weights, and a barrier measured with them is an
  artefact of BatchNorm, not of the loss surface.
- Measured in eval mode: the logged training loss (mse_count_loss / time steps, qsnn.core.loop.logged_loss)
  and accuracy on a fixed training subset, and the test accuracy.
- Between snapshots: the normalised distance ||w_B - w_A|| / ||w_A|| over the conv/linear latent weights
  (BatchNorm's affine parameters left out: another scale), the same over the quantized weights, and the
  fraction of integer weight codes that changed (whether a QSNN moved at all).

The 2-D plane around a snapshot is in qsnn.analysis.landscape_plane, the figures in qsnn.analysis.landscape_plots.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import snntorch.functional as SF
import torch

from qsnn.runs import runlog
from qsnn.data.loaders import as_tensors, load_datasets, to_float
from qsnn.files import write_text
from qsnn.errors import UserError
from qsnn.core.models import effective_weight
from qsnn.runs.snapshots import list_snapshots, load_snapshot, snapshot_folder
from qsnn.core.loop import logged_loss, test_steps, train_steps

PAIR_SELECTORS = ("troughs", "peaks", "trough-peak", "consecutive", "epochs:E1,E2,...")
SUBSET_SEED = 0  # the fixed training subset is the same for every run, so runs and seeds compare


# ---------------------------------------------------------------- snapshots of a run

@dataclass
class Snapshot:
    """One snapshot file of a run, loaded."""
    run: str  # label of the run (folder name, with /t<k> for trials other than 0)
    iteration: int
    epoch: float
    kind: str  # start | epoch | trough | peak
    lr: float
    state: dict
    config: dict

    @property
    def label(self):
        """e<epoch>, e.g. e4 or e4.5 for an extremum inside an epoch."""
        return f"e{self.epoch:g}"


def read_run(run_dir, trial=0):
    """The snapshots of one trial of a run folder, in time order; UserError if there are none."""
    run_dir = Path(run_dir)
    record = runlog.read_run_config(run_dir)
    if record is None:
        raise UserError(f"{run_dir} is not a run folder (no config.json); give the folder a training run wrote")
    exp = record.get("exp_name") or runlog.experiment_name(record["config"])
    found = list_snapshots(snapshot_folder(run_dir, exp, trial))
    if not found:
        raise UserError(f"{snapshot_folder(run_dir, exp, trial)} holds no snapshot; train with --snapshots epoch")
    label = run_dir.resolve().name + (f"/t{trial}" if trial else "")
    snaps = []
    for _, path in found:
        snap = load_snapshot(path)
        snaps.append(Snapshot(label, snap["iteration"], snap["epoch"], snap["kind"], snap["lr"],
                              snap["model"], snap["config"]))
    check_same_network(snaps)
    return snaps


def check_same_network(snaps):
    """Refuse snapshots whose tensors do not all have the names and shapes of the first one."""
    shapes = {k: tuple(v.shape) for k, v in snaps[0].state.items()}
    for snap in snaps[1:]:
        if {k: tuple(v.shape) for k, v in snap.state.items()} != shapes:
            raise UserError(f"{snap.run} {snap.label}: its weights do not have the shapes of "
                            f"{snaps[0].run} {snaps[0].label}; the two are not the same network")


def find_epoch(snaps, epoch):
    """The snapshot taken after `epoch` epochs (a number), or UserError naming the epochs there are."""
    for snap in snaps:
        if math.isclose(float(snap.epoch), float(epoch), abs_tol=1e-9):
            return snap
    have = ", ".join(f"{s.epoch:g}" for s in snaps)
    raise UserError(f"{snaps[0].run} has no snapshot at epoch {epoch:g} (it has {have})")


# ---------------------------------------------------------------- pairs to interpolate

@dataclass
class Pair:
    """Two snapshots to interpolate between, and why they were chosen."""
    kind: str  # troughs | peaks | trough-peak | consecutive | epochs | seeds
    a: Snapshot
    b: Snapshot

    @property
    def name(self):
        """e4-e8 within a run; run:e10-other:e10 across runs."""
        if self.a.run == self.b.run and self.kind != "seeds":
            return f"{self.a.label}-{self.b.label}"
        return f"{self.a.run}:{self.a.label}-{self.b.run}:{self.b.label}"


def select_pairs(snaps, selector):
    """The pairs of one run that a --pairs selector names (see PAIR_SELECTORS); UserError if none."""
    if selector.startswith("epochs:"):
        try:
            epochs = [float(e) for e in selector[len("epochs:"):].split(",") if e.strip()]
        except ValueError:
            raise UserError(f"--pairs {selector}: epochs must be numbers, e.g. epochs:2,6,10") from None
        chosen = [find_epoch(snaps, e) for e in epochs]
        pairs = [Pair("epochs", a, b) for a, b in zip(chosen, chosen[1:])]
    elif selector in ("troughs", "peaks"):
        chosen = [s for s in snaps if s.kind == selector[:-1]]
        pairs = [Pair(selector, a, b) for a, b in zip(chosen, chosen[1:])]
    elif selector == "trough-peak":
        peaks = [(i, s) for i, s in enumerate(snaps) if s.kind == "peak"]
        pairs = [Pair(selector, a, next(p for j, p in peaks if j > i)) for i, a in enumerate(snaps)
                 if a.kind == "trough" and any(j > i for j, _ in peaks)]
    elif selector == "consecutive":
        pairs = [Pair(selector, a, b) for a, b in zip(snaps, snaps[1:])]
    else:
        raise UserError(f"--pairs {selector!r} is not one of {', '.join(PAIR_SELECTORS)}")
    if not pairs:
        kinds = ", ".join(f"{s.label} {s.kind}" for s in snaps)
        raise UserError(f"--pairs {selector} finds no pair of snapshots in {snaps[0].run} ({kinds}); "
                        "try --pairs consecutive or --pairs epochs:E1,E2")
    return pairs


def final_pair(snaps, other):
    """The final models of two runs (or seeds): the 'different basin' reference."""
    check_same_network([snaps[-1], other[-1]])
    return Pair("seeds", snaps[-1], other[-1])


# ---------------------------------------------------------------- weights

def float_parameter_names(state, model):
    """Names of the model's float parameters (the latent weights that training moves), in state."""
    return [name for name, p in model.named_parameters() if p.is_floating_point() and name in state]


def weight_names(model):
    """Names of the conv/linear weights (the parameters with more than one dimension)."""
    return [name for name, p in model.named_parameters() if p.dim() > 1]


def interpolate_state(state_a, state_b, names, alpha):
    """A's state with the named tensors at (1 - alpha) A + alpha B; buffers are A's (BatchNorm's are recomputed).

    torch.lerp gives A bit-exactly at alpha 0, B at alpha 1, and A at every alpha when A == B.
    """
    state = dict(state_a)
    for name in names:
        state[name] = torch.lerp(state_a[name], state_b[name], float(alpha))
    return state


def lerp(a, b, alpha):
    """(1 - alpha) a + alpha b for floats, with torch.lerp's exact endpoints."""
    return a + alpha * (b - a) if alpha < 0.5 else b - (b - a) * (1 - alpha)


def barrier(alphas, losses):
    """(height, alpha): max over alpha of loss(alpha) - ((1 - alpha) loss(0) + alpha loss(1)), and where."""
    excess = [0.0 if i in (0, len(losses) - 1) else loss - lerp(losses[0], losses[-1], alpha)
              for i, (alpha, loss) in enumerate(zip(alphas, losses))]
    top = int(np.argmax(excess))
    return float(excess[top]), float(alphas[top])


def relative_distance(state_a, state_b, names):
    """||B - A|| / ||A|| over the named tensors together (float64)."""
    diff = sum(float((state_b[n].double() - state_a[n].double()).square().sum()) for n in names)
    norm = sum(float(state_a[n].double().square().sum()) for n in names)
    return math.sqrt(diff / norm) if norm > 0 else math.nan


def quantized_layers(model):
    """(name, layer) of the conv/linear layers in order: conv1, conv2, ..., fc."""
    return [*((f"conv{i + 1}", block.conv) for i, block in enumerate(model.blocks)), ("fc", model.head.fc)]


@torch.no_grad()
def quantized_weights(model, state, quantized):
    """{layer: (effective weight as float64 numpy, integer codes or None)} of a state, via the model's quantizer."""
    from qsnn.core.models import weight_codes

    model.load_state_dict(state)
    out = {}
    for name, layer in quantized_layers(model):
        codes = weight_codes(layer)[0] if quantized else None
        out[name] = (effective_weight(layer).double().cpu().numpy(), codes)
    return out


def code_flips(codes_a, codes_b):
    """{layer: fraction of integer weight codes that differ, "total": over all weights}; {} without codes."""
    if any(c is None for _, c in codes_a.values()):
        return {}
    flips = {name: (codes_a[name][1] != codes_b[name][1]) for name in codes_a}
    out = {name: float(f.mean()) for name, f in flips.items()}
    out["total"] = float(sum(f.sum() for f in flips.values()) / sum(f.size for f in flips.values()))
    return out


def quantized_distance(weights_a, weights_b):
    """||Q(w_B) - Q(w_A)|| / ||Q(w_A)|| over all conv/linear layers' quantized weights."""
    diff = sum(float(np.square(weights_b[n][0] - weights_a[n][0]).sum()) for n in weights_a)
    norm = sum(float(np.square(weights_a[n][0]).sum()) for n in weights_a)
    return math.sqrt(diff / norm) if norm > 0 else math.nan


# ---------------------------------------------------------------- BatchNorm recomputation

def time_first(x, num_steps):
    """(network input, num_steps) as run_network passes them: events [B, T, ...] become [T, B, ...]."""
    return (x.transpose(0, 1), None) if x.dim() == 5 else (x, num_steps)


def batch_norm_input(block, x):
    """What a block's BatchNorm normalises, [T', B, C, H, W] (T' = 1 for a static x [B, C, H, W]).

    The fast execution's arithmetic (the pool folded into a strided conv); the reference's conv then pool
    is the same up to float rounding.
    """
    current = block.pooled_current(x)
    return current.unsqueeze(0) if x.dim() == 4 else current


@torch.no_grad()
def recompute_batch_norm(model, batches, num_steps):
    """Set every BatchNorm's running statistics to the exact average over the batches' per-step statistics.

    The forwards run in train mode (each BatchNorm normalises with its batch's statistics, as in
    training) with dropout off. Every (batch, time step) is one BatchNorm call, as in training: its mean
    and unbiased variance enter an equal-weight average, which is what PyTorch's cumulative average
    (momentum=None) would give for T module calls per batch. The fast execution's BatchNorm updates
    apply bn.momentum in closed form, so the statistics are computed here instead, in float64.
    """
    blocks = [b for b in model.blocks if b.bn is not None]
    if not blocks:
        return
    sums = {id(b): [0.0, 0.0] for b in blocks}
    calls = {id(b): 0 for b in blocks}
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    for x, _ in batches:
        x, steps = time_first(x, num_steps)
        layers = model(x, num_steps=steps, record=True)
        inputs = [x] + [spikes for spikes, _ in layers[:len(model.blocks) - 1]]
        for block, inp in zip(model.blocks, inputs):
            if block.bn is None:
                continue
            variance, mean = torch.var_mean(batch_norm_input(block, inp).double(), dim=(1, 3, 4), unbiased=True)
            repeat = steps if inp.dim() == 4 else 1  # a static input gives the same statistics at every step
            sums[id(block)][0] = sums[id(block)][0] + repeat * mean.sum(0)
            sums[id(block)][1] = sums[id(block)][1] + repeat * variance.sum(0)
            calls[id(block)] += repeat * mean.shape[0]
    for block in blocks:
        mean, variance = sums[id(block)]
        block.bn.running_mean.copy_(mean / calls[id(block)])
        block.bn.running_var.copy_(variance / calls[id(block)])
        block.bn.num_batches_tracked.fill_(calls[id(block)])
    model.eval()


# ---------------------------------------------------------------- measuring one point

def fixed_batches(dataset, count, batch_size, device, shuffle_seed=None):
    """A list of (x, y) batches on device: `count` samples (all if None), a fixed random draw if seeded."""
    x, y = as_tensors(dataset)
    n = len(y) if count is None else min(int(count), len(y))
    if shuffle_seed is None:
        index = torch.arange(n)
    else:  # a fixed random subset: the dataset's first samples need not be representative
        index = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))[:n]
    x, y = x[index], y[index]
    return [(to_float(x[i:i + batch_size]).to(device), y[i:i + batch_size].to(device))
            for i in range(0, n, batch_size)]


@torch.no_grad()
def loss_and_accuracy(model, batches, num_steps, loss_fn):
    """(mean logged loss, accuracy in percent) over batches in eval mode, weighted by batch size."""
    model.eval()
    loss_sum, correct, total = 0.0, 0.0, 0
    for x, y in batches:
        x, steps = time_first(x, num_steps)
        spikes = model(x, num_steps=steps)[0]
        loss_sum += float(logged_loss(loss_fn(spikes, y), num_steps)) * len(y)
        correct += float(SF.accuracy_rate(spikes, y)) * len(y)
        total += len(y)
    return loss_sum / total, 100.0 * correct / total


class Probe:
    """Measures weights: BatchNorm recomputed on fixed training batches, then loss and accuracies.

    `cfg` (a snapshot's config) gives the network, data, time steps and loss; data_dir overrides its
    data folder. train_images: the fixed training subset (also BatchNorm's unless bn_images is given);
    test_images: the first N test samples (None: all; 0: no test accuracy).
    """

    def __init__(self, cfg, device, train_images=2000, bn_images=None, test_images=None, data_dir=None):
        from qsnn.core.models import build_model

        self.cfg = {**cfg, **({"data_dir": data_dir} if data_dir else {})}
        self.device = torch.device(device)
        self.model = build_model(self.cfg).to(self.device)
        self.loss_fn = SF.mse_count_loss(correct_rate=self.cfg["correct_rate"],
                                         incorrect_rate=self.cfg["incorrect_rate"])
        train, test = load_datasets(self.cfg)
        batch, test_batch = self.cfg["batch_size"], self.cfg["test_batch_size"]
        self.train = fixed_batches(train, train_images, test_batch, self.device, SUBSET_SEED)
        # BatchNorm's statistics depend on the batch size: recompute them with the training batch size.
        bn_count = train_images if bn_images is None else bn_images
        self.bn_batches = fixed_batches(train, bn_count, batch, self.device, SUBSET_SEED)
        self.test = [] if test_images == 0 else fixed_batches(test, test_images, test_batch, self.device)
        self.train_steps, self.test_steps = train_steps(self.cfg), test_steps(self.cfg)

    def prepare(self, state):
        """Load a state and recompute its BatchNorm statistics; the model is left in eval mode."""
        try:
            self.model.load_state_dict(state)
        except RuntimeError:
            raise UserError("the snapshot's weights do not fit the network of the first run's config") from None
        recompute_batch_norm(self.model, self.bn_batches, self.train_steps)

    def measure(self, state, test=True):
        """{"train_loss", "train_acc", "test_acc"} of a state (test_acc NaN without test samples or test)."""
        self.prepare(state)
        loss, acc = loss_and_accuracy(self.model, self.train, self.train_steps, self.loss_fn)
        test_acc = math.nan
        if test and self.test:
            test_acc = loss_and_accuracy(self.model, self.test, self.test_steps, self.loss_fn)[1]
        return {"train_loss": loss, "train_acc": acc, "test_acc": test_acc}


# ---------------------------------------------------------------- curves and summaries

def interpolation_curve(probe, pair, alphas, bar=None):
    """[{"alpha", "train_loss", "train_acc", "test_acc"}] along the straight line from pair.a to pair.b."""
    names = float_parameter_names(pair.a.state, probe.model)
    rows = []
    for alpha in alphas:
        rows.append({"alpha": float(alpha), **probe.measure(interpolate_state(pair.a.state, pair.b.state,
                                                                              names, alpha))})
        if bar is not None:
            bar.update(1)
    return rows


def pair_summary(probe, pair, curve):
    """The summary row of one curve: barrier, endpoints, distances and code flips."""
    height, where = barrier([r["alpha"] for r in curve], [r["train_loss"] for r in curve])
    quantized = probe.cfg.get("num_bits") is not None
    qa = quantized_weights(probe.model, pair.a.state, quantized)
    qb = quantized_weights(probe.model, pair.b.state, quantized)
    flips = code_flips(qa, qb)
    first, last = curve[0], curve[-1]
    return {"pair": pair.name, "kind": pair.kind,
            "run_a": pair.a.run, "epoch_a": pair.a.epoch, "iteration_a": pair.a.iteration, "kind_a": pair.a.kind,
            "run_b": pair.b.run, "epoch_b": pair.b.epoch, "iteration_b": pair.b.iteration, "kind_b": pair.b.kind,
            "barrier": height, "barrier_alpha": where,
            "loss_a": first["train_loss"], "loss_b": last["train_loss"],
            "train_acc_a": first["train_acc"], "train_acc_b": last["train_acc"],
            "test_acc_a": first["test_acc"], "test_acc_b": last["test_acc"],
            "distance": relative_distance(pair.a.state, pair.b.state, weight_names(probe.model)),
            "qdistance": quantized_distance(qa, qb), "code_flips": flips.get("total", math.nan)}


def distance_rows(model, snaps, quantized):
    """Rows of distances and code flips: each snapshot to the next ('consecutive') and to the final one."""
    names = weight_names(model)
    weights = [quantized_weights(model, s.state, quantized) for s in snaps]
    rows = []
    pairs = [("consecutive", i, i + 1) for i in range(len(snaps) - 1)]
    pairs += [("to_final", i, len(snaps) - 1) for i in range(len(snaps) - 1)]
    for relation, i, j in pairs:
        a, b = snaps[i], snaps[j]
        flips = code_flips(weights[i], weights[j])
        row = {"relation": relation, "epoch_a": a.epoch, "iteration_a": a.iteration, "kind_a": a.kind,
               "epoch_b": b.epoch, "iteration_b": b.iteration, "kind_b": b.kind,
               "distance": relative_distance(a.state, b.state, names),
               "qdistance": quantized_distance(weights[i], weights[j]),
               "code_flips": flips.get("total", math.nan)}
        row.update({f"code_flips_{layer}": flips.get(layer, math.nan) for layer, _ in quantized_layers(model)})
        rows.append(row)
    return rows


def write_csv(path, rows, columns=None):
    """Write dict rows as CSV atomically (floats at full precision, NaN as an empty cell)."""
    columns = list(columns or rows[0])

    def cell(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else repr(value)
        return str(value)

    lines = [",".join(columns)] + [",".join(cell(row[c]) for c in columns) for row in rows]
    write_text(path, "\n".join(lines) + "\n")

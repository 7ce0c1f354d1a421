"""The loss on a plane of weight space around a snapshot, with the training trajectory projected onto it.

Two directions span the plane through a centre snapshot (the final one by default):
- pca: the trajectory's first two principal directions, the right singular vectors of the matrix of
  the snapshots' flattened latent weights minus the centre's (not mean-centred, so the plane passes
  through the centre and best fits the displacements from it). Orthonormal; each snapshot's coordinates
  are dot products, and the fraction of its displacement outside the plane is reported.
- random: filter-normalised Gaussian directions (Li et al. 2018): each output filter of a conv/linear
  weight rescaled to that filter's norm, BatchNorm's affine parameters left at zero. Not orthogonal:
  snapshots are projected by least squares.
Every grid point gets its BatchNorm statistics recomputed (qsnn.analysis.landscape.Probe).
"""
import math

import torch

from qsnn.errors import UserError
from qsnn.analysis.landscape import float_parameter_names


def flatten(state, names):
    """The named tensors of a state as one float64 vector."""
    return torch.cat([state[n].detach().double().reshape(-1) for n in names])


def unflatten(vector, template, names):
    """A copy of template with the named tensors taken from a flat vector (in their own dtype)."""
    state, offset = dict(template), 0
    for name in names:
        size = template[name].numel()
        state[name] = vector[offset:offset + size].reshape(template[name].shape).to(template[name].dtype)
        offset += size
    return state


def pca_directions(vectors, origin):
    """(directions [2, P], fraction of the squared displacement each explains) of vectors [N, P] around origin."""
    displacement = vectors - origin
    if torch.linalg.matrix_rank(displacement) < 2:
        raise UserError("the snapshots span fewer than two directions around the centre; the PCA plane needs "
                        "at least two snapshots that differ from the centre in different ways")
    _, singular, directions = torch.linalg.svd(displacement, full_matrices=False)
    directions = directions[:2].clone()
    # A singular vector's sign is arbitrary: orient each so that the first snapshot (the start) sits at >= 0.
    signs = torch.sign(displacement[0] @ directions.T)
    directions *= torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    explained = singular.square() / singular.square().sum()
    return directions, explained[:2].tolist()


def random_directions(state, model, generator):
    """Two filter-normalised random directions [2, P] over the float parameters (Li et al. 2018)."""
    names = float_parameter_names(state, model)
    directions = []
    for _ in range(2):
        parts = []
        for name in names:
            weight = state[name].double()
            if weight.dim() <= 1:  # BatchNorm affine parameters: left alone, as Li et al. do
                parts.append(torch.zeros(weight.numel(), dtype=torch.float64))
                continue
            d = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
            filters, d_filters = weight.reshape(len(weight), -1), d.reshape(len(d), -1)
            scale = filters.norm(dim=1) / d_filters.norm(dim=1).clamp_min(1e-12)
            parts.append((d_filters * scale[:, None]).reshape(-1))
        directions.append(torch.cat(parts))
    return torch.stack(directions)


def project(vectors, origin, directions):
    """(coordinates [N, 2], fraction of each displacement's norm outside the plane) by least squares."""
    displacement = vectors - origin
    gram = directions @ directions.T
    coords = torch.linalg.solve(gram, directions @ displacement.T).T
    residual = (displacement - coords @ directions).norm(dim=1)
    norms = displacement.norm(dim=1)
    outside = torch.where(norms > 0, residual / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return coords, outside.tolist()


def grid_axes(coords, steps, margin=0.25, extent=None):
    """Two coordinate ranges of `steps` points: around the trajectory and the centre with a margin, or +-extent."""
    if extent is not None:
        return [torch.linspace(-extent, extent, steps, dtype=torch.float64) for _ in range(2)]
    axes = []
    for k in range(2):
        low, high = min(0.0, float(coords[:, k].min())), max(0.0, float(coords[:, k].max()))
        pad = margin * (high - low) if high > low else 1.0
        axes.append(torch.linspace(low - pad, high + pad, steps, dtype=torch.float64))
    return axes


def plane_losses(probe, centre_state, names, directions, axes, bar=None):
    """{"train_loss", "train_acc"}: [len(ys), len(xs)] arrays over the grid centre + x d1 + y d2."""
    xs, ys = axes
    origin = flatten(centre_state, names)
    loss = torch.full((len(ys), len(xs)), math.nan, dtype=torch.float64)
    acc = loss.clone()
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            state = unflatten(origin + x * directions[0] + y * directions[1], centre_state, names)
            point = probe.measure(state, test=False)
            loss[i, j], acc[i, j] = point["train_loss"], point["train_acc"]
            if bar is not None:
                bar.update(1)
    return {"train_loss": loss.numpy(), "train_acc": acc.numpy()}


def plane(probe, snaps, centre, method="pca", steps=11, seed=0, extent=None, bar=None):
    """Everything the plane figure and CSVs need: axes, grid values, trajectory coordinates, explained fractions."""
    names = float_parameter_names(centre.state, probe.model)
    vectors = torch.stack([flatten(s.state, names) for s in snaps])
    origin = flatten(centre.state, names)
    if method == "pca":
        directions, explained = pca_directions(vectors, origin)
    elif method == "random":
        directions, explained = random_directions(centre.state, probe.model, torch.Generator().manual_seed(seed)), None
    else:
        raise UserError(f"--directions {method!r} is not pca or random")
    coords, outside = project(vectors, origin, directions)
    axes = grid_axes(coords, steps, extent=extent if method == "pca" else (1.0 if extent is None else extent))
    grid = plane_losses(probe, centre.state, names, directions, axes, bar)
    return {"axes": [a.numpy() for a in axes], "grid": grid, "coords": coords.numpy(), "outside": outside,
            "explained": explained, "method": method, "centre": centre}

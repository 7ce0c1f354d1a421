"""Figures of the landscape analysis (qsnn.analysis.landscape, qsnn.analysis.landscape_plane): PNG (200 dpi) and PDF, headless.

Figures are matplotlib Figure objects with the Agg canvas, never pyplot: no display, no global state.
"""
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qsnn.errors import UserError

DPI = 200
KIND_MARKERS = {"start": ("s", "start"), "trough": ("v", "LR trough"), "peak": ("^", "LR peak"),
                "epoch": ("o", "epoch end")}


def new_figure(width, height, **grid):
    """A constrained-layout Figure on the Agg canvas, with a grid of axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**grid, squeeze=False)


def save_figure(fig, out_dir, stem):
    """Write out_dir/stem.png and .pdf atomically; returns the paths."""
    from qsnn.runs.runlog import atomic_path

    paths = [Path(out_dir) / f"{stem}.{ext}" for ext in ("png", "pdf")]
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=DPI, format=path.suffix[1:])
    except OSError as e:
        raise UserError(f"cannot write {paths[0].with_suffix('')}.png/.pdf ({e.strerror or e})") from None
    return paths


def epoch_text(epoch):
    """4 or 4.5, as an epoch prints in labels."""
    return f"{epoch:g}"


# ---------------------------------------------------------------- interpolation

def plot_interpolation(curves, summaries):
    """Training loss and accuracies along each interpolation line, one colour per pair, legend outside."""
    fig, axes = new_figure(11.0, 4.0, nrows=1, ncols=2)
    loss_ax, acc_ax = axes[0]
    for k, (curve, summary) in enumerate(zip(curves, summaries)):
        colour = f"C{k % 10}"
        alphas = [r["alpha"] for r in curve]
        label = f"{summary['pair']} ({summary['kind']}): barrier {summary['barrier']:.4g}"
        loss_ax.plot(alphas, [r["train_loss"] for r in curve], color=colour, marker=".", label=label)
        ends = [curve[0]["train_loss"], curve[-1]["train_loss"]]
        loss_ax.plot([0, 1], ends, color=colour, linestyle=":", linewidth=1)
        acc_ax.plot(alphas, [r["train_acc"] for r in curve], color=colour, marker=".")
        test = [r["test_acc"] for r in curve]
        if not all(math.isnan(v) for v in test):
            acc_ax.plot(alphas, test, color=colour, linestyle="--")
    loss_ax.set(xlabel=r"interpolation coefficient $\alpha$ (0 = A, 1 = B)",
                ylabel="training loss (mse count loss / T)", title="loss along the line (dotted: linear in the ends)")
    acc_ax.set(xlabel=r"interpolation coefficient $\alpha$ (0 = A, 1 = B)", ylabel="accuracy (%)",
               title="accuracy (solid: training subset, dashed: test)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside lower center",
               ncols=min(2, len(curves)), fontsize="small", title="pair A-B")
    return fig


# ---------------------------------------------------------------- distances and code flips

def mark_extrema(ax, snaps):
    """Vertical lines at the LR troughs (dotted) and peaks (dash-dotted) among the snapshots."""
    for kind, style in (("trough", ":"), ("peak", "-.")):
        epochs = [s.epoch for s in snaps if s.kind == kind]
        for i, epoch in enumerate(epochs):
            ax.axvline(epoch, color="0.5", linestyle=style, linewidth=1,
                       label=KIND_MARKERS[kind][1] if i == 0 else None)


def plot_distances(rows, snaps, quantized):
    """Normalised weight distance and code-flip fraction against epoch, to the next and to the final snapshot."""
    fig, axes = new_figure(9.0, 6.5 if quantized else 3.6, nrows=2 if quantized else 1, ncols=1, sharex=True)
    dist_ax = axes[0][0]
    styles = {"consecutive": ("C0", "o", "consecutive"),
              "to_final": ("C1", "s", "to the final")}
    for relation, (colour, marker, label) in styles.items():
        chosen = [r for r in rows if r["relation"] == relation]
        x = [r["epoch_b"] if relation == "consecutive" else r["epoch_a"] for r in chosen]
        dist_ax.plot(x, [r["distance"] for r in chosen], color=colour, marker=marker, label=f"latent, {label}")
        dist_ax.plot(x, [r["qdistance"] for r in chosen], color=colour, marker=marker, linestyle="--",
                     markerfacecolor="none", label=f"quantized, {label}")
        if quantized:
            flip_ax = axes[1][0]
            flip_ax.plot(x, [100 * r["code_flips"] for r in chosen], color=colour, marker=marker,
                         label=f"all layers, {label}")
            if relation == "consecutive":
                layers = [k[len("code_flips_"):] for k in chosen[0] if k.startswith("code_flips_")] if chosen else []
                for n, layer in enumerate(layers):
                    flip_ax.plot(x, [100 * r[f"code_flips_{layer}"] for r in chosen], color=f"C{n + 2}",
                                 linewidth=1, linestyle="--", label=f"{layer}, consecutive")
    dist_ax.set(ylabel=r"$\|w_B - w_A\| \,/\, \|w_A\|$ (conv/linear weights)")
    dist_ax.set_title("normalised distance between snapshots", fontsize="medium")
    panels = [dist_ax] + ([axes[1][0]] if quantized else [])
    if quantized:
        axes[1][0].set(ylabel="integer weight codes changed (%)")
        axes[1][0].set_title("integer weight codes that differ", fontsize="medium")
    for ax in panels:
        mark_extrema(ax, snaps)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    panels[-1].set_xlabel("epoch (consecutive: the later snapshot's; to the final: the earlier one's)")
    return fig


# ---------------------------------------------------------------- the plane

def plot_plane(result, snaps):
    """Filled contours of the training loss over the plane, with the projected trajectory and epoch labels."""
    fig, axes = new_figure(7.5, 6.2, nrows=1, ncols=1)
    ax = axes[0][0]
    xs, ys = result["axes"]
    loss = result["grid"]["train_loss"]
    levels = contour_levels(loss)
    filled = ax.contourf(xs, ys, loss, levels=levels, cmap="viridis")
    ax.contour(xs, ys, loss, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    bar = fig.colorbar(filled, ax=ax, label="training loss (mse count loss / T; log-spaced levels)", shrink=0.9)
    bar.set_ticks(levels[::3])
    bar.ax.yaxis.set_major_formatter("{x:.3g}")
    coords = result["coords"]
    ax.plot(coords[:, 0], coords[:, 1], color="white", linewidth=2.2, zorder=3)
    ax.plot(coords[:, 0], coords[:, 1], color="C3", linewidth=1.2, zorder=3, label="trajectory (projected)")
    for kind, (marker, label) in KIND_MARKERS.items():
        picked = [i for i, s in enumerate(snaps) if s.kind == kind]
        if picked:
            extremum = kind in ("trough", "peak")  # drawn larger and on top: they are what the study is about
            ax.scatter(coords[picked, 0], coords[picked, 1], marker=marker, s=70 if extremum else 24,
                       color="C1" if extremum else "white", edgecolors="black",
                       linewidths=0.6, zorder=5 if extremum else 4, label=label)
    centre = next(i for i, s in enumerate(snaps) if s.iteration == result["centre"].iteration)
    ax.scatter(coords[centre, 0], coords[centre, 1], marker="*", s=160, color="red", edgecolors="black",
               zorder=6, label=f"centre ({result['centre'].label})")
    ax.set(xlabel=axis_label(result, 0), ylabel=axis_label(result, 1))
    fig.canvas.draw()  # fixes the axis limits, so that label spacing can be measured in pixels
    for i in label_indices(ax, coords, snaps):
        ax.annotate(epoch_text(snaps[i].epoch), coords[i], textcoords="offset points", xytext=(5, 5),
                    fontsize="small", color="white", zorder=7,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.45, linewidth=0))
    directions = "PCA of the trajectory" if result["method"] == "pca" else "filter-normalised random"
    ax.set_title(f"training loss around {result['centre'].run} {result['centre'].label}\n"
                 f"(directions: {directions}; labels: epochs)", fontsize="medium")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small")
    return fig


def contour_levels(loss):
    """16 contour levels over the grid's range, evenly spaced in log: the low basin gets as many as the rim."""
    finite = loss[np.isfinite(loss)]
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-9)
    return np.geomspace(low, high, 16) if low > 0 else np.linspace(low, high, 16)


def label_indices(ax, coords, snaps, min_pixels=16):
    """Snapshots to label with their epoch, extrema and ends first, skipping any too close to a label placed."""
    order = sorted(range(len(snaps)), key=lambda i: (snaps[i].kind not in ("trough", "peak", "start"),
                                                     i != len(snaps) - 1, i))
    pixels = ax.transData.transform(coords)
    placed = []
    for i in order:
        if all(np.hypot(*(pixels[i] - pixels[j])) >= min_pixels for j in placed):
            placed.append(i)
    return sorted(placed)


def axis_label(result, k):
    """Axis label: the direction and, for PCA, the share of the trajectory's squared displacement it explains."""
    if result["method"] == "pca":
        return f"PC{k + 1} ({100 * result['explained'][k]:.1f}% of the squared displacement)"
    return f"random direction {k + 1} (filter-normalised)"

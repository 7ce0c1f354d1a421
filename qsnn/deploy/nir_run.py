"""The project's own NIR reader: runs a graph written by qsnn.deploy.nir_export with NumPy alone.

Unlike a generic importer it honours the metadata that NIR's fields cannot carry: each LIF node's
reset_mechanism (subtract or zero) and reset_delay, the graph's input encoding and time steps. With
those it reproduces the PyTorch network's spikes (snnTorch Leaky, reset_delay=True):

    R_t = [U_{t-1} > thr];  U_t = beta U_{t-1} + I_t - thr R_t (subtract) or beta (1 - R_t) U_{t-1} + I_t (zero)
    S_t = [U_t > thr]

beta is read back from NIR's own fields, beta = 1 - dt / tau, with the graph's dt; r must be tau / dt.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qsnn.errors import UserError


def chain(graph):
    """The node names from input to output (the exporter writes a chain; other graphs are refused)."""
    following = dict(graph.edges)
    if len(following) != len(graph.edges):
        raise UserError("the NIR graph branches; this reader runs chains of nodes only")
    name = next((n for n, node in graph.nodes.items() if type(node).__name__ == "Input"), None)
    order = []
    while name is not None:
        order.append(name)
        name = following.get(name)
    if len(order) != len(graph.nodes):
        raise UserError("the NIR graph is not one chain from its Input node to its Output node")
    return order


def conv2d(x, weight, bias, stride, padding):
    """Cross-correlation of x [B, C, H, W] with weight [O, C, k, k] (NumPy), plus bias [O]."""
    pad_h, pad_w = padding
    x = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    windows = sliding_window_view(x, weight.shape[-2:], axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # [B, H', W', O]
    return out.transpose(0, 3, 1, 2) + bias[None, :, None, None]


def avg_pool(x, kernel, stride):
    """s x s average pool of x [B, C, H, W] (floor mode, no padding)."""
    windows = sliding_window_view(x, tuple(kernel), axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    return windows.mean(axis=(-2, -1))


class LIFState:
    """One LIF node's membrane and last spikes, stepped as the metadata says."""

    def __init__(self, node, dt, dtype):
        meta = node.metadata
        tau, r = np.asarray(node.tau, np.float64), np.asarray(node.r, np.float64)
        if not np.allclose(r, tau / dt) or not np.allclose(node.v_leak, 0) or not np.allclose(node.v_reset, 0):
            raise UserError("this reader needs LIF nodes with r = tau / dt, v_leak = 0 and v_reset = 0")
        beta = meta["beta"] if "beta" in meta else 1.0 - dt / tau  # the exact value where the exporter kept it
        self.beta = np.asarray(beta, dtype)
        self.threshold = np.asarray(node.v_threshold, dtype)
        # without qsnn's metadata: NIR's own semantics, an immediate reset to v_reset = 0
        self.reset = text(meta.get("reset_mechanism", "zero"))
        self.delay = bool(meta.get("reset_delay", 0))
        self.mem = None

    def step(self, current):
        """One time step; returns the spikes (0/1, the membrane's dtype)."""
        if self.mem is None:
            self.mem = np.zeros_like(current)
        fired = (self.mem > self.threshold).astype(current.dtype) if self.delay else 0
        if self.reset == "subtract":
            self.mem = self.beta * self.mem + current - fired * self.threshold
        elif self.reset == "zero":
            self.mem = self.beta * ((1 - fired) * self.mem) + current
        else:
            self.mem = self.beta * self.mem + current
        spikes = (self.mem > self.threshold).astype(current.dtype)
        if not self.delay and self.reset != "none":  # reset at once, as NIR and snnTorch's reset_delay=False do
            self.mem = self.mem - spikes * (self.threshold if self.reset == "subtract" else self.mem)
        return spikes


def text(value):
    """A metadata string as str (HDF5 may give bytes back)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def node_function(node, dtype):
    """A function of a batch [B, ...] for one stateless NIR node."""
    kind = type(node).__name__
    if kind in ("Input", "Output"):
        return lambda x: x
    if kind == "Conv2d":
        weight, bias = np.asarray(node.weight, dtype), np.asarray(node.bias, dtype)
        if node.groups != 1 or tuple(node.dilation) != (1, 1) or isinstance(node.padding, str):
            raise UserError("this reader runs Conv2d nodes with groups 1, dilation 1 and integer padding")
        return lambda x: conv2d(x, weight, bias, tuple(node.stride), tuple(node.padding))
    if kind == "AvgPool2d":
        if np.any(np.asarray(node.padding) != 0):
            raise UserError("this reader runs AvgPool2d nodes without padding")
        return lambda x: avg_pool(x, tuple(int(k) for k in node.kernel_size), tuple(int(s) for s in node.stride))
    if kind == "Flatten":
        return lambda x: x.reshape(len(x), -1)
    if kind in ("Linear", "Affine"):
        weight = np.asarray(node.weight, dtype)
        bias = np.asarray(node.bias, dtype) if kind == "Affine" else 0
        return lambda x: x @ weight.T + bias
    raise UserError(f"this reader does not implement NIR {kind} nodes")


def run_graph(graph, x, num_steps=None, dtype=np.float64):
    """Output spikes [T, B, classes] of a graph on static inputs x [B, C, H, W] (num_steps steps) or
    event frames x [T, B, C, H, W]."""
    dt = float(graph.metadata.get("dt", 1e-4))
    order = chain(graph)
    stages = []
    for name in order:
        node = graph.nodes[name]
        stages.append(LIFState(node, dt, dtype) if type(node).__name__ == "LIF" else node_function(node, dtype))
    x = np.asarray(x, dtype)
    if num_steps is None and x.ndim != 5:
        num_steps = int(graph.metadata.get("num_steps", 0)) or None
    if (num_steps is None) == (x.ndim == 4):
        raise UserError("give num_steps with a static [B, C, H, W] input and only then")
    frames = [x] * num_steps if x.ndim == 4 else list(x)
    outputs = []
    for frame in frames:
        out = frame
        for stage in stages:
            out = stage.step(out) if isinstance(stage, LIFState) else stage(out)
        outputs.append(out)
    return np.stack(outputs)

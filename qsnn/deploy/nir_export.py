"""A trained QSNN as a NIR graph (the Neuromorphic Intermediate Representation, package `nir`).

Each conv block becomes Conv2d -> AvgPool2d -> LIF and the head Flatten -> Linear -> LIF:

- the pool is its own AvgPool2d node, not folded into the conv (the conv weights then stay the ones
  whose integer codes the metadata holds); BatchNorm comes after the pool in the network, but an affine
  per-channel map commutes with an average pool, so its eval-mode affine is folded into the conv:
  w' = w g, bias = h, with g = gamma / sqrt(var + eps) and h = beta_bn - mean g;
- weights are the values the network really multiplies by (Brevitas' dequantized weights); the
  integer codes, per-channel scale and bit width are kept in the node's metadata (codes x scale = w);
- LIF nodes are written for forward Euler at a time step dt: tau = dt / (1 - beta), r = tau / dt,
  v_leak = 0, so that v <- v + dt/tau (-v + r I) is exactly v <- beta v + I. NIR's LIF resets to
  v_reset (0 here); the network's own reset (subtract/zero) is in the LIF node's metadata.

The default dt, 1e-4 s, is the step that snnTorch 1.0's `import_from_nir` hard-codes.
"""
import numpy as np
import snntorch as snn
import torch

from qsnn.core.models import effective_weight, fold_avg_pool, weight_codes
from qsnn.core.neuron_modules import reset_of
from qsnn.core.neuron_names import RESETS
from qsnn.deploy.convert import batch_norm_affine
from qsnn.errors import UserError

# Config keys whose other values the NIR export does not implement (key -> the one it does): quantized
# membranes, and the Synaptic neuron (NIR's CubaLIF would carry it; not written yet).
UNSUPPORTED_KEYS = {"state_bits": None, "neuron": "leaky"}
DEFAULT_DT = 1e-4  # snnTorch 1.0's importer assumes this step; Norse's from_nir takes dt as an argument


def require_nir():
    """The nir package, or a one-line UserError saying how to install it."""
    try:
        import nir
    except ImportError:
        raise UserError("NIR export needs the nir package: pip install nir") from None
    return nir


def computed_reset(lif):
    """The reset an snn.Leaky really computes (qsnn.core.neuron_modules.reset_of: its state function, which
    snnTorch 1.0 picks in __init__), its reset_mechanism where the state function is not one snnTorch names."""
    return reset_of(lif) or lif.reset_mechanism


def lif_settings(lif):
    """(beta, threshold, reset mechanism, reset_delay) of one snn.Leaky, refused if NIR cannot carry it."""
    if not isinstance(lif, snn.Leaky) or type(lif) is not snn.Leaky:
        raise UserError(f"NIR export implements snn.Leaky neurons, not {type(lif).__name__}")
    if lif.beta.numel() != 1 or lif.threshold.numel() != 1:
        raise UserError("NIR export implements one beta and one threshold per layer; this network learned one "
                        "per channel (learn_per_channel true)")
    beta, threshold = float(lif.beta), float(lif.threshold)
    if lif.reset_mechanism not in RESETS:
        raise UserError(f"reset_mechanism {lif.reset_mechanism!r} is not one of {', '.join(RESETS)}")
    if computed_reset(lif) != lif.reset_mechanism:
        raise UserError(f"an snn.Leaky says reset_mechanism {lif.reset_mechanism!r} but computes "
                        f"{computed_reset(lif)!r} (snnTorch 1.0 fixes the update when the neuron is built); "
                        "build the neuron with the reset it should have")
    if not 0.0 <= beta < 1.0:
        raise UserError(f"beta {beta} cannot be written as a NIR LIF (tau = dt / (1 - beta) needs 0 <= beta < 1)")
    if lif.state_quant or lif.inhibition or float(lif.graded_spikes_factor) != 1.0:
        raise UserError("NIR export does not implement quantized membranes, inhibition or graded spikes")
    return beta, threshold, lif.reset_mechanism, bool(lif.reset_delay)


def lif_node(nir, lif, shape, dt):
    """A NIR LIF node of the given neuron shape for one snn.Leaky, its own reset semantics in metadata."""
    beta, threshold, reset, delay = lif_settings(lif)
    tau = dt / (1.0 - beta)
    full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731
    meta = {"beta": beta, "threshold": threshold, "reset_mechanism": reset, "reset_delay": int(delay),
            "discretisation": "forward Euler", "dt": dt, "beta_is": "1 - dt / tau",
            "update": update_rule(reset)}
    return nir.LIF(tau=full(tau), r=full(tau / dt), v_leak=full(0.0), v_threshold=full(threshold),
                   v_reset=full(0.0), metadata=meta)


def update_rule(reset):
    """The network's membrane update (snnTorch's, reset_delay=True) as a line of text."""
    return {"subtract": "U_t = beta U_{t-1} + I_t - thr S_{t-1}",
            "zero": "U_t = beta (1 - S_{t-1}) U_{t-1} + I_t",
            "none": "U_t = beta U_{t-1} + I_t"}[reset] + "; S_t = [U_t > thr]"


def code_metadata(layer):
    """The integer codes, per-output-channel scale and bit width of a quantized layer (codes x scale = w)."""
    codes, scale, bits = weight_codes(layer)
    dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32
    return {"weight_codes": codes.astype(dtype), "weight_scale": scale, "weight_bits": int(bits)}


def conv_nodes(nir, block, side, dt, index, fold_pool=False):
    """{name: node} of one conv block (conv with BatchNorm folded, pool, LIF) and its output side.

    fold_pool: the pool folded into the conv too (a stride-s conv, kernel k+s-1), for importers without AvgPool2d.
    """
    conv = block.conv
    weight = effective_weight(conv).detach().double().cpu().numpy()
    gain, offset = batch_norm_affine(block.bn, weight.shape[0])
    meta = {**code_metadata(conv), "bn_gain": gain, "bn_offset": offset,
            "weight_is": "effective weight x bn_gain (per output channel); bias = bn_offset"}
    kernel, pad, pool = weight.shape[-1], block.padding, block.pool_size
    conv_side = side + 2 * pad - kernel + 1
    out_side = conv_side // pool
    shape = (weight.shape[0], out_side, out_side)
    folded = weight * gain[:, None, None, None]
    if fold_pool:
        meta.update(pool_folded=int(pool), weight_is="fold_avg_pool(effective weight x bn_gain, pool_folded), "
                    "stride pool_folded; bias = bn_offset")
        folded = fold_avg_pool(torch.from_numpy(folded), pool).numpy()
        lif = lif_node(nir, block.lif, shape, dt)
        return {f"conv{index}": nir.Conv2d(input_shape=(side, side), weight=folded, stride=pool, padding=pad,
                                           dilation=1, groups=1, bias=offset, metadata=meta),
                f"lif{index}": lif}, out_side
    nodes = {f"conv{index}": nir.Conv2d(input_shape=(side, side), weight=folded,
                                        stride=1, padding=pad, dilation=1, groups=1, bias=offset, metadata=meta),
             f"pool{index}": nir.AvgPool2d(kernel_size=np.array([pool, pool]), stride=np.array([pool, pool]),
                                           padding=np.array([0, 0])),
             f"lif{index}": lif_node(nir, block.lif, shape, dt)}
    nodes[f"pool{index}"].input_type = {"input": np.array([weight.shape[0], conv_side, conv_side])}
    nodes[f"pool{index}"].output_type = {"output": np.array(shape)}
    return nodes, out_side


def head_nodes(nir, head, features, dt):
    """{name: node} of the head: flatten, linear (no bias), LIF."""
    weight = effective_weight(head.fc).detach().double().cpu().numpy()
    flatten = nir.Flatten(input_type={"input": np.array(features)}, start_dim=0, end_dim=-1)
    return {"flatten": flatten, "fc": nir.Linear(weight=weight, metadata=code_metadata(head.fc)),
            "lif_out": lif_node(nir, head.lif, (weight.shape[0],), dt)}


def to_nir(model, input_shape, dt=DEFAULT_DT, num_steps=None, input_encoding="static", fold_pool=False):
    """A NIR graph of a QSNN (eval-mode BatchNorm) for inputs of shape (C, H, W).

    input_encoding: "static" (the same current at each of num_steps steps) or "events" (one frame a step).
    fold_pool: each average pool folded into its conv (no AvgPool2d nodes; Norse 1.1 has no AvgPool2d import).
    """
    nir = require_nir()
    if dt <= 0:
        raise UserError(f"dt {dt} is not allowed; the time step must be positive")
    model.eval()
    channels, side, width = input_shape
    if side != width:
        raise UserError(f"the network takes square inputs, not {side}x{width}")
    nodes = {"input": nir.Input(input_type={"input": np.array([channels, side, side])})}
    width = channels
    for index, block in enumerate(model.blocks, start=1):
        block_nodes, side = conv_nodes(nir, block, side, dt, index, fold_pool)
        nodes.update(block_nodes)
        width = block.conv.out_channels
    nodes.update(head_nodes(nir, model.head, (width, side, side), dt))
    classes = model.head.fc.out_features
    nodes["output"] = nir.Output(output_type={"output": np.array([classes])})
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata=graph_metadata(
        dt, num_steps, input_encoding))


def graph_metadata(dt, num_steps, input_encoding):
    """What NIR's own fields do not say: the discretisation, time steps, input encoding and readout."""
    encodings = {"static": "the input is a current, the same at each of num_steps time steps",
                 "events": "one event-count frame [C, H, W] a time step"}
    if input_encoding not in encodings:
        raise UserError(f"input encoding {input_encoding!r} is not one of {', '.join(encodings)}")
    meta = {"producer": "qsnn", "discretisation": "forward Euler", "dt": float(dt),
            "input_encoding": input_encoding, "input_encoding_is": encodings[input_encoding],
            "readout": "argmax over classes of the output spikes summed over time",
            "lif_reset": "see each LIF node's metadata: reset_mechanism, reset_delay, update"}
    if num_steps is not None:
        meta["num_steps"] = int(num_steps)
    return meta


def write_nir(path, graph):
    """Write a graph to an HDF5 .nir file atomically."""
    from qsnn.files import atomic_path

    nir = require_nir()
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)


def read_nir(path):
    """A NIR graph read back from a file, or a one-line UserError."""
    nir = require_nir()
    try:
        return nir.read(path)
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"cannot read {path} as a NIR graph ({type(e).__name__}: {str(e)[:120]})") from None


"""A NIR graph imported back and run on the test set: accuracy and agreement with the PyTorch network.

Importers: the project's own reader (qsnn.deploy.nir_run, which honours the metadata) and snnTorch's
`import_from_nir`. Two things snnTorch 1.0's importer does that this module works around or records:
it maps NIR's batch-less Flatten(start_dim=0) to torch.nn.Flatten(0, -1), which would flatten the batch
too (shifted here by one dimension), and it builds every LIF with reset to zero and reset_delay=False
(kept as it is: that is what the importer gives). Norse runs in its own environment: bench/nir_norse.py.
"""
import numpy as np

from qsnn.deploy.nir_export import computed_reset
from qsnn.deploy.nir_run import run_graph
from qsnn.errors import UserError, shorten


def model_reset(model):
    """The one reset mechanism of all the model's LIF layers (what they compute)."""
    resets = {computed_reset(m.lif) for m in (*model.blocks, model.head)}
    return resets.pop() if len(resets) == 1 else "mixed"


def pytorch_spikes(model, x, num_steps, batch_size=64):
    """Output spikes [T, N, classes] of the PyTorch model (the fast execution where it applies)."""
    import torch

    model.eval()
    execution = model.execution
    model.execution = "fast" if not model.unsupported_by_fast() else "reference"
    try:
        with torch.no_grad():  # events [N, T, C, H, W] run as [T, B, C, H, W]
            parts = [model(b, num_steps)[0].numpy() if b.dim() == 4 else model(b.transpose(0, 1))[0].numpy()
                     for b in (x[i:i + batch_size] for i in range(0, len(x), batch_size))]
    finally:
        model.execution = execution
    return np.concatenate(parts, axis=1)


def own_reader_spikes(graph, x, num_steps, dtype=np.float32, batch_size=64):
    """Output spikes [T, N, classes] of qsnn.deploy.nir_run on x (a tensor or array)."""
    x = np.asarray(x)
    batches = (x[i:i + batch_size] for i in range(0, len(x), batch_size))
    parts = [run_graph(graph, b, num_steps, dtype) if b.ndim == 4 else run_graph(graph, b.swapaxes(0, 1), None, dtype)
             for b in batches]
    return np.concatenate(parts, axis=1)


def snntorch_network(graph):
    """snnTorch's import_from_nir of a graph, its Flatten fixed for batches; a failure is one UserError line."""
    import contextlib
    import io

    import torch

    try:
        from snntorch.import_nir import import_from_nir
    except ImportError as e:
        raise UserError(f"snnTorch's NIR import is unavailable ({shorten(str(e))}); pip install nirtorch") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line for every graph
            net = import_from_nir(graph)
    except Exception as e:  # noqa: BLE001  (a third-party importer: any failure is reported in one line)
        raise UserError(f"snnTorch's import_from_nir failed ({type(e).__name__}: {shorten(str(e))})") from None
    for module in net.modules():
        if isinstance(module, torch.nn.Flatten) and module.start_dim == 0:
            module.start_dim = 1  # NIR's dimensions exclude the batch; torch's include it
    return net


def snntorch_spikes(net, x, num_steps, batch_size=64):
    """Output spikes [T, N, classes] of an imported snnTorch network, stepped num_steps times per batch."""
    import snntorch as snn
    import torch

    leaky = [m for m in net.modules() if isinstance(m, snn.Leaky)]
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = torch.as_tensor(np.asarray(x[i:i + batch_size]), dtype=torch.float32)
            for lif in leaky:
                lif.mem = torch.zeros(0)  # a new batch starts from rest
            steps = [batch] * num_steps if batch.dim() == 4 else list(batch.transpose(0, 1))
            outs = [net(step) for step in steps]
            parts.append(torch.stack([o[0] if isinstance(o, tuple) else o for o in outs]).numpy())
    return np.concatenate(parts, axis=1)


def predictions(spikes):
    """The voted class of each sample: argmax of output spikes summed over time."""
    return spikes.sum(axis=0).argmax(axis=-1)


def agreement_row(name, spikes, reference, y):
    """(name, accuracy %, prediction agreement %, output spike agreement %) against the reference spikes."""
    pred, ref_pred = predictions(spikes), predictions(reference)
    return (name, 100.0 * np.mean(pred == y), 100.0 * np.mean(pred == ref_pred),
            100.0 * np.mean(spikes == reference))


def importer_rows(model, graph, x, y, num_steps, extra=()):
    """Rows for PyTorch, the own reader (float32, float64) and snnTorch's import; extra: (name, spikes) pairs."""
    reference = pytorch_spikes(model, x, num_steps)
    rows = [agreement_row("PyTorch", reference, reference, y)]
    for dtype in (np.float32, np.float64):
        spikes = own_reader_spikes(graph, x, num_steps, dtype)
        rows.append(agreement_row(f"qsnn NIR reader ({np.dtype(dtype).name})", spikes, reference, y))
    try:
        spikes = snntorch_spikes(snntorch_network(graph), x, num_steps)
        rows.append(agreement_row("snnTorch import_from_nir", spikes, reference, y))
    except UserError as e:
        rows.append(("snnTorch import_from_nir: " + str(e), None, None, None))
    rows.extend(agreement_row(name, spikes, reference, y) for name, spikes in extra)
    return rows


def format_nir_table(rows, count, reset):
    """A Markdown table of importer_rows over `count` test samples of a model with one reset."""
    lines = [f"| importer (reset {reset}, {count} test samples) | accuracy % | prediction agreement % "
             "| output spike agreement % |", "|---|---:|---:|---:|"]
    for name, acc, agree, spikes in rows:
        cells = ["—" if v is None else f"{v:.2f}" for v in (acc, agree, spikes)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def with_reset(model, reset):
    """The model with every LIF rebuilt to reset by `reset` (snnTorch 1.0 fixes the update at construction)."""
    import snntorch as snn

    for module in (*model.blocks, model.head):
        old = module.lif
        module.lif = snn.Leaky(beta=float(old.beta), threshold=float(old.threshold), spike_grad=old.spike_grad,
                               reset_mechanism=reset)
    return model

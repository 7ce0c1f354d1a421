"""Run a .nir file written by `export.py --format nir` through Norse's NIR import (its own environment).

    python -m venv /tmp/norse-venv && /tmp/norse-venv/bin/pip install torch norse
    /tmp/norse-venv/bin/python bench/nir_norse.py MODEL.nir INPUTS.npy SPIKES.npy [--reset subtract]

INPUTS.npy holds static inputs [N, C, H, W] (shown at each of the graph's num_steps steps); SPIKES.npy gets
the output spikes [T, N, classes], or nothing and one `error:` line (exit 2) when Norse cannot import
the graph. Needs only nir, norse, torch and numpy (not this project), so it runs where Norse installs.
"""
import argparse
import sys

import numpy as np


def main(argv=None):
    """Import with norse.torch.from_nir (the graph's dt) and step it num_steps times per batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph")
    parser.add_argument("inputs")
    parser.add_argument("out")
    parser.add_argument("--reset", choices=("value", "subtract"), default="value",
                        help="Norse's reset_method for from_nir (it applies it to CubaLIF nodes only)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    import nir
    import norse.torch
    import torch
    from norse.torch.functional import reset

    graph = nir.read(args.graph)
    steps, dt = int(graph.metadata["num_steps"]), float(graph.metadata["dt"])
    method = reset.reset_subtract if args.reset == "subtract" else reset.reset_value
    try:
        net = norse.torch.from_nir(graph, reset_method=method, dt=dt, ignore_warnings=True)
    except Exception as e:  # noqa: BLE001  (report the third-party failure in one line)
        print(f"error: norse.torch.from_nir failed ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return 2
    for module in net.modules():  # Norse maps NIR's batch-less Flatten(0, -1) to torch's, which flattens the batch
        if isinstance(module, torch.nn.Flatten) and module.start_dim == 0:
            module.start_dim = 1
    x = torch.from_numpy(np.load(args.inputs)).float()
    parts = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), args.batch_size):
                batch, state, outs = x[i:i + args.batch_size], None, []
                for _ in range(steps):
                    out, state = net(batch, state)
                    outs.append(out)
                parts.append(torch.stack(outs).numpy())
    except Exception as e:  # noqa: BLE001
        print(f"error: the Norse network failed to run ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return 2
    np.save(args.out, np.concatenate(parts, axis=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

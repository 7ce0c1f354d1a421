"""Speed of each neuron option (qsnn.core.neurons) in the fast and the reference execution, in one process.

The paper's MNIST network and settings (4-bit, beta 0.994, threshold 2.915, slope 13.84) with one neuron
option changed at a time, plus the stepped fallback (a neuron the fused path does not implement), at a
small shape (default batch 16, 10 steps) on synthetic images: a training iteration (forward, loss, backward,
Adam) and an eval forward, each timed alternately per execution.

    python bench/bench_neurons.py                        # defaults; prints a markdown table
    python bench/bench_neurons.py --batch 128 --steps 100 --iters 5
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_speed, next to this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import bench_speed as bs  # noqa: E402  (starts its clock before torch loads)
import torch  # noqa: E402
from snntorch import surrogate  # noqa: E402

from qsnn.core.models import QSNN  # noqa: E402

ARCHITECTURES = bs.ARCHITECTURES

# Each option: QSNN keyword changes from the paper's MNIST model (bench_speed.CONFIGS["mnist"]).
CASES = {
    "default (subtract, fast_sigmoid)": {},
    "reset zero": dict(reset_mechanism="zero"),
    "reset none": dict(reset_mechanism="none"),
    "surrogate atan": dict(surrogate="atan"),
    "surrogate sigmoid": dict(surrogate="sigmoid"),
    "surrogate triangular": dict(surrogate="triangular"),
    "surrogate straight_through": dict(surrogate="straight_through"),
    "learn_beta": dict(learn_beta=True),
    "learn_threshold": dict(learn_threshold=True),
    "learn beta+threshold per channel": dict(learn_beta=True, learn_threshold=True, learn_per_channel=True),
    "synaptic (alpha 0.9)": dict(neuron="synaptic"),
    "fallback (stepped Leaky)": "fallback",
}


def build(case, cfg):
    """The paper's MNIST network with the case's neuron option (the fallback: a surrogate swapped in)."""
    changes = CASES[case]
    net = QSNN(**ARCHITECTURES["image"], **cfg["model"], **(changes if isinstance(changes, dict) else {}))
    if changes == "fallback":  # the same maths, but an object the fused path does not know: stepped per step
        for module in [*net.blocks, net.head]:
            module.lif.spike_grad = surrogate.fast_sigmoid(slope=cfg["model"]["slope"])
    return net


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per path and phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or all")
    return parser.parse_args()


def main():
    args = parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # Brevitas chatter and the fallback's own warning
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(CASES) if args.cases == "all" else [list(CASES)[int(i) - 1] for i in args.cases.split(",")]
    device = torch.device("cpu")
    cfg = {**bs.CONFIGS["mnist"], "batch": args.batch}
    x, y = bs.make_batch(cfg, args.steps, device, bs.EVENT_DENSITY)
    meter = bs.PeakMemory(device)
    header = (f"device: {bs.device_description(device)} | torch {torch.__version__} | threads "
              f"{torch.get_num_threads()} (interop {torch.get_num_interop_threads()}) | MNIST paper network, "
              f"batch {args.batch}, {args.steps} steps | warm-up {args.warmup}, timed {args.iters} per path and phase")
    bs.log(header)
    rows = []
    for name in names:
        torch.manual_seed(bs.SEED)
        base = build(name, cfg)
        paths = [bs.Runner("reference", base, cfg, "reference"), bs.Runner("fast", base, cfg, "fast")]
        fused = "stepped" if paths[1].module.unsupported_by_fast() else "fused"
        bs.log(f"{name} ({fused})")
        timings = {phase: bs.time_phase(paths, phase, x, y, args.steps, args.warmup, args.iters, meter)
                   for phase in ("train", "eval")}
        cells = []
        for phase in ("train", "eval"):
            ref, fast = timings[phase]["reference"].median, timings[phase]["fast"].median
            cells += [bs.fmt_s(ref), bs.fmt_s(fast), f"{ref / fast:.2f}"]
        rows.append([name, fused, *cells])
    print(f"\n{header}\n")
    bs.print_table(["neuron option", "fast path", "train ref s/it:", "train fast s/it:", "train × ref:",
                    "eval ref s/it:", "eval fast s/it:", "eval × ref:"], rows)
    print("\ntrain = forward + mse_count_loss + backward + Adam step; eval = forward under no_grad in eval mode; "
          "medians; × ref = reference median / fast median. fused: qsnn.core.neurons' Functions; stepped: the "
          "fast execution's general fallback (stateless layers over all steps, the neuron module per step).")
    print(f"\nbench/bench_neurons.py took {time.perf_counter() - bs.START:.0f} s in all.")


if __name__ == "__main__":
    main()

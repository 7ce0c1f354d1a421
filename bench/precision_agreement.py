"""compute_precision fp32 against bf16 on a trained checkpoint's real test set: accuracy, identical predictions and
output spike counts, and the evaluation time of each, in one process.

    python bench/precision_agreement.py runs/mnist_4bit_cosine/mnist_4bit_cosine_t0.pt --data_dir /data
    python bench/precision_agreement.py CHECKPOINT --test_batch_size 1000 --threads 2

The checkpoint is read and checked as evaluate.py reads it; nothing is written.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import evaluate  # noqa: E402
from qsnn.core.loop import run_network, test_steps  # noqa: E402
from qsnn.core.models import build_model  # noqa: E402
from qsnn.data.loaders import make_loaders  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.progress import progress  # noqa: E402
from qsnn.runs.memory import keep_freed_memory  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a <exp>_t<k>.pt or last_<exp>_t<k>.pt file")
    parser.add_argument("--data_dir", help="where the dataset is (default: the checkpoint's config)")
    parser.add_argument("--test_batch_size", type=int, help="default: the checkpoint's")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    args.device, args.execution, args.compute_precision = "cpu", "fast", None  # what evaluate.test_config reads
    return args


@torch.no_grad()
def output_counts(models, loader, steps):
    """Per model: the output spike counts [N, classes] over the loader, the labels, and the seconds it ran."""
    counts, seconds, labels = {name: [] for name in models}, dict.fromkeys(models, 0.0), []
    for x, y in progress(loader, desc="test batches", total=len(loader), unit="batch"):
        labels.append(y)
        for name, model in models.items():  # alternating per batch: a slower or faster machine hits both
            start = time.perf_counter()
            counts[name].append(run_network(model, x, steps).sum(0))
            seconds[name] += time.perf_counter() - start
    return {name: torch.cat(c) for name, c in counts.items()}, torch.cat(labels), seconds


def main(argv=None):
    args = parse(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = evaluate.read_checkpoint(args.checkpoint)
        cfg = evaluate.test_config(args.checkpoint, checkpoint, args)
        loader = make_loaders(cfg, torch.device("cpu"), torch.Generator())["test"]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    models = {}
    for precision in ("fp32", "bf16"):
        model = build_model({**cfg, "compute_precision": precision})
        model.load_state_dict(checkpoint["model"])
        models[precision] = model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts, labels, seconds = output_counts(models, loader, test_steps(cfg))
    for note in sorted({str(w.message) for w in caught if "compute_precision" in str(w.message)}):
        print(f"note: {note}")
    predicted = {name: c.argmax(1) for name, c in counts.items()}
    print(f"{args.checkpoint}: {cfg['dataset']}, {len(labels):,} test samples, {test_steps(cfg)} steps, batch "
          f"{cfg['test_batch_size']}, {torch.get_num_threads()} threads")
    for name in models:
        accuracy = 100 * (predicted[name] == labels).float().mean().item()
        print(f"{name}: test accuracy {accuracy:.2f}%, evaluation {seconds[name]:.1f} s")
    same = (predicted["fp32"] == predicted["bf16"]).float().mean().item()
    rows = (counts["fp32"] == counts["bf16"]).all(1).float().mean().item()
    print(f"identical predictions: {100 * same:.2f}%; identical output spike counts (all classes): {100 * rows:.2f}%")
    print(f"bf16 evaluation is {seconds['fp32'] / seconds['bf16']:.2f}x as fast as fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())

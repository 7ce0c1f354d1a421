"""Evaluate a saved QSNN checkpoint on its test set: accuracy, spike rate per layer, SynOps, weight memory.

    python evaluate.py runs/mnist_4bit_cosine/mnist_4bit_cosine_t0.pt          # best model of trial 0
    python evaluate.py runs/mnist_4bit_cosine/last_mnist_4bit_cosine_t0.pt     # state after the last epoch
    python evaluate.py CHECKPOINT --data_dir /data --device cuda --execution reference

The network, time steps and dataset come from the checkpoint's own config. A checkpoint is read with
torch.load(weights_only=True), so a file received from someone else cannot run code.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing

from qsnn.errors import UserError  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a <exp>_t<k>.pt or last_<exp>_t<k>.pt file")
    parser.add_argument("--data_dir", help="where the dataset is (default: the checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--execution", choices=("fast", "reference"), help="default: the checkpoint's")
    parser.add_argument("--test_batch_size", type=int, help="default: the checkpoint's")
    return parser.parse_args(argv)


def test_config(saved, args):
    """The checkpoint's config with the evaluation-only overrides, validated like a run's."""
    from qsnn.config import check_device

    cfg = dict(saved)
    for key in ("data_dir", "execution", "test_batch_size"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    problem = check_device(args.device)
    if problem:
        raise UserError(problem)
    if cfg["test_batch_size"] < 1:
        raise UserError("--test_batch_size must be >= 1")
    return {**cfg, "device": args.device, "val_split": 0.0}


def evaluate_checkpoint(path, args):
    """(config, accuracy in percent, efficiency figures as in an eff CSV) of a checkpoint on its test set."""
    import torch

    from qsnn import runlog
    from qsnn.data import make_loaders
    from qsnn.experiment import resolve_device
    from qsnn.models import build_model
    from qsnn.efficiency import COLUMNS, EfficiencyMeter
    from qsnn.train import evaluate, test_steps

    if not Path(path).is_file():
        raise UserError(f"{path} does not exist; give a checkpoint such as runs/<exp>/<exp>_t0.pt")
    checkpoint = runlog.load_checkpoint(path, ("model", "config"),
                                        remedy="give a <exp>_t<k>.pt or last_<exp>_t<k>.pt file that training wrote")
    cfg = test_config(checkpoint["config"], args)
    device = resolve_device(cfg["device"])
    model = build_model(cfg).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise UserError(f"{path}: its weights do not fit the network its config describes") from None
    loaders = make_loaders(cfg, device, torch.Generator())
    meter = EfficiencyMeter(model)
    accuracy = evaluate(model, loaders["test"], test_steps(cfg), device, meter)
    return cfg, accuracy, dict(zip(COLUMNS[1:], meter.row()))


def main(argv=None):
    args = parse(argv)
    try:
        cfg, accuracy, figures = evaluate_checkpoint(args.checkpoint, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{args.checkpoint}: {cfg['dataset']}, {cfg['num_bits'] or 32}-bit weights, "
          f"{cfg.get('num_steps_test', cfg.get('num_steps'))} steps")
    print(f"test accuracy: {accuracy:.2f}%")
    for name, value in figures.items():
        if name.startswith("rate_"):
            print(f"spike rate {name[5:]}: {value:.4f} spikes per neuron per step")
    print(f"synaptic operations per sample: {figures['synops']:,.0f} (first layer: "
          f"{figures['input_macs']:,.0f} multiply-accumulates)")
    print(f"weight memory: {figures['weight_kib']:.2f} KiB ({figures['weight_kib_fp32']:.2f} KiB in fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m qsnn.deploy BUNDLE [--widths 8,12,16] [--limit N]: a bundle's accuracy and agreement with the
PyTorch model it was exported from (torch is needed for the comparison only)."""
import sys

from qsnn.deploy.bundle_files import load_bundle
from qsnn.deploy.runtime import check_limit, parse_widths, weight_memory_bytes
from qsnn.errors import UserError


def main(argv=None):
    """python -m qsnn.deploy BUNDLE [--widths 8,12,16,24,32]: accuracy and agreement with PyTorch."""
    from qsnn.runs.cli import report_user_errors

    return report_user_errors(compare_bundle, argv)


def compare_bundle(argv):
    """Parse the command line, load the bundle and print its comparison with the PyTorch model."""
    from qsnn.runs.cli import ArgumentParser  # usage mistakes as one-line UserErrors

    parser = ArgumentParser(prog="python -m qsnn.deploy", description=main.__doc__)
    parser.add_argument("bundle", help="NAME.npz, NAME.json or NAME of a bundle written by export.py")
    parser.add_argument("--widths", default=None, help="membrane widths to compare (default: the bundle's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    args = parser.parse_args(argv)
    check_limit(args.limit)
    bundle = load_bundle(args.bundle)
    meta = bundle.meta
    widths = ([meta["membrane_bits"]] if args.widths is None
              else parse_widths(args.widths, meta["headroom_bits"], meta["beta_shift"]))
    source = meta.get("source") or {}
    if "run_dir" not in source:
        raise UserError(f"{args.bundle}: the bundle does not name the run folder it was exported from")
    from qsnn.deploy.convert import load_trial, width_report  # torch: only to compare with PyTorch

    cfg, model, _ = load_trial(source["run_dir"], source.get("trial"))
    options = {"headroom_bits": meta["headroom_bits"], "beta_shift": meta["beta_shift"]}
    print(f"weights: {weight_memory_bytes(bundle)} bytes as packed codes")
    print(width_report(model, cfg, widths, options, first=bundle, limit=args.limit))


if __name__ == "__main__":
    sys.exit(main())

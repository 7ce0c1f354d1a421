"""Export a trial's best checkpoint as an integer-only bundle (NAME.npz + NAME.json, run with NumPy alone).

    python export.py runs/digits_4bit_cosine                       # best trial -> <run>/int_<exp>_t<k>.npz/.json
    python export.py runs/digits_4bit_cosine --trial 0 --out model --membrane_bits 16
    python export.py runs/digits_4bit_cosine --widths 8,12,16,24,32   # also: accuracy and agreement per width

The bundle format and the integer recurrence are described in qsnn/deploy/runtime.py.
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing
from qsnn.deploy import bundle_files, convert as integer_export, runtime as deploy  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.runs.cli import ArgumentParser, report_user_errors  # noqa: E402  (usage mistakes as one-line UserErrors)

# membrane_bits: 8 bits already agree with PyTorch on 100% of the digits demo's predictions but flip 28% of
# output spikes (7 bits: 99.44%); 16 bits keep predictions and flip under 1% of the spikes that the integer
# arithmetic decides (see the README's table), a safer default for other models. headroom 1 beat 2..6
# at every width on the demo: the threshold's resolution matters more than saturating far-negative membranes.
DEFAULTS = {"membrane_bits": 16, "headroom_bits": 1, "beta_bits": 24}


def parse_args(argv):
    """The options, each checked before any work (one-line UserError otherwise)."""
    parser = ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (config.json + <exp>_t<k>.pt)")
    parser.add_argument("--trial", type=int, default=None, help="trial k (default: the best in status.json)")
    parser.add_argument("--out", default=None, help="bundle name (NAME, NAME.npz or NAME.json)")
    parser.add_argument("--membrane_bits", type=int, default=DEFAULTS["membrane_bits"],
                        help="membrane width W in bits, saturating (default %(default)s)")
    parser.add_argument("--headroom_bits", type=int, default=DEFAULTS["headroom_bits"],
                        help="bits of membrane range above the threshold: theta is near 2^(W-1-headroom) "
                             "(default %(default)s)")
    parser.add_argument("--beta_bits", type=int, default=DEFAULTS["beta_bits"],
                        help="fraction bits b of the decay multiplier round(beta 2^b) (default %(default)s)")
    parser.add_argument("--widths", default=None,
                        help="also print accuracy and agreement with PyTorch on the test set at these widths")
    parser.add_argument("--limit", type=int, default=None, help="with --widths: only the first N test samples")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args):
    """Refuse bad options up front; --widths becomes a list of widths."""
    deploy.check_widths(args.membrane_bits, args.headroom_bits, args.beta_bits)
    if args.trial is not None and args.trial < 0:
        raise UserError(f"--trial {args.trial} is not allowed; trials are numbered from 0 (the k of <exp>_t<k>.pt)")
    if args.widths is not None:
        args.widths = deploy.parse_widths(args.widths, args.headroom_bits, args.beta_bits)
    deploy.check_limit(args.limit)
    if args.limit is not None and args.widths is None:
        raise UserError("--limit only applies to the comparison; add --widths (for example --widths 8,16) or drop "
                        "--limit")
    check_out(args.out, args.run_dir)


def check_out(out, run_dir):
    """Refuse an --out (or, without one, a run folder) that the bundle cannot be written to."""
    if out is None:
        if Path(run_dir).is_dir():  # a missing run folder is load_trial's refusal
            check_writable(Path(run_dir), f"the run folder {run_dir}", "give --out elsewhere")
        return
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a bundle name, such as --out {Path(out) / 'model'}")
    for path in bundle_files.bundle_paths(out):
        if path.is_dir():
            raise UserError(f"--out {out} would write {path}, which is a folder; choose another --out")
    folder = bundle_files.bundle_paths(out)[0].parent
    if not folder.is_dir():
        raise UserError(f"--out {out}: the folder {folder} does not exist; create it first or choose another --out")
    check_writable(folder, f"--out {out}: the folder {folder}", "choose another --out")


def check_writable(folder, what, remedy):
    """Refuse a folder where no file can be made (os.access says yes to root even under /proc)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".export_write_test_")
    except OSError as e:
        raise UserError(f"{what} is not writable ({e.strerror}); {remedy}") from None
    os.close(fd)
    os.unlink(probe)


def export(args):
    """Write the bundle; returns (bundle, model, config)."""
    from qsnn.core.loop import test_steps

    cfg, model, source = integer_export.load_trial(args.run_dir, args.trial)
    extra = {"source": source, "num_steps": test_steps(cfg),
             "beta_rounding": "B = rint(beta * 2^beta_shift); decay(M) = (B*M + 2^(beta_shift-1)) >> beta_shift"}
    bundle = integer_export.export_model(model, cfg["dataset"], args.membrane_bits, args.headroom_bits,
                                         args.beta_bits, extra_meta=extra)
    out = args.out or Path(args.run_dir) / f"int_{Path(source['checkpoint']).stem}"
    npz_path, json_path = bundle_files.save_bundle(bundle, out)
    print(f"wrote {npz_path} and {json_path.name}: {args.membrane_bits}-bit membrane, "
          f"{deploy.weight_memory_bytes(bundle)} bytes of weights as packed codes")
    return bundle, model, cfg


def main(argv=None):
    """Export (and with --widths compare); a user mistake is one `error:` line and exit code 2."""
    return report_user_errors(export_and_compare, sys.argv[1:] if argv is None else argv)


def export_and_compare(argv):
    """Parse the command line, write the bundle, and with --widths print the comparison."""
    args = parse_args(argv)
    bundle, model, cfg = export(args)
    if args.widths is not None:
        options = {"headroom_bits": args.headroom_bits, "beta_shift": args.beta_bits}
        print(integer_export.width_report(model, cfg, args.widths, options, first=bundle, limit=args.limit))


if __name__ == "__main__":
    sys.exit(main())

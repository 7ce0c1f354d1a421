"""Export a trial's best checkpoint as an integer-only bundle (NAME.npz + NAME.json, run with NumPy alone).

    python export.py runs/digits_4bit_cosine                       # best trial -> <run>/int_<exp>_t<k>.npz/.json
    python export.py runs/digits_4bit_cosine --trial 0 --out model --membrane_bits 16
    python export.py runs/digits_4bit_cosine --widths 8,12,16,24,32   # also: accuracy and agreement per width
    python export.py runs/digits_4bit_cosine --format nir            # -> <run>/nir_<exp>_t<k>.nir (NIR graph)
    python export.py runs/digits_4bit_cosine --format nir --check    # also: each NIR importer against PyTorch

The bundle format and the integer recurrence are described in qsnn/deploy/runtime.py; the NIR export in
qsnn/deploy/nir_export.py and docs/neurons_nir.md.
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing
from qsnn.deploy import bundle_files, convert as integer_export, runtime as deploy  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.runs.cli import ArgumentParser, report_user_errors  # noqa: E402  (usage mistakes as one-line UserErrors)

# membrane_bits: on the digits demo (docs/deployment.md's measured table) 8 bits keep 99.2% of PyTorch's predictions
# but flip 27% of output spikes; 16 bits keep every prediction and flip about 1% of the spikes that the integer
# arithmetic decides, a safe default for other models. headroom 1 beat 2..6 at every width on the demo: the
# threshold's resolution matters more than saturating far-negative membranes.
DEFAULTS = {"membrane_bits": 16, "headroom_bits": 1, "beta_bits": 24}


def parse_args(argv):
    """The options, each checked before any work (one-line UserError otherwise)."""
    parser = ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (config.json + <exp>_t<k>.pt)")
    parser.add_argument("--trial", type=int, default=None, help="trial k (default: the best in status.json)")
    parser.add_argument("--format", default="bundle", choices=("bundle", "nir"),
                        help="bundle: the integer-only bundle (default); nir: a NIR graph NAME.nir")
    parser.add_argument("--out", default=None, help="bundle name (NAME, NAME.npz or NAME.json; NAME.nir for nir)")
    parser.add_argument("--check", action="store_true",
                        help="with --format nir: print accuracy and agreement with PyTorch of each NIR importer")
    parser.add_argument("--fold_pool", action="store_true",
                        help="with --format nir: fold each average pool into its conv (no AvgPool2d nodes)")
    parser.add_argument("--dt", type=float, default=None,
                        help="with --format nir: the LIF time step in seconds (default 1e-4, snnTorch's importer's)")
    parser.add_argument("--membrane_bits", type=int, default=DEFAULTS["membrane_bits"],
                        help="membrane width W in bits, saturating (default %(default)s)")
    parser.add_argument("--headroom_bits", type=int, default=DEFAULTS["headroom_bits"],
                        help="bits of membrane range above the threshold: theta is near 2^(W-1-headroom) "
                             "(default %(default)s)")
    parser.add_argument("--beta_bits", type=int, default=DEFAULTS["beta_bits"],
                        help="fraction bits b of the decay multiplier round(beta 2^b) (default %(default)s)")
    parser.add_argument("--widths", default=None,
                        help="also print accuracy and agreement with PyTorch on the test set at these widths")
    parser.add_argument("--limit", type=int, default=None,
                        help="with --widths or --check: only the first N test samples")
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
    if args.format == "nir":
        check_nir_args(args)
        return
    if args.check or args.dt is not None or args.fold_pool:
        raise UserError("--check, --dt and --fold_pool only apply to --format nir; add --format nir or drop them")
    if args.limit is not None and args.widths is None:
        raise UserError("--limit only applies to the comparison; add --widths (for example --widths 8,16) or drop "
                        "--limit")
    check_out(args.out, args.run_dir)


def check_nir_args(args):
    """Refuse options that --format nir does not take, a bad --dt, or an --out it cannot write."""
    if args.widths is not None:
        raise UserError("--widths applies to the integer bundle; with --format nir use --check")
    if args.limit is not None and not args.check:
        raise UserError("--limit only applies to the comparison; add --check or drop --limit")
    if args.dt is not None and not (args.dt > 0 and args.dt < float("inf")):
        raise UserError(f"--dt {args.dt} is not allowed; give a positive time step in seconds, such as 1e-4")
    check_out(args.out, args.run_dir, lambda out: [nir_path(out, None)], "file name")


def nir_path(out, default):
    """NAME.nir for --out NAME or NAME.nir (default without --out)."""
    path = Path(out) if out is not None else Path(default)
    return path if path.suffix == ".nir" else path.with_name(path.name + ".nir")


def check_out(out, run_dir, paths_of=bundle_files.bundle_paths, what="bundle name"):
    """Refuse an --out (or, without one, a run folder) that the output cannot be written to; `paths_of(out)`: the
    files it would write (the bundle's two by default)."""
    if out is None:
        if Path(run_dir).is_dir():  # a missing run folder is load_trial's refusal
            check_writable(Path(run_dir), f"the run folder {run_dir}", "give --out elsewhere")
        return
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a {what}, such as --out {Path(out) / 'model'}")
    for path in paths_of(out):
        if path.is_dir():
            raise UserError(f"--out {out} would write {path}, which is a folder; choose another --out")
    folder = paths_of(out)[0].parent
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


def export_nir(args):
    """Write the NIR graph; returns (graph, model, config)."""
    from qsnn.core.loop import test_steps
    from qsnn.deploy import nir_export

    cfg, model, source = integer_export.load_trial(args.run_dir, args.trial, nir_export.UNSUPPORTED_KEYS,
                                                   "the NIR export")
    dt = nir_export.DEFAULT_DT if args.dt is None else args.dt
    encoding = "static" if integer_export.input_info_for(cfg["dataset"])["kind"] == "pixel_codes" else "events"
    graph = nir_export.to_nir(model, input_shape(cfg), dt, test_steps(cfg), encoding, args.fold_pool)
    graph.metadata.update(run_dir=source["run_dir"], checkpoint=source["checkpoint"], trial=int(source["trial"]))
    path = nir_path(args.out, Path(args.run_dir) / f"nir_{Path(source['checkpoint']).stem}")
    nir_export.write_nir(path, graph)
    print(f"wrote {path}: {len(graph.nodes)} NIR nodes, dt {dt:g} s, {test_steps(cfg)} time steps")
    return graph, model, cfg


def input_shape(cfg):
    """(C, H, W) of the config's dataset, as the network takes it."""
    from qsnn.core.geometry import architecture
    from qsnn.data import registry

    sizes = architecture(registry.get(cfg["dataset"]), cfg)
    return sizes["in_channels"], sizes["input_size"], sizes["input_size"]


def nir_report(model, cfg, dt, limit=None, fold_pool=False):
    """The importer tables: the model's own reset, and (for another reset) the same weights with reset zero."""
    from qsnn.core.loop import test_steps
    from qsnn.deploy import nir_check, nir_export

    x, y = integer_export.test_inputs(cfg, limit)
    steps, shape = test_steps(cfg), input_shape(cfg)
    tables = []
    for variant in ("as trained", "reset zero"):
        if variant == "reset zero":
            if nir_check.model_reset(model) == "zero":
                break
            model = nir_check.with_reset(model, "zero")
        graph = nir_export.to_nir(model, shape, dt, steps, fold_pool=fold_pool)
        reset = nir_check.model_reset(model)
        rows = nir_check.importer_rows(model, graph, x, y, steps)
        title = f"{reset}" + ("" if variant == "as trained" else ", same weights, LIFs rebuilt")
        tables.append(nir_check.format_nir_table(rows, len(y), title))
    return "\n\n".join(tables)


def main(argv=None):
    """Export (and with --widths compare); a user mistake is one `error:` line and exit code 2."""
    return report_user_errors(export_and_compare, sys.argv[1:] if argv is None else argv)


def export_and_compare(argv):
    """Parse the command line, write the bundle, and with --widths print the comparison."""
    args = parse_args(argv)
    if args.format == "nir":
        from qsnn.deploy import nir_export

        graph, model, cfg = export_nir(args)
        if args.check:
            dt = nir_export.DEFAULT_DT if args.dt is None else args.dt
            print(nir_report(model, cfg, dt, args.limit, args.fold_pool))
        return
    bundle, model, cfg = export(args)
    if args.widths is not None:
        options = {"headroom_bits": args.headroom_bits, "beta_shift": args.beta_bits}
        print(integer_export.width_report(model, cfg, args.widths, options, first=bundle, limit=args.limit))


if __name__ == "__main__":
    sys.exit(main())

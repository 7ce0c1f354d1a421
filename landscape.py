"""Loss landscape of a run's snapshots: interpolation barriers, weight distances and code flips, a 2-D plane.

    python landscape.py interpolate RUN_DIR [--pairs troughs|peaks|trough-peak|consecutive|epochs:2,6,10]
    python landscape.py interpolate RUN_DIR --other RUN_DIR2          # final models of two runs (seeds)
    python landscape.py distances RUN_DIR
    python landscape.py plane RUN_DIR [--directions pca|random] [--grid 11] [--center EPOCH]

The snapshots are those a training run wrote with --snapshots epoch (or extrema); the network, data, time
steps and loss come from their config. At every point BatchNorm's statistics are recomputed on fixed
training batches, then the training loss and accuracy (fixed training subset) and the test accuracy are
measured. CSVs and figures (PNG + PDF) go to --out (default RUN_DIR/landscape); see qsnn/analysis/landscape.py.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing

from qsnn.runs.cli import ArgumentParser, report_user_errors  # noqa: E402
from qsnn.errors import UserError  # noqa: E402


def positive(minimum):
    """An argparse type: an int >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value
    return parse


def parse_args(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("run_dir", type=Path, help="a run folder that training wrote with --snapshots")
    common.add_argument("--trial", type=positive(0), default=0, help="trial k (default 0)")
    common.add_argument("--out", type=Path, help="output folder (default RUN_DIR/landscape)")
    common.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    common.add_argument("--data_dir", help="where the dataset is (default: the snapshots' config)")
    common.add_argument("--train_images", type=positive(1), default=2000,
                        help="fixed training subset for the loss and accuracy (default 2000)")
    common.add_argument("--bn_images", type=positive(1),
                        help="training images for the BatchNorm statistics (default: the same subset)")
    common.add_argument("--threads", type=positive(0), default=1,
                        help="CPU threads for torch (default 1: the small batches run several times faster on "
                             "one thread of a shared machine; 0: torch's default)")
    parser = ArgumentParser(prog="landscape.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    interp = commands.add_parser("interpolate", parents=[common], help="loss along straight lines between snapshots")
    interp.add_argument("--pairs", action="append",
                        help="troughs (consecutive LR troughs), peaks, trough-peak (each trough and the next peak), "
                             "consecutive (neighbouring snapshots), epochs:E1,E2,... (consecutive among these); "
                             "repeatable (default troughs, or none with --other)")
    interp.add_argument("--other", type=Path, help="a second run: also interpolate between the two final models")
    interp.add_argument("--other_trial", type=positive(0), help="trial of --other (default: --trial)")
    interp.add_argument("--points", type=positive(2), default=21, help="values of alpha in [0, 1] (default 21)")
    interp.add_argument("--test_images", type=positive(0),
                        help="first N test samples for the test accuracy (default all; 0: none)")
    commands.add_parser("distances", parents=[common], help="weight distances and code flips between snapshots")
    plane = commands.add_parser("plane", parents=[common], help="loss on a 2-D plane around a snapshot")
    plane.add_argument("--directions", choices=("pca", "random"), default="pca",
                       help="pca of the trajectory (default) or filter-normalised random directions")
    plane.add_argument("--grid", type=positive(2), default=11, help="points per axis (default 11)")
    plane.add_argument("--center", default="final", help="the centre snapshot: final (default) or an epoch")
    plane.add_argument("--extent", type=float,
                       help="grid over +-EXTENT along both directions (default: the trajectory's range "
                            "plus 25%% for pca, 1 for random)")
    plane.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    return parser.parse_args(argv)


def output_folder(args):
    """--out, or RUN_DIR/landscape, created."""
    out = args.out or args.run_dir / "landscape"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out} ({e.strerror or e})") from None
    return out


def make_probe(args, cfg, test_images=0):
    """The Probe of the run's config on the chosen device."""
    from qsnn.runs.config import check_device
    from qsnn.runs.experiment import resolve_device
    from qsnn.analysis.landscape import Probe

    problem = check_device(args.device)
    if problem:
        raise UserError(problem)
    return Probe(cfg, resolve_device(args.device), args.train_images, args.bn_images, test_images, args.data_dir)


def interpolate(args):
    """Curves, summary CSV and figure for the chosen pairs; prints one line per pair."""
    from qsnn.analysis import landscape as ls
    from qsnn.analysis.landscape_plots import plot_interpolation, save_figure
    from qsnn.progress import progress

    snaps = ls.read_run(args.run_dir, args.trial)
    selectors = args.pairs or ([] if args.other else ["troughs"])
    pairs = [pair for selector in selectors for pair in ls.select_pairs(snaps, selector)]
    if args.other:
        other = ls.read_run(args.other, args.trial if args.other_trial is None else args.other_trial)
        if other[-1].config["dataset"] != snaps[-1].config["dataset"]:
            raise UserError(f"{args.other} trained on {other[-1].config['dataset']}, {args.run_dir} on "
                            f"{snaps[-1].config['dataset']}; interpolate between runs of one dataset")
        pairs.append(ls.final_pair(snaps, other))
    out = output_folder(args)
    probe = make_probe(args, snaps[-1].config, args.test_images)
    alphas = [i / (args.points - 1) for i in range(args.points)]
    bar = progress(total=len(pairs) * len(alphas), desc="interpolate")
    start, curves, summaries = time.perf_counter(), [], []
    for pair in pairs:
        bar.set_postfix(pair=pair.name, refresh=False)
        curve = ls.interpolation_curve(probe, pair, alphas, bar)
        curves.append(curve)
        summaries.append(ls.pair_summary(probe, pair, curve))
        ls.write_csv(out / f"interp_{file_stem(pair.name)}.csv", curve)
    bar.close()
    seconds = time.perf_counter() - start
    ls.write_csv(out / "interpolation_summary.csv", summaries)
    paths = save_figure(plot_interpolation(curves, summaries), out, "interpolation")
    for s in summaries:
        print(f"{s['pair']} ({s['kind']}): barrier {s['barrier']:.5f} at alpha {s['barrier_alpha']:.2f}, "
              f"losses {s['loss_a']:.5f} / {s['loss_b']:.5f}, distance {s['distance']:.4f}, "
              f"code flips {100 * s['code_flips']:.2f}%")
    print(f"{len(pairs) * len(alphas)} points in {seconds:.1f} s ({seconds / (len(pairs) * len(alphas)):.2f} s "
          f"per point); wrote {out / 'interpolation_summary.csv'} and {paths[0].name}/.pdf")


def file_stem(name):
    """A pair name as a safe file-name part."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def distances(args):
    """distances.csv and its figure."""
    from qsnn.analysis import landscape as ls
    from qsnn.analysis.landscape_plots import plot_distances, save_figure
    from qsnn.core.models import build_model

    snaps = ls.read_run(args.run_dir, args.trial)
    if len(snaps) < 2:
        raise UserError(f"{snaps[0].run} has one snapshot only; distances need two or more")
    out = output_folder(args)
    quantized = snaps[-1].config.get("num_bits") is not None
    rows = ls.distance_rows(build_model(snaps[-1].config), snaps, quantized)
    ls.write_csv(out / "distances.csv", rows)
    paths = save_figure(plot_distances(rows, snaps, quantized), out, "distances")
    final = [r for r in rows if r["relation"] == "to_final"]
    print(f"{len(snaps)} snapshots; start to final: distance {final[0]['distance']:.4f}"
          + (f", code flips {100 * final[0]['code_flips']:.2f}%" if quantized else ""))
    print(f"wrote {out / 'distances.csv'} and {paths[0].name}/.pdf")


def plane(args):
    """plane_<directions>.csv, its trajectory CSV and its contour figure."""
    from qsnn.analysis import landscape as ls
    from qsnn.analysis.landscape_plane import plane as compute_plane
    from qsnn.analysis.landscape_plots import plot_plane, save_figure
    from qsnn.progress import progress

    snaps = ls.read_run(args.run_dir, args.trial)
    try:
        centre = snaps[-1] if args.center == "final" else ls.find_epoch(snaps, float(args.center))
    except ValueError:
        raise UserError(f"--center {args.center!r} is neither final nor an epoch number") from None
    out = output_folder(args)
    probe = make_probe(args, snaps[-1].config)
    bar = progress(total=args.grid ** 2, desc=f"plane ({args.directions})")
    start = time.perf_counter()
    result = compute_plane(probe, snaps, centre, args.directions, args.grid, args.seed, args.extent, bar)
    bar.close()
    seconds = time.perf_counter() - start
    stem = f"plane_{args.directions}"
    (xs, ys), grid = result["axes"], result["grid"]
    ls.write_csv(out / f"{stem}.csv", [{"x": float(x), "y": float(y), "train_loss": float(grid["train_loss"][i, j]),
                                        "train_acc": float(grid["train_acc"][i, j])}
                                       for i, y in enumerate(ys) for j, x in enumerate(xs)])
    ls.write_csv(out / f"{stem}_trajectory.csv",
                 [{"epoch": s.epoch, "iteration": s.iteration, "kind": s.kind, "x": float(c[0]), "y": float(c[1]),
                   "outside_plane": o} for s, c, o in zip(snaps, result["coords"], result["outside"])])
    paths = save_figure(plot_plane(result, snaps), out, stem)
    if result["explained"]:
        print(f"PC1 and PC2 explain {100 * result['explained'][0]:.1f}% and {100 * result['explained'][1]:.1f}% "
              "of the trajectory's squared displacement from the centre")
    print(f"{args.grid ** 2} grid points in {seconds:.1f} s; wrote {out / (stem + '.csv')}, "
          f"{stem}_trajectory.csv and {paths[0].name}/.pdf")


def set_threads(threads):
    """Limit torch's CPU threads (0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def main(argv=None):
    return report_user_errors(run_command, sys.argv[1:] if argv is None else argv)


def run_command(argv):
    """Parse the command line, then run the chosen analysis."""
    args = parse_args(argv)
    set_threads(args.threads)
    {"interpolate": interpolate, "distances": distances, "plane": plane}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

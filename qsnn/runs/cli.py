"""The entry point of every run.py: parse overrides, validate, run; user errors end in one line."""
import argparse
import sys
from pathlib import Path

from qsnn.runs.config import format_help, parse_args, read_key_comments, run_py_defaults, validate
from qsnn.errors import UserError, cut


def main(config, demo=None, argv=None):
    """Run the experiment that `config` (a run.py's dict) describes, with command-line overrides."""
    source = Path(sys._getframe(1).f_code.co_filename)  # the run.py whose comments document the keys
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, flags = parse_args(config, argv, demo)
        if flags["help"]:
            print(format_help(run_py_defaults(config, demo), read_key_comments(source), _display_path(source)))
            return 0
        validate(cfg, datasets=tuple(dict.fromkeys([config["dataset"], *([demo["dataset"]] if demo else [])])))
        from qsnn.runs.experiment import run_experiment  # heavy imports only once the config is known to be good

        run_experiment(cfg, resume=flags["resume"], overwrite=flags["overwrite"])
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("error: interrupted; completed epochs are saved, continue with --resume", file=sys.stderr)
        sys.exit(130)
    return 0


def _display_path(source):
    """run.py's path relative to the working directory when possible, for the usage line."""
    try:
        return str(source.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(source)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the root scripts: a usage mistake raises UserError (one line, exit code 2), not usage text."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, with unknown arguments cut in the message (they can be any length)."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {cut(' '.join(extras))}")
        return namespace


def report_user_errors(action, *args):
    """Run action(*args) for a root script's main: its exit code (0 unless it returns one), or a UserError
    printed as `error:` lines and its code."""
    try:
        code = action(*args)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    return code if isinstance(code, int) else 0

"""Progress bars that stay readable in a log file: tqdm on a terminal, plain timed lines elsewhere.

tqdm redraws its bar with carriage returns, which a file or a pipe keeps as one endless line. When
stderr is not a terminal, `progress` writes a whole line instead, at most every LOG_INTERVAL_S
seconds and once at the end.
"""
import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # seconds between progress lines in a log file


class _LineWriter:
    """A file-like stderr for tqdm that turns each redraw into one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def is_terminal(stream=None):
    """True if the stream (stderr by default) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, desc="", total=None, disable=False, leave=True, **kwargs):
    """A tqdm bar over iterable; on a non-terminal stderr, one line per LOG_INTERVAL_S seconds."""
    if is_terminal():
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=True, file=_LineWriter(sys.stderr),
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ncols=100, ascii=True, **kwargs)


def write(line):
    """Print a line without breaking a bar that is being drawn."""
    tqdm.write(line, file=sys.stdout)

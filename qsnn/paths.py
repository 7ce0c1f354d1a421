"""Where relative config paths start: the checkout's root, or the current folder for an installed qsnn."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # qsnn's parent: the checkout, or site-packages when installed


def from_checkout():
    """True if qsnn runs from a checkout (its parent holds pyproject.toml), False if installed (site-packages)."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def path_base():
    """The folder relative config paths start from: the repository root in a checkout, else the current folder."""
    return REPO_ROOT if from_checkout() else Path.cwd()


def resolve_path(path):
    """A config path: absolute as given, relative ones against path_base()."""
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() else path_base() / path

"""Files this program writes and reads back: written atomically (temp file beside, then os.replace), read
as untrusted (never through a link it did not make, a damaged file is one UserError line)."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from qsnn.errors import UserError


@contextmanager
def atomic_path(target):
    """A temporary path beside target that replaces it if the block succeeds (and is removed if not).

    The temporary name keeps target's suffix (numpy appends .npy otherwise) and starts with a dot.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file what open() would
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask():
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside path, then move it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text(path, text):
    """Atomically replace a text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json_object(path):
    """The JSON object in path, None if the file is absent; a damaged file is one UserError line."""
    path = Path(path)
    refuse_link(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}); repair or delete it, or start the "
                        "run again with --overwrite") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; repair or delete it, or start the run again "
                        "with --overwrite")
    return data


def refuse_link(path):
    """A file this program reads back or rewrites must not be a link: it could lead anywhere."""
    if Path(path).is_symlink():
        raise UserError(f"{path} is a link, which this program never makes; replace it with the file itself "
                        "or remove it")

"""One way to replace a file so that a reader, a crash or a power cut never sees half of it.

Write a temporary file in the same folder (a rename is only atomic within one filesystem), flush
and ``fsync`` it, ``os.replace`` it over the target, then ``fsync`` the folder so the rename itself
survives a power cut. On any error the temporary file is removed and the old file is untouched.
Every summary, results table, card, checkpoint and log that is rewritten whole goes through here.

Permissions follow the process umask, like any file ``open(..., "w")`` creates: the temporary
file is created with mode 0666 and the kernel applies the umask (``tempfile.mkstemp`` would make
it 0600, so a lab group could not read summaries under the service's ``UMask=0027``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable; not every platform can open a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` atomically.

    For writers that want a file name (``np.save``, ``torch.save``, ``safetensors``). ``suffix``
    keeps an extension some writers insist on; ``mode`` sets the permissions (default: 0666 less the
    process umask, as for any new file).
    """
    path = Path(path)
    tmp = _create_temporary(path, suffix)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_CREATE_ATTEMPTS = 100  # name clashes among 48 random bits: never in practice; bounded all the same
NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask off


def _create_temporary(path: Path, suffix: str) -> Path:
    """An empty, new file beside ``path``, created exclusively (like mkstemp) but with the umask's mode."""
    for _ in range(_CREATE_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO], None], *, encoding: str = "utf-8",
                 mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` (text, bytes, or a function writing to the open file) atomically."""
    path = Path(path)
    binary = isinstance(data, bytes)
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else encoding,
                  newline=None if binary else "") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
    return path

"""One way to replace a file so that a reader, a crash or a power cut never sees half of it.

Write a temporary file in the same folder (a rename is only atomic within one filesystem), flush
and ``fsync`` it, ``os.replace`` it over the target, then ``fsync`` the folder so the rename itself
survives a power cut. On any error the temporary file is removed and the old file is untouched.
Every summary, results table, card, checkpoint and log that is rewritten whole goes through here.
"""

from __future__ import annotations

import os
import tempfile
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
    keeps an extension some writers insist on; ``mode`` sets the permissions (``mkstemp`` makes 0600).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
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

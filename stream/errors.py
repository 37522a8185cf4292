"""User-facing errors and the wrapper every console script runs in.

A lab user who mistypes a path or hands us a corrupt file should read one line that names the
file and the fix, never a Python traceback. Library code raises ``UserError`` for such cases;
``cli_main`` turns it into ``<prog>: error: <message>`` on stderr and a non-zero exit code.
Bugs (any other exception) still show their traceback: hiding those helps nobody.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["UserError", "OutputWriteError", "cli_main", "output_error", "EXIT_USER_ERROR", "EXIT_OUTPUT_FAILED",
           "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2  # same code argparse uses for a bad command line
# Results could not be written (disk full, quota, I/O error). Distinct so that systemd's
# RestartPreventExitStatus= can stop restarting: a restart would only fail again into a new folder.
EXIT_OUTPUT_FAILED = 3
EXIT_INTERRUPTED = 130  # conventional 128 + SIGINT
# The storage itself failed (not a setting the user got wrong): exit EXIT_OUTPUT_FAILED, not 2.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, missing optional package). One line."""

    exit_code = EXIT_USER_ERROR


class OutputWriteError(UserError):
    """An output file could not be written (disk full, quota, I/O error): one line naming the file and
    the OS error, exit ``EXIT_OUTPUT_FAILED``."""

    exit_code = EXIT_OUTPUT_FAILED

    def __init__(self, path: str | Path, exc: OSError, note: str = "") -> None:
        name = errno.errorcode.get(exc.errno or 0, "")
        reason = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
        super().__init__(f"cannot write {path}: {reason}{note}")
        self.path = Path(path)
        self.os_error = exc


def output_error(path: str | Path, exc: OSError, fix: str = "choose a writable output folder") -> UserError:
    """The one-line error for an output file that cannot be written: a storage failure
    (``OutputWriteError``) or a setting to fix (``UserError`` naming ``fix``)."""
    if exc.errno in _STORAGE_ERRNOS:
        return OutputWriteError(path, exc)
    return UserError(f"cannot write {path}: {exc.strerror or exc}; {fix}")


def cli_main(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a console-script ``main`` so user errors print one line and exit non-zero."""

    def decorate(fn: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> int:
            try:
                code = fn(*args, **kwargs)
            except UserError as exc:
                logging.getLogger(prog).debug("user error", exc_info=True)
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return exc.exit_code
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0 if code is None else int(code)

        return wrapper

    return decorate

"""User-facing errors and the wrapper every console script runs in.

A lab user who mistypes a path or hands us a corrupt file should read one line that names the
file and the fix, never a Python traceback. Library code raises ``UserError`` for such cases;
``cli_main`` turns it into ``<prog>: error: <message>`` on stderr and a non-zero exit code.
Bugs (any other exception) still show their traceback: hiding those helps nobody.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

__all__ = ["UserError", "cli_main", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2  # same code argparse uses for a bad command line
EXIT_INTERRUPTED = 130  # conventional 128 + SIGINT


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, missing optional package). One line."""


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
                return EXIT_USER_ERROR
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0 if code is None else int(code)

        return wrapper

    return decorate

"""``--version`` for every command: the package version a result was produced with."""

from __future__ import annotations

import argparse

from stream import __version__

__all__ = ["add_version_argument", "__version__"]


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (swim-stream) {__version__}")

"""``stream-bench``: speed measurements reported as ratios against a reference measured in the same run.

Subcommands live in their own modules (``stream.bench.flow``, ``.model``, ``.e2e``); each
exposes ``add_arguments(parser)`` and ``run(args) -> int``. Speed claims in this project come
from here, never from timed unit tests.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from stream.errors import cli_main
from stream.version import add_version_argument

__all__ = ["main"]

SUBCOMMANDS = {
    "flow": "TV-L1 optical flow: ours vs OpenCV DualTVL1",
    "model": "fused I3D on every available inference backend vs eager PyTorch",
    "e2e": "whole pipeline: frames/s and capture-to-decision latency",
    "web": "the web page's cost to the pipeline: frame time with a browser watching vs without the page",
}


@cli_main("stream-bench")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-bench", description=__doc__.splitlines()[0])
    add_version_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="what", required=True)
    modules = {}
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"stream.bench.{name}")
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return modules[args.what].run(args)

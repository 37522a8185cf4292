"""Every command answers --version with the package version (issue 13: provenance)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from stream import __version__

SCRIPTS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_prints_its_version(script: str, capsys) -> None:
    module, func = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{script} (swim-stream) {__version__}"

"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_onnx_cache(tmp_path_factory):
    """ONNX graphs exported on the fly go to a throw-away folder, not the user's ~/.cache.

    Set in os.environ so that stream-run subprocesses started by tests inherit it.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("SWIM_STREAM_CACHE", str(tmp_path_factory.mktemp("swim-stream-cache")))
    yield
    mp.undo()

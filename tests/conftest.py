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


TINY_CLASSES = ["swim", "struggle", "float"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained 3-class fused I3D at 32 px with the cheapest TV-L1 settings: the whole
    pipeline runs on it in seconds. Shared by every test that drives ``stream-run``; a test that
    damages a model copies it first."""
    import dataclasses

    import torch

    from stream.flow import FlowConfig
    from stream.model import FusedI3D
    from stream.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    flow = FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)
    card = ModelCard(
        name="tiny-test", view="side", classes=list(TINY_CLASSES), immobile_classes=["float"],
        input_size_px=32, fps=15.0, flow=dataclasses.asdict(flow), flow_weight=0.5, init="random",
        training={"note": "untrained test fixture"},
    )  # fmt: skip
    return save_model(FusedI3D(num_classes=3), card, tmp_path_factory.mktemp("models") / "tiny", half=True)

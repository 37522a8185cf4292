"""Shared test set-up."""

from __future__ import annotations

from pathlib import Path

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


# The project's real top-view recording, in the folder beside a developer's checkout. A user's
# clone has none: tests that need it take the ``real_video`` fixture, which skips without it, and
# are marked ``real_video`` (``.ci/run`` runs them once in the checkout after the suite ran in a
# bare clone).
REAL_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "openfield_m3v1.mp4"


@pytest.fixture
def real_video() -> Path:
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real video not present ({REAL_VIDEO})")
    return REAL_VIDEO


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "real_video" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_video)


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


def write_moving_square_video(path, frames: int, size_px: int = 64, fps: float = 15.0):
    """A small mp4v video of a bright square moving right: something for the flow to see."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size_px, size_px))
    for i in range(frames):
        image = np.full((size_px, size_px, 3), 40, np.uint8)
        x = (3 * i) % (size_px - 14)
        image[20:30, x : x + 10] = 220
        writer.write(image)
    writer.release()
    return path


@pytest.fixture
def moving_square_video():
    """``moving_square_video(path, frames)`` writes the video and returns its path."""
    return write_moving_square_video


@pytest.fixture
def one_torch_thread():
    """Training tests on a shared 2-core box: a second intra-op thread per process only adds
    contention (measured: the same tests took ~5x longer with torch's default thread count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

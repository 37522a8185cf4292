"""ClipSource: the live clips of a mouse-crop model are the training clips (issue 21, "the input crop").

Flow is the real TV-L1 with a cheap setting; the video is the simulator's top view, where the mouse
moves around its cylinder, so the windows move too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.annotations import Annotation
from export.dataset import ClipDataset, VideoSource, flow_input, load_arenas
from export.synth import SynthConfig, render_video
from stream.arenas import Arena
from stream.capture import Capture, CaptureConfig, SourceSpec
from stream.clip_source import ClipSource
from stream.decisions import ArenaDecisions, DecisionConfig
from stream.flow import FLOW_CLIP_PX, FLOW_UINT8_STEP_PX, TVL1, FlowConfig
from stream.mouse_crop import crop_window
from stream.pipeline import Pipeline, PipelineConfig
from stream.preprocess import rgb_clip
from stream.ring import ClipRing

SIZE = 32  # model input; the mouse crop's ring holds the arenas at 64 px
FPS = 15.0
CLASSES = ["mobile", "immobile"]
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, outer_iterations=1, inner_iterations=5, median_filtering=1,
                        fixed_iterations=True)  # fmt: skip
# the training cache stores flow as one byte per value (stream.flow.flow_to_uint8): within half a
# code of the live float flow, in the model's encoded [-1, 1] units (and a float32 rounding on top)
FLOW_ATOL = FLOW_UINT8_STEP_PX / 2 / FLOW_CLIP_PX + 1e-6


@pytest.fixture(scope="module")
def top_video(tmp_path_factory) -> tuple[Path, Path, int]:
    r = render_video(SynthConfig(view="top", duration_s=4.0, fps=FPS, arenas=2, arena_size_px=64, seed=3),
                     tmp_path_factory.mktemp("top"))  # fmt: skip
    return r.video_path, r.arenas_json, r.num_frames


class ClipRecorder:
    """Clip-wise engine stand-in: keeps every clip it is given, in call order (stride 1: centre 0, 1, ...)."""

    name = "recorder"
    stepwise = False
    device = "cpu"
    classes = CLASSES
    input_size_px = SIZE

    def __init__(self) -> None:
        self.clips: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict(self, rgb: torch.Tensor, flow: torch.Tensor) -> np.ndarray:
        self.clips.append((rgb.clone(), flow.clone()))
        return np.full((rgb.shape[0], len(CLASSES)), 1.0 / len(CLASSES))


def _live_clips(video: Path, arenas: list[Arena]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What stream-run feeds a clip-wise engine for a card with crop "mouse": capture -> Pipeline."""
    engine = ClipRecorder()
    decisions = {a.id: ArenaDecisions(a.id, CLASSES, DecisionConfig(fps=FPS, immobile_classes=("immobile",))) for a in arenas}
    config = PipelineConfig(fps=FPS, size_px=SIZE, flow_warm_start=False, crop="mouse")  # training computes each pair from scratch
    pipe = Pipeline(engine, TVL1(CHEAP_FLOW), arenas, decisions, config)  # type: ignore[arg-type]
    capture = Capture(SourceSpec("file", str(video)), CaptureConfig(fps=FPS, live=False))
    capture.open()
    capture.start()
    try:
        pipe.run(capture)
    finally:
        capture.close()
    return engine.clips


def test_the_live_mouse_crop_clips_are_the_training_clips(top_video, tmp_path) -> None:
    """Train/serve parity: the Pipeline's clip for centre t equals ClipDataset(crop="mouse").clip(t), RGB
    exactly, flow within the uint8 cache's quantisation; the windows move with the mouse."""
    video, arenas_json, n_source = top_video
    rois = [roi for _, roi in load_arenas(arenas_json)]
    labels = np.zeros(n_source, np.int64)
    sources = [VideoSource(video, Annotation(CLASSES, labels, Path("l.csv"), f"arena{i}", FPS), roi) for i, roi in enumerate(rois)]
    ds = ClipDataset(sources, CLASSES, size_px=SIZE, cache_dir=tmp_path / "cache", flow_config=CHEAP_FLOW, progress=False,
                     fps=FPS, crop="mouse")  # fmt: skip
    n = ds.num_frames(0)
    live = _live_clips(video, [Arena(f"A{i + 1}", roi) for i, roi in enumerate(rois)])
    assert len(live) == n  # one model call per centre frame
    centre_window = crop_window(((2 * SIZE - 1) / 2, (2 * SIZE - 1) / 2), 2 * SIZE)
    moved = 0
    for c in (0, 5, 20, 33, 47, n - 3, n - 1):
        live_rgb, live_flow = live[c]
        assert live_rgb.shape == (2, 3, 16, SIZE, SIZE) and live_flow.shape == (2, 2, 16, SIZE, SIZE)
        for s in range(2):
            frames, flow_px = ds.clip(s, c)
            assert torch.equal(live_rgb[s], torch.from_numpy(rgb_clip(frames))), (c, s)
            np.testing.assert_allclose(live_flow[s].numpy(), flow_input(flow_px), atol=FLOW_ATOL, rtol=0,
                                       err_msg=f"centre {c} arena {s}")  # fmt: skip
            moved += ds.mouse_window(s, c) != centre_window
    assert moved >= 4  # the locator found the mouse: most windows are not the arena's centre
    assert any(np.abs(flow_input(ds.clip(s, 33)[1])).max() > 0.01 for s in range(2))  # there is motion to compare


def test_roi_clips_are_the_ring_clips_bit_for_bit() -> None:
    """crop "roi" is the path as it was: the ring at the input size, its clips untouched."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (18, 2, SIZE, SIZE, 3), dtype=np.uint8)
    source = ClipSource(2, SIZE, TVL1(CHEAP_FLOW))
    ring = ClipRing(2, SIZE, TVL1(CHEAP_FLOW))
    for i, crops in enumerate(frames):
        assert source.model_view(crops) is crops
        source.push(crops, i)
        ring.push(crops, i)
    for got, want in zip(source.clip(10), ring.clip(10)):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(source.frame(17), ring.frame(17)))


def test_mouse_clips_are_windows_of_the_double_size_ring_at_the_centre_frame() -> None:
    """Each arena's clip is its own window, the one at the centre frame's position, for all 16 frames;
    the locators carry on across a ring restart; a step-wise engine is not fed mouse windows."""
    frames = np.full((40, 2, 2 * SIZE, 2 * SIZE, 3), 60, np.uint8)
    for i in range(40):  # arena 0: a blob swimming right along the top; arena 1: put in at frame 16, still, bottom right
        frames[i, 0, 8:16, 4 + i : 12 + i] = 230
        frames[i, 1, 46:54, 46:54] = 230 if i >= 16 else 60
    source = ClipSource(2, SIZE, TVL1(CHEAP_FLOW), crop="mouse", fps=FPS)
    assert source.ring_px == 2 * SIZE
    for i, crops in enumerate(frames):
        source.push(crops, i)
    rgb, flow = source.clip(32)
    assert rgb.shape == (2, 3, 16, SIZE, SIZE) and flow.shape == (2, 2, 16, SIZE, SIZE)
    full_rgb, full_flow = source.ring.clip(32)
    windows = source.windows(32)
    assert windows[0] != windows[1] and windows[0].y == 0 and windows[1].x == SIZE  # each follows its own mouse
    for a, w in enumerate(windows):
        assert torch.equal(rgb[a], w.cut(full_rgb[a])) and torch.equal(flow[a], w.cut(full_flow[a]))
    assert source.model_view(frames[0]).shape == (2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="step-wise engine"):
        source.frame(39)
    source.reset()  # a gap: the ring restarts, the locators keep what they learnt
    source.push(frames[39], 50)
    assert source.windows(50)[1] == windows[1]


def test_the_mouse_windows_reach_the_outputs_in_frame_pixels_and_the_preview_draws_them(tmp_path) -> None:
    """Each FrameEvent carries the arenas' windows (the clip centred on that frame is cut from them),
    mapped from the 2x ring to the full frame; the preview draws them; the ROI crop sends none."""
    from stream.capture import EndOfStream, Frame
    from stream.outputs.base import Output
    from stream.outputs.preview import WINDOW_BGR, PreviewWriter
    from stream.preprocess import Roi

    arenas = [Arena("A1", Roi(0, 0, 64, 64)), Arena("A2", Roi(64, 0, 64, 64))]

    def frame(i: int) -> Frame:
        img = np.full((64, 128, 3), 60, np.uint8)
        if i >= 16:  # A1: a mouse put in at frame 16, swimming right along the top; A2 stays empty
            img[6:14, i - 6 : i + 2] = 230
        return Frame(i, i / FPS, i / FPS, 0.0, img)

    class Windows(Output):
        def __init__(self) -> None:
            self.by_frame: dict[int, object] = {}

        def on_frame(self, event) -> None:
            self.by_frame[event.index] = event.windows

    class Grab:
        def __init__(self) -> None:
            self.images: list[np.ndarray] = []

        def write(self, image: np.ndarray) -> None:
            self.images.append(image)

        def release(self) -> None:
            pass

    def run(crop: str) -> tuple[Windows, PreviewWriter, Grab]:
        windows, grab = Windows(), Grab()
        preview = PreviewWriter(tmp_path / f"{crop}.mp4", FPS, (128, 64), arenas)
        preview._writer.release()
        preview._writer = grab  # the drawn images themselves, before any video compression
        decisions = {a.id: ArenaDecisions(a.id, CLASSES, DecisionConfig(fps=FPS, immobile_classes=("immobile",))) for a in arenas}
        pipe = Pipeline(ClipRecorder(), TVL1(CHEAP_FLOW), arenas, decisions,  # type: ignore[arg-type]
                        PipelineConfig(fps=FPS, size_px=SIZE, crop=crop), outputs=[windows, preview])  # fmt: skip
        pipe.run([frame(i) for i in range(50)] + [EndOfStream("end of file")])
        return windows, preview, grab

    windows, preview, grab = run("mouse")
    centred = (16, 16, 32, 32)  # a 32 px window of a 64 px arena, at its centre (the 64 px ring: 1 ring px = 1 frame px)
    assert windows.by_frame[5] == (centred, (64 + 16, 16, 32, 32))
    x, y, w, h = windows.by_frame[40][0]  # located from the third background sample (frame 30) on
    assert (x, y, w, h) == (x, 0, 32, 32) and x <= 40 - 2 < x + w  # on the mouse (its centre x is 38)
    assert windows.by_frame[40][1] == (64 + 16, 16, 32, 32)
    k = preview.scale
    bottom, middle = round(16 * k) + round(32 * k) - 1, round(80 * k) + round(16 * k)
    assert len(grab.images) == 50 and tuple(grab.images[40][bottom, middle]) == WINDOW_BGR  # A2's window, bottom edge
    roi_windows, _, roi_grab = run("roi")
    assert set(roi_windows.by_frame.values()) == {None}
    assert tuple(roi_grab.images[30][bottom, middle]) != WINDOW_BGR

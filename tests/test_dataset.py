"""ClipDataset (clips, flow cache, augmentation, balancing) and the leakage-free folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import export.dataset as dataset_mod
from export.annotations import SIDE_CLASSES, Annotation, AnnotationError
from export.dataset import ClipDataset, VideoSource, _augment, load_arenas, sources_from_files
from export.folds import contiguous_folds, video_folds
from export.synth import SynthConfig, render_video
from stream.errors import UserError
from stream.flow import TVL1, FlowConfig, encode_flow, flow_from_uint8, flow_to_uint8
from stream.preprocess import Roi, crop_resize, rgb_clip, to_grey

SIZE = 24
# real TV-L1, cut down so the tests stay fast on 2 shared cores
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, outer_iterations=1, inner_iterations=5, median_filtering=1,
                        fixed_iterations=True)  # fmt: skip
LABELS = np.array([0] * 10 + [-1] * 3 + [1] * 8 + [2] * 9)  # 30 frames, with an unlabelled gap


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video")
    r = render_video(SynthConfig(view="side", duration_s=2.0, arenas=2, arena_size_px=48, seed=2), out)
    return r.video_path


def _sources(video: Path, labels=LABELS) -> list[VideoSource]:
    rois = [roi for _, roi in load_arenas(video.with_name(video.stem + ".arenas.json"))]
    return [VideoSource(video, Annotation(SIDE_CLASSES, labels, Path("l.csv"), f"arena{i}", 15.0), roi)
            for i, roi in enumerate(rois)]  # fmt: skip


def _dataset(video: Path, cache: Path, **kw) -> ClipDataset:
    base = dict(size_px=SIZE, cache_dir=cache, flow_config=CHEAP_FLOW, progress=False)
    base.update(kw)
    return ClipDataset(_sources(video), SIDE_CLASSES, **base)


def test_items_shapes_and_ranges(video, tmp_path):
    ds = _dataset(video, tmp_path)
    assert len(ds) == 2 * 27  # unlabelled frames are never items
    assert ds.items[:, 0].tolist() == [0] * 27 + [1] * 27
    assert not np.isin(ds.items[:27, 1], [10, 11, 12]).any()
    assert ds.class_counts().tolist() == [20, 16, 18]
    rgb, flow, label = ds[0]
    assert rgb.shape == (3, 16, SIZE, SIZE) and rgb.dtype == torch.float32
    assert flow.shape == (2, 16, SIZE, SIZE) and flow.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == 0
    assert rgb.min() >= -1 and rgb.max() <= 1 and flow.abs().max() <= 1
    assert len(_dataset(video, tmp_path, frame_step=4)) == 2 * int(np.sum((LABELS >= 0) & (np.arange(30) % 4 == 0)))


def test_clip_matches_live_conventions(video, tmp_path):
    """Crop, resize, clip indices and flow direction are those of stream.preprocess / stream.flow."""
    import cv2

    ds = _dataset(video, tmp_path)
    cap = cv2.VideoCapture(str(video))
    full = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        full.append(f)
    roi = ds.sources[1].roi
    crops = np.stack([crop_resize(f, roi, SIZE) for f in full])
    item = int(np.flatnonzero((ds.items[:, 0] == 1) & (ds.items[:, 1] == 20))[0])
    rgb, flow, _ = ds[item]
    assert torch.equal(rgb, torch.from_numpy(rgb_clip(crops[12:28])))
    direct = TVL1(CHEAP_FLOW)(to_grey(crops[19]), to_grey(crops[20]))[0]  # previous -> current
    expected = encode_flow(flow_from_uint8(flow_to_uint8(direct.numpy())))
    assert np.allclose(flow[:, 8].numpy(), expected, atol=1e-6)
    # first frame of the video and edge-padding repeats have zero flow
    frames, px = ds.clip(1, 0)
    assert np.array_equal(frames[0], frames[8]) and np.all(px[:9] == 0) and np.any(px[9:] != 0)


def test_flow_cache_reused_and_rebuilt_on_change(video, tmp_path, monkeypatch):
    calls = []

    class CountingTVL1(TVL1):
        def __call__(self, prev, nxt, init_flow=None):
            calls.append(len(prev))
            return super().__call__(prev, nxt, init_flow)

    monkeypatch.setattr(dataset_mod, "TVL1", CountingTVL1)
    _dataset(video, tmp_path, flow_batch_pairs=16)
    assert sum(calls) == 2 * 29 and max(calls) <= 16  # batched, every pair once per arena
    calls.clear()
    again = _dataset(video, tmp_path)
    assert calls == []
    before = {p.name for p in tmp_path.iterdir()}
    _dataset(video, tmp_path, flow_config=FlowConfig(**{**CHEAP_FLOW.__dict__, "inner_iterations": 6}))
    assert sum(calls) == 2 * 29  # new flow settings: new cache
    assert again.cache_files[0][1].exists()
    # same file name, different content: new cache keyed by the content hash
    copy = tmp_path / "v" / video.name
    copy.parent.mkdir()
    render_video(SynthConfig(view="side", duration_s=2.0, arenas=2, arena_size_px=48, seed=9), copy.parent)
    calls.clear()
    ClipDataset(_sources(copy), SIDE_CLASSES, size_px=SIZE, cache_dir=tmp_path, flow_config=CHEAP_FLOW, progress=False)
    assert sum(calls) == 2 * 29
    assert len({p.name for p in tmp_path.iterdir()} - before) > 2


class _FixedRng:
    """Stands in for numpy's Generator to force one augmentation."""

    def __init__(self, flip: bool, margin: int = 0):
        self.flip, self.margin = flip, margin

    def random(self):
        return 0.0 if self.flip else 1.0

    def integers(self, lo, hi=None):
        return self.margin if hi is not None and hi > 1 and self.margin else 0

    def uniform(self, lo, hi):
        return 1.0 if lo > 0 else 0.0


def test_flip_mirrors_frames_and_negates_flow_x():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    flow = rng.normal(0, 2, (16, 2, 8, 8)).astype(np.float32)
    rgb, out = _augment(frames, flow, _FixedRng(flip=True))
    assert np.allclose(rgb, rgb_clip(frames[:, :, ::-1].copy()))
    assert np.allclose(out[:, 0], -flow[:, 0, :, ::-1]) and np.allclose(out[:, 1], flow[:, 1, :, ::-1])
    rgb, out = _augment(frames, flow, _FixedRng(flip=False))
    assert np.allclose(out, flow) and np.allclose(rgb, rgb_clip(frames))


def test_crop_scales_flow_with_zoom():
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    flow = np.ones((16, 2, 32, 32), np.float32)
    _, out = _augment(frames, flow, _FixedRng(flip=False, margin=4))
    assert out.shape == flow.shape and np.allclose(out, 32 / 28, atol=1e-5)


def test_augmented_view_shares_items_and_changes_pixels(video, tmp_path):
    ds = _dataset(video, tmp_path)
    aug = ds.with_augment(True)
    assert aug.augment and not ds.augment and aug.items is ds.items
    torch.manual_seed(0)
    changed = [not torch.equal(aug[i][0], ds[i][0]) for i in range(0, len(ds), 9)]
    assert any(changed)


def test_balancing(video, tmp_path):
    ds = _dataset(video, tmp_path)
    w = ds.sample_weights()
    per_class = [w[ds.labels == k].sum() for k in range(3)]
    assert np.allclose(per_class, per_class[0]) and w.mean() == pytest.approx(1.0)
    drawn = np.bincount(ds.labels[list(ds.make_sampler(num_samples=3000, seed=1))], minlength=3)
    assert drawn.min() > 800


def test_labels_past_end_of_video_and_bad_arenas(video, tmp_path):
    long = np.concatenate([LABELS, [0, 0]])
    with pytest.raises(AnnotationError, match="frame 30 is labelled"):
        ClipDataset(_sources(video, long), SIDE_CLASSES, size_px=SIZE, cache_dir=tmp_path, flow_config=CHEAP_FLOW,
                    progress=False)  # fmt: skip
    shorter = ClipDataset(_sources(video, LABELS[:20]), SIDE_CLASSES, size_px=SIZE, cache_dir=tmp_path,
                          flow_config=CHEAP_FLOW, progress=False)  # fmt: skip
    assert shorter.source_labels(0).size == 30 and (shorter.source_labels(0)[20:] == -1).all()
    bad = tmp_path / "a.json"
    bad.write_text('{"arenas": [{"id": "arena0", "roi": [0, 0, 500, 48]}]}')
    with pytest.raises(UserError, match="does not fit"):
        sources_from_files(video, video.with_name(video.stem + ".labels.csv"), arenas_json=bad)
    bad.write_text('{"rois": []}')
    with pytest.raises(UserError, match="not an arenas file"):
        load_arenas(bad)


def test_sources_from_synth_files(video):
    srcs = sources_from_files(video, video.with_name(video.stem + ".boris.csv"),
                              arenas_json=video.with_name(video.stem + ".arenas.json"))  # fmt: skip
    assert [s.roi for s in srcs] == [Roi(0, 0, 48, 48), Roi(48, 0, 48, 48)]
    assert [s.name for s in srcs] == [f"{video.name}#arena0", f"{video.name}#arena1"]


# ---------------------------------------------------------------- folds


def _fst_items(num_sources=3, n=600, seed=0) -> np.ndarray:
    """Items like an FST: immobile (2) bouts become more common later in each video."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_sources):
        t = 0
        while t < n:
            length = int(rng.integers(15, 60))
            p_imm = 0.2 + 0.6 * t / n
            label = 2 if rng.random() < p_imm else int(rng.integers(0, 2))
            for f in range(t, min(n, t + length)):
                if rng.random() < 0.9:  # sparse labels
                    rows.append((s, f, label))
            t += length
    return np.array(rows, dtype=np.int64)


def test_contiguous_folds_no_leak_and_stratified():
    items = _fst_items()
    k, gap = 4, 16
    folds = contiguous_folds(items, k, gap_frames=gap)
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(items)))  # every item tested exactly once
    overall = np.bincount(items[:, 2], minlength=3) / len(items)
    for f in folds:
        assert np.intersect1d(f.train, f.test).size == 0
        assert np.sort(np.concatenate([f.train, f.test, f.excluded])).tolist() == list(range(len(items)))
        for s in range(3):
            tr = items[f.train][items[f.train, 0] == s, 1]
            te = items[f.test][items[f.test, 0] == s, 1]
            assert np.abs(tr[:, None] - te[None, :]).min() >= gap
        mix = np.bincount(items[f.test, 2], minlength=3) / len(f.test)
        assert np.abs(mix - overall).max() < 0.2  # every fold tests on every class
    naive = [items[(items[:, 1] >= j * 150) & (items[:, 1] < (j + 1) * 150), 2] for j in range(k)]
    naive_dev = max(np.abs(np.bincount(x, minlength=3) / len(x) - overall).max() for x in naive)
    ours = max(np.abs(np.bincount(items[f.test, 2], minlength=3) / len(f.test) - overall).max() for f in folds)
    assert ours < naive_dev


def test_video_folds_keep_groups_together():
    items = _fst_items(num_sources=6, n=120)
    groups = ["a", "a", "b", "c", "c", "d"]  # e.g. two arenas of one video file
    folds = video_folds(items, 3, groups=groups)
    for f in folds:
        test_groups = {groups[s] for s in np.unique(items[f.test, 0])}
        train_groups = {groups[s] for s in np.unique(items[f.train, 0])}
        assert test_groups and not (test_groups & train_groups)
    assert sum(len(f.test) for f in folds) == len(items)
    with pytest.raises(UserError, match="cannot make 5 folds"):
        video_folds(items, 5, groups=groups)


# --------------------------------------------------------------------------------------------
# any camera's frame rate: resampled by timestamp with the live rule


def _live_clips(video: Path, rois, fps: float, centers):
    """What stream-run builds: Capture (FrameResampler) -> crop_resize per arena -> ClipRing."""
    from stream.capture import Capture, CaptureConfig, EndOfStream, Frame, SourceSpec
    from stream.preprocess import FUTURE_FRAMES
    from stream.ring import ClipRing

    ring = ClipRing(len(rois), SIZE, TVL1(CHEAP_FLOW), warm_start=False)  # training computes each pair from scratch
    capture = Capture(SourceSpec("file", str(video)), CaptureConfig(fps=fps, live=False))
    capture.open()
    capture.start()
    clips, shown, last = {}, [], None
    try:
        for item in capture:
            if isinstance(item, EndOfStream):
                break
            if not isinstance(item, Frame):
                continue
            ring.push(np.stack([crop_resize(item.image, roi, SIZE) for roi in rois]), item.index)
            shown.append(item.source_index)
            last = item.index
            c = item.index - FUTURE_FRAMES
            if c in centers:
                clips[c] = ring.clip(c, item.index)
    finally:
        capture.close()
    for c in centers:  # the last centres: edge-padded at the end of the stream, as Pipeline does
        if c not in clips:
            clips[c] = ring.clip(c, last)
    return clips, shown


@pytest.mark.parametrize("source_fps", [25.0, 30.0])
def test_resampled_clips_equal_the_live_clips(tmp_path, source_fps):
    r = render_video(SynthConfig(view="side", duration_s=2.0, fps=source_fps, arenas=2, arena_size_px=48, seed=4), tmp_path / "v")
    n_source = r.num_frames
    labels = np.arange(n_source) % 3  # a different label on neighbouring source frames: mapping errors show
    labels[5] = -1
    rois = [roi for _, roi in load_arenas(r.arenas_json)]
    sources = [VideoSource(r.video_path, Annotation(SIDE_CLASSES, labels, Path("l.csv"), f"arena{i}", source_fps), roi) for i, roi in enumerate(rois)]
    ds = ClipDataset(sources, SIDE_CLASSES, size_px=SIZE, cache_dir=tmp_path / "cache", flow_config=CHEAP_FLOW, progress=False, fps=15.0)
    n = ds.num_frames(0)
    assert n == 30  # 2 s at 15 fps
    # the rule by hand: tick k shows the first source frame j with j/fps >= (k - 0.4)/15. At 25 fps every
    # third tick ties exactly with a source frame ((k - 0.4) * 25/15 is an integer), and the decoder's
    # timestamps decide by the last bit: either neighbour obeys the rule, the live path must decide the same.
    expected_shown = ds.shown_source_frames(0).tolist()
    for k, j in enumerate(expected_shown):
        due = (k - 0.4) / 15.0
        assert j / source_fps >= due - 1e-9 and (j == 0 or (j - 1) / source_fps < due + 1e-9), (k, j)
    assert ds.source_labels(0).tolist() == labels[expected_shown].tolist()
    assert not np.isin(ds.items[:, 1][ds.items[:, 0] == 0], [k for k in range(n) if expected_shown[k] == 5]).any()  # unlabelled source frame
    centers = {0, 3, 12, n - 3, n - 1}
    live, live_shown = _live_clips(r.video_path, rois, 15.0, centers)
    assert live_shown == expected_shown
    for c in sorted(centers):
        live_rgb, live_flow = live[c]
        for s in range(2):
            item = np.flatnonzero((ds.items[:, 0] == s) & (ds.items[:, 1] == c))
            if not item.size:
                continue
            rgb, flow, y = ds[int(item[0])]
            assert int(y) == labels[expected_shown[c]]
            assert torch.equal(rgb, live_rgb[s]), (c, s)
            # the cache stores flow as one byte per value: within half a quantisation step of the live float flow
            np.testing.assert_allclose(flow.numpy(), live_flow[s].numpy(), atol=0.0040, err_msg=f"centre {c} arena {s}")
            assert np.any(flow.numpy() != 0)


def test_train_data_arguments_accept_any_camera_rate(tmp_path):
    """export-train used to refuse 25 fps video for a 15 fps model ('cannot be subsampled')."""
    import argparse

    from export import train as tr

    vids = [render_video(SynthConfig(view="side", duration_s=2.0, fps=f, arenas=1, arena_size_px=48, seed=5), tmp_path / f"v{int(f)}").video_path for f in (25.0, 30.0)]
    args = argparse.Namespace(videos=vids, labels=None, arenas=None, jhuang=None, size_px=32, fps=15.0, frame_step=1,
                              cache_dir=tmp_path / "cache", flow_preset="fast")  # fmt: skip
    ds, spec = tr.dataset_from_args(args, SIDE_CLASSES, progress=False)
    assert (spec.fps, spec.stride) == (15.0, 1)
    assert [ds.num_frames(s) for s in range(len(ds.sources))] == [30, 30]


def test_window_is_the_consecutive_frames_the_clips_show(video: Path, tmp_path: Path) -> None:
    ds = _dataset(video, tmp_path)
    rgb, flow = ds.window(1, 4, 20)
    assert rgb.shape == (3, 16, SIZE, SIZE) and flow.shape == (2, 16, SIZE, SIZE)
    clip_frames, clip_flow = ds.clip(1, 12)  # frames 4..19: no edge repeat
    np.testing.assert_array_equal(rgb, rgb_clip(clip_frames))
    np.testing.assert_array_equal(flow, encode_flow(clip_flow).transpose(1, 0, 2, 3))
    with pytest.raises(ValueError, match="outside"):
        ds.window(1, 20, 31)


def test_an_augmented_window_is_one_augmentation_across_its_chunks(video: Path, tmp_path: Path, monkeypatch) -> None:
    """cv2.resize takes 128 channels at most, so long windows are augmented in chunks with the same draws."""
    import export.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "AUG_CHUNK_FRAMES", 8)
    ds = _dataset(video, tmp_path)
    for seed in range(4):  # flips, crops and gains differ between seeds: each must hold over the window
        whole = ds.window(0, 0, 24, np.random.default_rng(seed))
        last = ds.window(0, 16, 24, np.random.default_rng(seed))  # the window's third chunk, drawn alone
        np.testing.assert_allclose(whole[0][:, 16:], last[0], atol=1e-6)
        np.testing.assert_allclose(whole[1][:, 16:], last[1], atol=1e-6)


def test_mouse_crop_cuts_the_clip_from_the_arena_at_twice_the_size(video: Path, tmp_path: Path) -> None:
    """crop="mouse": frames and flow of the 2x arena (the 2x ROI dataset's, bit for bit), cut by the
    mouse window of the clip's centre frame, the same window for all 16 frames; own cache files."""
    from stream.mouse_crop import crop_window, track_positions

    roi = _dataset(video, tmp_path, fps=15.0)
    mouse = _dataset(video, tmp_path, fps=15.0, crop="mouse")
    double = _dataset(video, tmp_path, fps=15.0, size_px=2 * SIZE)
    assert mouse.decode_px == 2 * SIZE and roi.decode_px == SIZE
    assert mouse.cache_files[0][0] != roi.cache_files[0][0] and mouse.cache_files[0][1] != roi.cache_files[0][1]
    np.testing.assert_array_equal(mouse.items, roi.items)  # the same clips, only their pixels differ
    for s in range(2):
        track = track_positions(np.asarray(double._frames[s]), 15.0)
        for c in (0, 14, 22, 29):
            w = crop_window(track[c], 2 * SIZE)
            assert w.size == SIZE
            frames, flow = mouse.clip(s, c)
            big_frames, big_flow = double.clip(s, c)
            np.testing.assert_array_equal(frames, big_frames[:, w.y : w.y + SIZE, w.x : w.x + SIZE])
            np.testing.assert_array_equal(flow, big_flow[:, :, w.y : w.y + SIZE, w.x : w.x + SIZE])
    rgb, flow, _ = mouse[5]
    assert rgb.shape == (3, 16, SIZE, SIZE) and flow.shape == (2, 16, SIZE, SIZE)
    torch.manual_seed(0)
    assert not torch.equal(mouse.with_augment(True)[5][0], rgb)  # augmentation still applies
    rgb_w, _ = mouse.window(0, 4, 20)
    w = mouse.mouse_window(0, 11)
    np.testing.assert_array_equal(rgb_w, rgb_clip(np.asarray(double._frames[0][4:20])[:, w.y : w.y + SIZE, w.x : w.x + SIZE]))


def test_unknown_crop_and_mouse_crop_without_a_frame_rate_are_refused(video: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crop 'face'"):
        _dataset(video, tmp_path, fps=15.0, crop="face")
    with pytest.raises(ValueError, match="needs fps"):
        _dataset(video, tmp_path, crop="mouse")

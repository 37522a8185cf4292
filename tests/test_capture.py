"""Capture: frame normalisation, the fps conversion rule, queue behaviour, reconnect and give-up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream import capture as cap_mod
from stream.capture import (Capture, CaptureConfig, EndOfStream, Frame, FrameResampler, Gap, SourceSpec,
                            SourceUnavailable, normalize_frame, parse_source)
from stream.errors import UserError

WAIT_S = 10.0  # generous on a loaded 2-core machine


# ----------------------------------------------------------------------------- helpers
def write_video(path: Path, frames: int, fps: float = 15.0, size: tuple[int, int] = (48, 32)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        image = np.full((size[1], size[0], 3), 30, np.uint8)
        image[:, (2 * i) % size[0]] = 250  # a moving bar; frame i is recognisable by its column
        writer.write(image)
    writer.release()
    return path


class FakeCapture:
    """A VideoCapture stand-in: ``frames`` images, then read() fails (an unplugged camera)."""

    def __init__(self, frames: int, shape: tuple[int, ...] = (24, 32, 3), dtype=np.uint8, fps: float = 0.0,
                 delay_s: float = 0.0, opened: bool = True) -> None:
        self.left = frames
        self.shape = shape
        self.dtype = dtype
        self.fps = fps
        self.delay_s = delay_s
        self.opened = opened
        self.released = False
        self.count = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV API
        return self.opened

    def read(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.count += 1
        return True, np.full(self.shape, self.count % 250, self.dtype)

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def drain(capture: Capture, timeout_s: float = WAIT_S) -> list:
    items, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = capture.get(0.05)
        if item is None:
            continue
        items.append(item)
        if isinstance(item, EndOfStream):
            return items
    pytest.fail(f"no end of stream within {timeout_s} s; got {len(items)} items")


# ----------------------------------------------------------------------------- normalize_frame
@pytest.mark.parametrize(
    "image",
    [
        np.zeros((21, 33), np.uint8),  # grey, odd size
        np.zeros((21, 33, 1), np.uint8),
        np.zeros((21, 33, 4), np.uint8),  # BGRA
        np.zeros((21, 33, 3), np.uint16),
        np.zeros((21, 33, 3), np.float32),
    ],
)
def test_normalize_frame_gives_bgr_uint8_of_the_same_size(image: np.ndarray) -> None:
    out = normalize_frame(image)
    assert out.shape == (21, 33, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_normalize_frame_keeps_values() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (normalize_frame(grey) == grey[:, :, None]).all()
    bgra = np.dstack([np.full((3, 4), v, np.uint8) for v in (10, 20, 30, 99)])
    assert normalize_frame(bgra)[0, 0].tolist() == [10, 20, 30]
    assert normalize_frame(np.full((2, 2, 3), 0xABCD, np.uint16))[0, 0, 0] == 0xAB


@pytest.mark.parametrize("bad", [None, np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((2, 2, 2, 2), np.uint8)])
def test_normalize_frame_refuses_unusable_frames(bad) -> None:
    with pytest.raises(ValueError):
        normalize_frame(bad)


# ----------------------------------------------------------------------------- resampling rule
def resample(source_fps: float, model_fps: float, seconds: float, jitter_s: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    r = FrameResampler(model_fps)
    assignment = []  # (tick, source frame number)
    n = int(seconds * source_fps)
    for i in range(n):
        t = i / source_fps + (rng.uniform(-jitter_s, jitter_s) if i else 0.0)
        ticks, gap = r.push(t)
        assert gap is None
        assignment += [(k, i) for k in ticks]
    return r, assignment


def test_faster_source_drops_frames_evenly() -> None:
    r, assignment = resample(30.0, 15.0, 2.0)
    assert [k for k, _ in assignment] == list(range(len(assignment)))  # every tick filled, in order
    assert [i for _, i in assignment] == list(range(0, 60, 2))
    assert r.dropped == 30 and r.repeated == 0


def test_slower_source_repeats_frames() -> None:
    r, assignment = resample(10.0, 15.0, 2.0)
    ticks = [k for k, _ in assignment]
    assert ticks == list(range(len(ticks)))
    used = [i for _, i in assignment]
    assert sorted(set(used)) == list(range(20))  # nothing dropped
    assert r.repeated == len(used) - 20 > 0 and r.dropped == 0
    # tick k shows the first source frame at or after (k - 0.4) / 15 s
    for k, i in assignment:
        assert i / 10.0 >= (k - 0.4) / 15.0 - 1e-9
        assert i == 0 or (i - 1) / 10.0 < (k - 0.4) / 15.0


def test_same_rate_with_camera_jitter_neither_drops_nor_repeats() -> None:
    r, assignment = resample(15.0, 15.0, 4.0, jitter_s=0.2 / 15.0)
    assert r.dropped == 0 and r.repeated == 0
    assert assignment == [(i, i) for i in range(60)]


def test_25_to_15_fps_keeps_time_aligned() -> None:
    _, assignment = resample(25.0, 15.0, 4.0)
    for k, i in assignment:
        assert abs(i / 25.0 - k / 15.0) <= 0.4 / 15.0 + 1 / 25.0


def test_long_pause_is_a_gap_not_repeats() -> None:
    r = FrameResampler(15.0)
    for i in range(10):
        r.push(i / 15.0)
    ticks, gap = r.push(9 / 15.0 + 3.0)
    assert isinstance(gap, Gap)
    assert gap.first_index == 10
    assert gap.frames_missing == pytest.approx(45, abs=1)
    assert ticks == [gap.first_index + gap.frames_missing]
    assert r.repeated == 0


def test_timestamps_going_back_never_reorder_ticks() -> None:
    r = FrameResampler(15.0)
    out = []
    for t in (0.0, 0.07, 0.05, 0.2, 0.19, 0.27):
        ticks, _ = r.push(t)
        out += ticks
    assert out == sorted(out) and len(set(out)) == len(out)


# ----------------------------------------------------------------------------- sources
def test_parse_source_checks() -> None:
    assert parse_source(camera=0) == SourceSpec("camera", "0")
    assert parse_source(url="rtsp://h/x").live
    with pytest.raises(UserError, match="exactly one"):
        parse_source(camera=0, url="rtsp://h/x")
    with pytest.raises(UserError, match="no such file"):
        parse_source(video="/nonexistent/v.mp4")
    with pytest.raises(UserError, match="rtsp"):
        parse_source(url="just-a-host")


def test_offline_file_blocks_instead_of_dropping(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 30)
    capture = Capture(parse_source(video=video), CaptureConfig(fps=15.0, live=False, queue_frames=2))
    assert capture.open() == (48, 32)
    capture.start()
    items = []
    for item in capture:  # a slow consumer: the queue is full most of the time
        if item is None:
            continue
        items.append(item)
        if isinstance(item, EndOfStream):
            break
        time.sleep(0.01)
    capture.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.index for f in frames] == list(range(30))
    assert items[-1].reason == "end of file" and not items[-1].gave_up
    assert capture.stats.dropped_queue_full == 0
    assert frames[3].timestamp_s == pytest.approx(3 / 15.0)
    # frame content is the decoded video, in order (the bar moves 2 px a frame)
    assert int(np.argmax(frames[5].image[10, :, 1])) == 10


def test_file_at_twice_the_model_rate_is_halved(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v30.mp4", 30, fps=30.0)
    capture = Capture(parse_source(video=video), CaptureConfig(fps=15.0, live=False))
    capture.open()
    capture.start()
    frames = [i for i in drain(capture) if isinstance(i, Frame)]
    capture.close()
    assert len(frames) == 15
    assert [int(np.argmax(f.image[10, :, 1])) for f in frames[:4]] == [0, 4, 8, 12]  # source frames 0, 2, 4, 6


def test_live_source_drops_and_counts_when_the_queue_is_full() -> None:
    fake = FakeCapture(100, delay_s=0.002)
    config = CaptureConfig(fps=1000.0, live=True, queue_frames=4, give_up_s=0.05)  # 0 would mean "never give up"
    capture = Capture(SourceSpec("camera", "0"), config, factory=lambda spec, **kw: fake)
    capture.open()
    capture.start()
    capture.join(WAIT_S)  # nobody reads: the thread must still finish, not block on the full queue
    assert not capture.is_alive()
    assert capture.stats.dropped_queue_full > 0
    items = drain(capture)
    assert isinstance(items[-1], EndOfStream) and items[-1].gave_up
    capture.close()


def test_four_channel_and_grey_frames_come_out_bgr() -> None:
    for shape in [(24, 32, 4), (24, 32)]:
        fake = FakeCapture(5, shape=shape)
        capture = Capture(SourceSpec("file", "fake.mp4"), CaptureConfig(fps=15.0, live=False),
                          factory=lambda spec, **kw: fake)
        capture.open()
        capture.start()
        frames = [i for i in drain(capture) if isinstance(i, Frame)]
        capture.close()
        assert frames and all(f.image.shape == (24, 32, 3) for f in frames)


def test_unplugged_camera_reconnects_and_reports_the_gap() -> None:
    opened: list[FakeCapture] = []

    def factory(spec, **kw):
        # first device: 5 frames; unplugged for 2 attempts; back for 8 frames; then gone for good
        if len(opened) == 0:
            opened.append(FakeCapture(5, delay_s=1 / 30))
        elif len(opened) == 3:
            opened.append(FakeCapture(8, delay_s=1 / 30))
        else:
            opened.append(FakeCapture(0, opened=False))
        return opened[-1]

    config = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.3, max_backoff_s=0.6, give_up_s=1.6)
    capture = Capture(SourceSpec("camera", "0"), config, factory=factory)
    capture.open()
    capture.start()
    items = drain(capture)
    capture.close()
    gaps = [i for i in items if isinstance(i, Gap)]
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(gaps) == 1 and gaps[0].frames_missing > 0 and gaps[0].seconds_missing > 0.3
    assert capture.stats.reconnects >= 3
    before = [f.index for f in frames if f.index < gaps[0].first_index]
    after = [f.index for f in frames if f.index >= gaps[0].first_index]
    assert after and after[0] == gaps[0].first_index + gaps[0].frames_missing  # indices skip the gap
    assert before == list(range(len(before)))
    end = items[-1]
    assert isinstance(end, EndOfStream) and end.gave_up and "gave up" in (end.error or "")
    assert all(f.released for f in opened)


def test_give_up_is_timely_and_stop_interrupts_the_back_off() -> None:
    config = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.2, max_backoff_s=5.0, give_up_s=60.0)
    fakes = iter([FakeCapture(1)] + [FakeCapture(0, opened=False)] * 1000)
    capture = Capture(SourceSpec("url", "rtsp://x/y"), config, factory=lambda spec, **kw: next(fakes))
    capture.open()
    capture.start()
    time.sleep(0.5)
    started = time.monotonic()
    capture.close(timeout_s=WAIT_S)
    assert not capture.is_alive() and time.monotonic() - started < 2.0


def test_open_refuses_missing_camera_corrupt_and_empty_files(tmp_path: Path) -> None:
    cap_mod.quiet_opencv_logging()
    config = CaptureConfig(fps=15.0, live=True)
    with pytest.raises(UserError, match="camera 97"):
        Capture(SourceSpec("camera", "97"), config).open()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(UserError, match="bad.mp4"):
        Capture(parse_source(video=bad), CaptureConfig(fps=15.0, live=False)).open()
    empty = write_video(tmp_path / "zero.mp4", 0)
    with pytest.raises(UserError, match="zero.mp4"):
        Capture(parse_source(video=empty), CaptureConfig(fps=15.0, live=False)).open()


def write_avi(path: Path, frames: int) -> Path:
    """MJPG in AVI: the header declares the frame count, and a cut copy still decodes up to the cut."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (48, 32))
    for i in range(frames):
        writer.write(np.full((32, 48, 3), (7 * i) % 250, np.uint8))
    writer.release()
    return path


def test_truncated_recording_is_flagged_and_warned(tmp_path: Path, caplog) -> None:
    """Issue 14.8: a file cut at 30 % was scored silently as a short test."""
    cap_mod.quiet_opencv_logging()
    whole = write_avi(tmp_path / "whole.avi", 90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 3 // 10])
    results = {}
    for video in (whole, cut):
        capture = Capture(parse_source(video=video), CaptureConfig(fps=15.0, live=False))
        capture.open()
        capture.start()
        with caplog.at_level("WARNING"):
            frames = sum(isinstance(i, Frame) for i in drain(capture))
        capture.close()
        results[video.name] = (frames, capture.stats)
    frames, stats = results["whole.avi"]
    assert frames == 90 and not stats.truncated and stats.frames_short == 0
    frames, stats = results["cut.avi"]
    assert 0 < frames < 45 and stats.truncated and stats.source_frame_count == 90
    assert stats.frames_short == 90 - stats.source_frames
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "cut.avi" in warnings[0] and "of the 90 frames" in warnings[0]


def test_max_frames_is_not_a_truncation(tmp_path: Path) -> None:
    capture = Capture(parse_source(video=write_avi(tmp_path / "v.avi", 40)),
                      CaptureConfig(fps=15.0, live=False, max_frames=5))
    capture.open()
    capture.start()
    drain(capture)
    capture.close()
    assert not capture.stats.truncated


def test_max_frames_ends_the_stream(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 30)
    capture = Capture(parse_source(video=video), CaptureConfig(fps=15.0, live=False, max_frames=7))
    capture.open()
    capture.start()
    items = drain(capture)
    capture.close()
    assert [i.index for i in items if isinstance(i, Frame)] == list(range(7))
    assert items[-1].reason == "max frames"


def test_config_validation() -> None:
    with pytest.raises(UserError):
        CaptureConfig(fps=0.0, live=True)
    with pytest.raises(UserError, match="back-off"):
        CaptureConfig(fps=15.0, live=True, initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(UserError):
        CaptureConfig(fps=15.0, live=True, queue_frames=0)


@pytest.mark.parametrize("max_backoff_s", [0.0, -1.0, float("nan")])
def test_zero_max_backoff_names_the_flag_and_the_value(max_backoff_s: float) -> None:
    """Issue 14.10: it read "must be >= the initial back-off (0.0 s)"."""
    with pytest.raises(UserError, match=r"--reconnect-max-backoff-s must be > 0 s, got") as err:
        CaptureConfig(fps=15.0, live=True, initial_backoff_s=min(0.5, max_backoff_s), max_backoff_s=max_backoff_s)
    assert "initial" not in str(err.value)


@pytest.mark.parametrize("give_up_s", [-1.0, float("nan"), float("inf")])
def test_give_up_must_be_a_finite_number_of_seconds(give_up_s: float) -> None:
    with pytest.raises(UserError, match="--give-up-s must be >= 0 s"):
        CaptureConfig(fps=15.0, live=True, give_up_s=give_up_s)


def test_give_up_zero_never_gives_up_reconnecting() -> None:
    """Issue 14.10: --give-up-s 0 means "keep trying until stopped" (it gave up at once)."""
    config = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.05, max_backoff_s=0.1, give_up_s=0.0)
    fakes = iter([FakeCapture(2)] + [FakeCapture(0, opened=False)] * 10_000)
    capture = Capture(SourceSpec("camera", "0"), config, factory=lambda spec, **kw: next(fakes))
    capture.open()
    capture.start()
    deadline = time.monotonic() + 1.5
    items = []
    while time.monotonic() < deadline:
        item = capture.get(0.05)
        if item is not None:
            items.append(item)
    assert not any(isinstance(i, EndOfStream) for i in items), items
    assert capture.is_alive() and capture.stats.reconnects >= 5
    capture.close(timeout_s=WAIT_S)
    assert not capture.is_alive()


def test_live_source_missing_at_start_is_waited_for_with_status_reports() -> None:
    """Issue 14.9: an IP camera still booting must not end the service; every wait is reported."""
    attempts: list[FakeCapture] = []

    def factory(spec, **kw):
        attempts.append(FakeCapture(5) if len(attempts) >= 3 else FakeCapture(0, opened=False))
        return attempts[-1]

    config = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.2, max_backoff_s=0.4, give_up_s=30.0)
    capture = Capture(SourceSpec("url", "rtsp://cam/1"), config, factory=factory)
    reports: list[tuple[float, str]] = []
    started = time.monotonic()
    assert capture.open_waiting(lambda status: reports.append((time.monotonic(), status))) == (32, 24)
    assert len(attempts) == 4 and time.monotonic() - started >= 0.2 + 0.4 + 0.4
    assert reports and all("waiting for rtsp://cam/1" in text and "giving up in" in text for _, text in reports)
    moments = [started] + [t for t, _ in reports] + [time.monotonic()]
    assert max(b - a for a, b in zip(moments, moments[1:])) < cap_mod.WAIT_REPORT_S + 0.5  # + scheduling slack
    capture.start()
    first = capture.get(WAIT_S)
    capture.close()
    assert isinstance(first, Frame) and first.index == 0


def test_live_source_missing_at_start_gives_up_or_stops() -> None:
    config = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.1, max_backoff_s=0.2, give_up_s=0.7)
    capture = Capture(SourceSpec("camera", "3"), config, factory=lambda spec, **kw: FakeCapture(0, opened=False))
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"camera 3 could not be opened.*gave up after .* attempts"):
        capture.open_waiting()
    assert 0.7 <= time.monotonic() - started < 3.0
    stop = threading.Event()
    forever = CaptureConfig(fps=15.0, live=True, initial_backoff_s=0.1, max_backoff_s=5.0, give_up_s=0.0)
    capture = Capture(SourceSpec("camera", "3"), forever, stop_event=stop,
                      factory=lambda spec, **kw: FakeCapture(0, opened=False))
    threading.Timer(0.8, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="stopped"):
        capture.open_waiting()
    assert time.monotonic() - started < 3.0


def test_capture_thread_base_reports_errors() -> None:
    class Boom(cap_mod.ServiceThread):
        cleaned = False

        def loop(self) -> None:
            raise RuntimeError("boom")

        def cleanup(self) -> None:
            Boom.cleaned = True

    t = Boom("boom", threading.Event())
    t.start()
    t.join(WAIT_S)
    assert isinstance(t.error, RuntimeError) and Boom.cleaned

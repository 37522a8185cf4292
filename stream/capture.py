"""Frame capture: camera index, video file or RTSP/HTTP URL -> a queue of model-rate frames.

The capture thread must never wait for the model. For live sources (camera, URL, or a file
paced with ``realtime=True``) a full queue drops the newest frame and counts it, as Frigate does;
for an offline file the thread blocks on the queue instead, so that every frame is processed.

Frame-rate conversion (source fps -> model fps), one stated rule:
    output tick ``k`` sits at ``k / fps_model`` seconds after the first frame and shows the first
    source frame whose timestamp is >= ``tick - RESAMPLE_TOLERANCE_FRACTION / fps_model``.
    A source frame that no tick claims is dropped (source faster than the model); a source frame
    that several ticks claim is repeated (source slower). A jump of more than ``GAP_THRESHOLD_S``
    between two source frames is not filled with repeats: it becomes a ``Gap`` event.

Live sources that stop delivering frames are reopened with exponential back-off; the time spent
without frames becomes a ``Gap``. After ``give_up_s`` without a frame the stream ends with
``EndOfStream(gave_up=True)``; ``give_up_s=0`` never gives up. A live source that cannot be opened
at start (an IP camera still booting after a power cut) is retried the same way by
``open_waiting``, which reports each wait so that systemd's STATUS and watchdog stay truthful. Files end at their last readable frame (a truncated file simply
ends early).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from stream.errors import UserError

__all__ = [
    "SourceSpec",
    "CaptureConfig",
    "Frame",
    "Gap",
    "EndOfStream",
    "SourceUnavailable",
    "FrameResampler",
    "Capture",
    "ServiceThread",
    "normalize_frame",
    "open_video_capture",
    "parse_source",
    "quiet_opencv_logging",
]

log = logging.getLogger(__name__)

RESAMPLE_TOLERANCE_FRACTION = 0.4  # of a model frame period: absorbs camera jitter without drop+repeat pairs
GAP_THRESHOLD_S = 1.0  # longer than any plausible frame interval; beyond it repeats would invent motionless video
DEFAULT_QUEUE_FRAMES = 64  # ~4 s at 15 fps: rides out a slow classification without dropping
DEFAULT_OPEN_TIMEOUT_S = 10.0  # RTSP/HTTP connect timeout; a dead URL must not hang start-up
DEFAULT_READ_TIMEOUT_S = 5.0  # a stalled network stream counts as a disconnect after this
DEFAULT_INITIAL_BACKOFF_S = 0.5  # first reconnect try: quick, a USB camera often re-enumerates in < 1 s
DEFAULT_MAX_BACKOFF_S = 10.0  # cap: a returning camera is picked up within 10 s
DEFAULT_GIVE_UP_S = 300.0  # 5 min without frames: the test is lost, exit non-zero so systemd restarts us
NEVER_GIVE_UP_S = 0.0  # --give-up-s 0: keep reconnecting (or waiting for the camera at start) until stopped
# While waiting for a source, report (STATUS, watchdog) at least this often: well inside half of
# any sane WatchdogSec (>= 2 s), so a service waiting for its camera is never killed as hung.
WAIT_REPORT_S = 0.5
QUEUE_POLL_S = 0.1  # how often a blocked put/get re-checks the stop event (shutdown latency)
UINT16_TO_UINT8_SHIFT = 8  # 16-bit depth/IR cameras: keep the 8 most significant bits
# A file that ends more than this short of the frame count its container declares is called
# truncated (a copy cut off, a recorder that crashed). Containers round their count from the
# duration, so a frame or two (or 1 % of a long file) short is normal and not flagged.
TRUNCATED_SLACK_FRAMES = 2
TRUNCATED_SLACK_FRACTION = 0.01

SourceKind = Literal["camera", "file", "url"]
FFMPEG_LOG_FATAL = "8"  # AV_LOG_FATAL: FFmpeg's own stderr lines would break our one-line error contract


def quiet_opencv_logging() -> None:
    """Silence OpenCV's and FFmpeg's stderr chatter (a missing camera, a corrupt file); we report
    those ourselves in one line. Respects an ``OPENCV_FFMPEG_LOGLEVEL`` the user set."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_LOG_FATAL)
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # OpenCV builds without the logging module
        pass


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from: a camera index, a video file path, or an RTSP/HTTP(S) URL."""

    kind: SourceKind
    location: str  # camera index as text, file path, or URL

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url")

    def __str__(self) -> str:
        return f"camera {self.location}" if self.kind == "camera" else self.location


def parse_source(*, camera: int | None = None, video: str | Path | None = None, url: str | None = None) -> SourceSpec:
    """Exactly one of camera / video / url -> a SourceSpec."""
    given = [x is not None for x in (camera, video, url)]
    if sum(given) != 1:
        raise UserError("give exactly one of --camera N, --video PATH, --url URL")
    if camera is not None:
        if camera < 0:
            raise UserError(f"--camera {camera}: camera index must be >= 0")
        return SourceSpec("camera", str(int(camera)))
    if url is not None:
        if "://" not in url:
            raise UserError(f"--url {url}: expected rtsp://, http:// or https:// URL")
        return SourceSpec("url", url)
    path = Path(video)  # type: ignore[arg-type]
    if not path.is_file():
        raise UserError(f"video {path}: no such file")
    return SourceSpec("file", str(path))


def open_video_capture(spec: SourceSpec, *, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                       read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> cv2.VideoCapture:
    """The capture source factory: the one place a ``cv2.VideoCapture`` is created.

    Tests replace this function to stand a video file in for a camera; everything after it is
    the same code path as a real camera.
    """
    if spec.kind == "camera":
        return cv2.VideoCapture(int(spec.location))
    if spec.kind == "url":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
        ]
        return cv2.VideoCapture(spec.location, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(spec.location)


def normalize_frame(image: np.ndarray | None) -> np.ndarray:
    """Any decoded frame -> contiguous BGR uint8 (H, W, 3); raises ValueError if unusable.

    Grey (H, W) or (H, W, 1) -> BGR; BGRA -> BGR (alpha dropped); 16-bit -> 8-bit. Odd sizes pass
    through unchanged: cropping and resizing to the model size happen per arena.
    """
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError("empty frame")
    if image.dtype == np.uint16:
        image = (image >> UINT16_TO_UINT8_SHIFT).astype(np.uint8)
    elif image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3:
        raise ValueError(f"frame with shape {image.shape}")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] != 3:
        raise ValueError(f"frame with {image.shape[2]} channels")
    return np.ascontiguousarray(image)


@dataclass
class Frame:
    """One model-rate frame. ``index`` counts model ticks from the start of the run (gaps included)."""

    index: int
    timestamp_s: float  # tick time: index / fps_model
    source_timestamp_s: float  # the source frame's own time (file position or wall clock since start)
    captured_monotonic_s: float  # time.monotonic() when the source frame was read (latency origin)
    image: np.ndarray  # (H, W, 3) uint8 BGR
    source_index: int = -1  # which source frame (0-based read count) this tick shows; training maps labels by it


@dataclass(frozen=True)
class Gap:
    """Frames that never arrived (camera unplugged, stream stalled, or dropped on a full queue)."""

    first_index: int  # first missing tick
    frames_missing: int
    seconds_missing: float
    reason: str


@dataclass(frozen=True)
class EndOfStream:
    reason: str  # "end of file", "stopped", "gave up", "error"
    gave_up: bool = False
    error: str | None = None


class FrameResampler:
    """Source frames with timestamps -> model-rate ticks (rule in the module docstring)."""

    def __init__(self, fps: float) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"model fps must be > 0, got {fps}")
        self.period_s = 1.0 / fps
        self.tolerance_s = RESAMPLE_TOLERANCE_FRACTION * self.period_s
        self.origin_s: float | None = None
        self.next_tick = 0
        self.last_source_s: float | None = None
        self.dropped = 0  # source frames no tick claimed
        self.repeated = 0  # extra ticks filled by an already-used source frame

    def tick_time(self, k: int) -> float:
        return k * self.period_s

    def push(self, source_s: float, *, discontinuity: bool = False) -> tuple[list[int], Gap | None]:
        """Ticks this source frame fills (possibly none) and a Gap if the stream jumped.

        ``discontinuity``: the source was reopened; never bridge the pause with repeats.
        """
        if self.origin_s is None:
            self.origin_s = source_s
            self.last_source_s = source_s
            self.next_tick = 1
            return [0], None
        rel = source_s - self.origin_s
        gap = None
        assert self.last_source_s is not None
        if discontinuity or source_s - self.last_source_s > GAP_THRESHOLD_S:
            # ticks strictly before this frame's own tick are missing, not repeated
            own_tick = max(self.next_tick, int(math.floor((rel + self.tolerance_s) / self.period_s)))
            missing = own_tick - self.next_tick
            if missing > 0:
                gap = Gap(self.next_tick, missing, source_s - self.last_source_s, "no frames")
            self.next_tick = own_tick
        if source_s < self.last_source_s:
            # non-monotonic timestamp (broken VFR file): never go back in time
            source_s = self.last_source_s
            rel = source_s - self.origin_s
        self.last_source_s = source_s
        ticks: list[int] = []
        while self.tick_time(self.next_tick) - self.tolerance_s <= rel:
            ticks.append(self.next_tick)
            self.next_tick += 1
        if not ticks:
            self.dropped += 1
        else:
            self.repeated += len(ticks) - 1
        return ticks, gap


class SourceUnavailable(Exception):
    """A live source stayed unopenable for ``give_up_s`` (or the wait was stopped); one line."""


@dataclass(frozen=True)
class CaptureConfig:
    """How the capture thread behaves; times in seconds."""

    fps: float  # model frame rate (from the model card)
    live: bool  # True: drop when the queue is full and reconnect; False: block and end at EOF
    realtime: bool = False  # pace a file at its own timestamps (implies live queue behaviour)
    queue_frames: int = DEFAULT_QUEUE_FRAMES
    initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    give_up_s: float = DEFAULT_GIVE_UP_S
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S
    max_frames: int | None = None  # stop after this many model-rate frames (tests, benchmarks)

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise UserError(f"model fps must be > 0, got {self.fps}")
        if self.queue_frames < 1:
            raise UserError(f"capture queue must hold >= 1 frame, got {self.queue_frames}")
        if not (self.max_backoff_s > 0 and math.isfinite(self.max_backoff_s)):
            raise UserError(f"--reconnect-max-backoff-s must be > 0 s, got {self.max_backoff_s:g}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise UserError(f"the first reconnect back-off ({self.initial_backoff_s:g} s) must be > 0 and <= "
                            f"--reconnect-max-backoff-s ({self.max_backoff_s:g} s)")
        if not (self.give_up_s >= 0 and math.isfinite(self.give_up_s)):
            raise UserError(f"--give-up-s must be >= 0 s (0: never give up), got {self.give_up_s:g}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be >= 1, got {self.max_frames}")


class ServiceThread(threading.Thread):
    """Base for our worker threads: a name, a logger, a stop event, cleanup in ``finally``."""

    def __init__(self, name: str, stop_event: threading.Event | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = stop_event or threading.Event()
        self.log = logging.getLogger(f"{__name__}.{name}")
        self.error: BaseException | None = None

    def run(self) -> None:  # noqa: D401 - Thread API
        self.log.debug("started")
        try:
            self.loop()
        except BaseException as exc:  # noqa: BLE001 - reported to the owner through .error
            self.error = exc
            self.log.exception("failed")
        finally:
            try:
                self.cleanup()
            finally:
                self.log.debug("stopped")

    def loop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release resources; runs however ``loop`` ended."""

    def stop(self) -> None:
        self.stop_event.set()


@dataclass
class CaptureStats:
    source_frames: int = 0  # frames read from the source
    frames: int = 0  # model-rate frames produced (queued or dropped)
    dropped_queue_full: int = 0
    dropped_resample: int = 0
    repeated_resample: int = 0
    invalid_frames: int = 0
    reconnects: int = 0
    gaps: list[Gap] = field(default_factory=list)
    source_fps: float = 0.0
    source_frame_count: int = 0  # as the container reports it (0: unknown, e.g. live)
    frame_size: tuple[int, int] = (0, 0)  # (width, height)
    truncated: bool = False  # a file ended well before the frame count its container declares

    @property
    def frames_short(self) -> int:
        """Frames the container declares that were never read (0 when the count is unknown)."""
        if self.source_frame_count <= 0:
            return 0
        return max(0, self.source_frame_count - self.source_frames)

    def frame_count_estimate(self, fps: float) -> int:
        """Model-rate frames a file will give (for a progress bar); 0 when unknown."""
        if self.source_frame_count <= 0 or self.source_fps <= 0:
            return 0
        return int(math.ceil(self.source_frame_count * fps / self.source_fps))


Item = Frame | Gap | EndOfStream


class Capture(ServiceThread):
    """Reads a source on its own thread and hands model-rate ``Frame``s to ``get()``.

    ``open()`` runs in the caller's thread before any frame is processed: it opens the source and
    reads the first frame, so that a missing camera, an unreadable or empty file fail with a
    ``UserError`` up front.
    """

    def __init__(self, spec: SourceSpec, config: CaptureConfig, *, stop_event: threading.Event | None = None,
                 factory: Callable[..., cv2.VideoCapture] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=f"capture-{spec.kind}", stop_event=stop_event)
        self.spec = spec
        self.config = config
        self._factory = factory
        self._clock = clock
        self._cap: cv2.VideoCapture | None = None
        self._first: tuple[np.ndarray, float, float] | None = None
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=config.queue_frames)
        self._resampler = FrameResampler(config.fps)
        self._drop_when_full = config.live or config.realtime
        self._t0: float | None = None  # clock at the first frame (live timestamps)
        self._ended = False
        self._lost_at: float | None = None  # clock of the last frame before an outage
        self._backoff_s = config.initial_backoff_s
        self.stats = CaptureStats()

    # -- set-up in the caller's thread --------------------------------------------------------
    def _open_once(self) -> cv2.VideoCapture | None:
        factory = self._factory or open_video_capture
        try:
            cap = factory(self.spec, open_timeout_s=self.config.open_timeout_s)
        except TypeError:
            cap = factory(self.spec)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def open(self) -> tuple[int, int]:
        """Open the source and read its first frame; returns (width, height)."""
        problem = self._try_open()
        if problem is not None:
            raise UserError(problem)
        return self.stats.frame_size

    @property
    def first_frame(self) -> np.ndarray | None:
        """The first frame ``open`` read (None before, or once the capture started or was released)."""
        return None if self._first is None else self._first[0]

    def open_waiting(self, on_wait: Callable[[str], None] | None = None, *,
                     stop_event: threading.Event | None = None) -> tuple[int, int]:
        """``open`` for a live source that may not be there yet: retry with back-off.

        Waits ``initial_backoff_s`` doubling to ``max_backoff_s`` between attempts, for up to
        ``give_up_s`` (0: until stopped). ``on_wait(status)`` is called at least every
        ``WAIT_REPORT_S`` while waiting (systemd's STATUS and watchdog). Raises
        ``SourceUnavailable`` on giving up or when ``stop_event`` (default: the capture's own) is set.
        """
        stop = stop_event or self.stop_event
        start = self._clock()
        backoff = self.config.initial_backoff_s
        attempts = 0
        while True:
            attempts += 1
            problem = self._try_open()
            if problem is None:
                if attempts > 1:
                    log.warning("%s: opened after %.1f s (%d attempts)", self.spec, self._clock() - start, attempts)
                return self.stats.frame_size
            waited = self._clock() - start
            give_up = self.config.give_up_s
            if give_up != NEVER_GIVE_UP_S and waited >= give_up:
                raise SourceUnavailable(f"{problem}; gave up after {waited:.0f} s and {attempts} attempts (--give-up-s)")
            next_try = self._clock() + (backoff if give_up == NEVER_GIVE_UP_S else min(backoff, give_up - waited))
            while (left := next_try - self._clock()) > 0:
                if on_wait is not None:
                    limit = "" if give_up == NEVER_GIVE_UP_S else f", giving up in {give_up - (self._clock() - start):.0f} s"
                    on_wait(f"waiting for {self.spec}: not available ({attempts} attempts, next in {left:.0f} s{limit})")
                if stop.wait(min(left, WAIT_REPORT_S)):
                    raise SourceUnavailable(f"{self.spec}: stopped while waiting for it to become available")
            backoff = min(backoff * 2.0, self.config.max_backoff_s)

    def _try_open(self) -> str | None:
        """One attempt to open the source and read its first frame; the problem in one line, or None."""
        cap = self._open_once()
        if cap is None:
            if self.spec.kind == "camera":
                return (f"camera {self.spec.location} could not be opened: check the index "
                        "(ls /dev/video*) and that no other program holds it")
            if self.spec.kind == "url":
                return f"stream {self.spec.location} could not be opened: check the URL and the network"
            return f"video {self.spec.location}: cannot be decoded (corrupt or not a video file)"
        ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            what = f"video {self.spec.location}" if self.spec.kind == "file" else str(self.spec)
            return f"{what}: no readable frames (empty, truncated or unsupported)"
        try:
            image = normalize_frame(image)
        except ValueError as exc:
            cap.release()
            return f"{self.spec}: unusable first frame ({exc})"
        self._cap = cap
        now = self._clock()
        self._t0 = now
        source_s = self._source_time(cap, 0, now)
        self._first = (image, source_s, now)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.stats.source_fps = float(fps) if fps and math.isfinite(fps) else 0.0
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.spec.kind == "file" else 0
        self.stats.source_frame_count = int(count) if count and math.isfinite(count) and count > 0 else 0
        h, w = image.shape[:2]
        self.stats.frame_size = (w, h)
        log.info("opened %s: %dx%d at %.2f fps (model fps %.2f)", self.spec, w, h, self.stats.source_fps, self.config.fps)
        return None

    def _source_time(self, cap: cv2.VideoCapture, raw_index: int, now: float) -> float:
        """Files: the decoder's timestamp (variable frame rate safe); live: wall clock since start."""
        if self.spec.kind == "file":
            pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            if raw_index == 0 or (pos_ms and pos_ms > 0 and math.isfinite(pos_ms)):
                return pos_ms / 1000.0 if raw_index else 0.0
            fps = self.stats.source_fps or self.config.fps
            return raw_index / fps
        assert self._t0 is not None
        return now - self._t0

    # -- the consumer side ---------------------------------------------------------------------
    def get(self, timeout_s: float = QUEUE_POLL_S) -> Item | None:
        """Next item, or None if nothing arrived within ``timeout_s``."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            if not self.is_alive() and self._queue.empty():
                if self.error is not None:
                    return EndOfStream("error", error=f"capture failed: {self.error}")
                return EndOfStream("stopped")
            return None

    def __iter__(self) -> Iterator[Item | None]:
        """Items until the end marker; ``None`` every ``QUEUE_POLL_S`` while nothing arrives, so the
        consumer can keep feeding its watchdog and printing counters during a reconnect."""
        while True:
            item = self.get()
            yield item
            if isinstance(item, EndOfStream):
                return

    # -- the capture thread -------------------------------------------------------------------
    def _put(self, item: Item, *, droppable: bool) -> bool:
        if droppable and self._drop_when_full:
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                self.stats.dropped_queue_full += 1
                return False
        while True:
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                if self.stop_event.is_set() and droppable:
                    return False

    def _put_control(self, item: Gap | EndOfStream) -> None:
        """Gaps and the end marker are never dropped: offline they wait for room like frames; live
        they make room by discarding the oldest frame (counted as dropped)."""
        if not self._drop_when_full:
            while True:
                try:
                    self._queue.put(item, timeout=QUEUE_POLL_S)
                    return
                except queue.Full:
                    if self.stop_event.is_set():
                        break  # the consumer is gone or stopping: fall through and make room
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                    if isinstance(old, Frame):
                        # the consumer sees the index jump and treats it as a gap
                        self.stats.dropped_queue_full += 1
                except queue.Empty:
                    pass

    def _emit(self, image: np.ndarray, source_s: float, captured_s: float, *, discontinuity: bool = False, source_index: int = -1) -> bool:
        """Resample and queue; returns False once max_frames is reached."""
        ticks, gap = self._resampler.push(source_s, discontinuity=discontinuity)
        if gap is not None:
            self.stats.gaps.append(gap)
            self._put_control(gap)
        for k in ticks:
            if self.config.max_frames is not None and self.stats.frames >= self.config.max_frames:
                return False
            self.stats.frames += 1
            frame = Frame(k, self._resampler.tick_time(k), source_s, captured_s, image, source_index)
            # a frame dropped on a full queue shows up as an index jump: the consumer treats it as a gap
            self._put(frame, droppable=True)
        return True

    def _pace(self, source_s: float) -> None:
        if not self.config.realtime or self.spec.live or self._t0 is None:
            return
        delay = (self._t0 + source_s) - self._clock()
        if delay > 0:
            self.stop_event.wait(delay)

    def loop(self) -> None:
        if self._cap is None or self._first is None:
            self.open()
        cap = self._cap
        image, source_s, captured_s = self._first  # type: ignore[misc]
        if not self.spec.live:
            # a file is opened (and checked) before the engine loads; pace from now, not from then,
            # or --realtime would burst through the first seconds to "catch up" with the load time
            self._t0 = self._clock() - source_s
        raw_index = 0
        self.stats.source_frames = 1
        if not self._emit(image, source_s, captured_s, source_index=0):
            self._finish(EndOfStream("max frames"))
            return
        expected_size = image.shape[:2]
        reopened = False
        while not self.stop_event.is_set():
            assert cap is not None
            ok, raw = cap.read()
            now = self._clock()
            if not ok or raw is None:
                if not self.spec.live:
                    self._check_complete()
                    self._finish(EndOfStream("end of file"))
                    return
                cap = self._reconnect(cap)
                if cap is None:
                    return  # _reconnect has queued the end marker
                reopened = True
                continue
            raw_index += 1
            self.stats.source_frames += 1
            if self._lost_at is not None:
                self.log.warning("%s: frames again after %.1f s", self.spec, now - self._lost_at)
                self._lost_at = None
            try:
                image = normalize_frame(raw)
            except ValueError as exc:
                self.stats.invalid_frames += 1
                self.log.warning("skipping frame %d: %s", raw_index, exc)
                continue
            if image.shape[:2] != expected_size:
                # resolution changed mid-stream (camera renegotiated): keep arenas valid
                image = cv2.resize(image, (expected_size[1], expected_size[0]), interpolation=cv2.INTER_AREA)
            source_s = self._source_time(cap, raw_index, now)
            self._pace(source_s)
            if not self._emit(image, source_s, now, discontinuity=reopened, source_index=raw_index):
                self._finish(EndOfStream("max frames"))
                return
            reopened = False
        self._finish(EndOfStream("stopped"))

    def _check_complete(self) -> None:
        """At the end of a file: did we read the frames its container declares? Warn if not."""
        stats = self.stats
        slack = max(TRUNCATED_SLACK_FRAMES, int(TRUNCATED_SLACK_FRACTION * stats.source_frame_count))
        if stats.frames_short > slack:
            stats.truncated = True
            self.log.warning("%s: ended after %d of the %d frames its container declares: the recording looks "
                             "truncated, its results cover only the first %.0f %%", self.spec, stats.source_frames,
                             stats.source_frame_count, 100.0 * stats.source_frames / stats.source_frame_count)

    def _reconnect(self, cap: cv2.VideoCapture) -> cv2.VideoCapture | None:
        """Reopen a live source with exponential back-off until it delivers a frame or we give up.

        The outage lasts from the last frame read until the next one: a device that reopens but
        still delivers nothing keeps the clock (and the back-off) running.
        """
        cap.release()
        self._cap = None
        if self._lost_at is None:
            self._lost_at = self._clock()
            self._backoff_s = self.config.initial_backoff_s
            give_up = ("never give up" if self.config.give_up_s == NEVER_GIVE_UP_S
                       else f"give up after {self.config.give_up_s:.0f} s")
            self.log.warning("%s: no frame; reconnecting (back-off %.1f..%.1f s, %s)",
                             self.spec, self._backoff_s, self.config.max_backoff_s, give_up)
        lost_at = self._lost_at
        while not self.stop_event.is_set():
            waited = self._clock() - lost_at
            if self.config.give_up_s != NEVER_GIVE_UP_S and waited >= self.config.give_up_s:
                msg = (f"{self.spec}: no frames for {waited:.1f} s; gave up after {self.stats.reconnects} "
                       "reconnect attempts (--give-up-s)")
                self._finish(EndOfStream("gave up", gave_up=True, error=msg))
                return None
            left_s = float("inf") if self.config.give_up_s == NEVER_GIVE_UP_S else self.config.give_up_s - waited
            self.stop_event.wait(min(self._backoff_s, max(0.0, left_s)))
            if self.stop_event.is_set():
                break
            self.stats.reconnects += 1
            self._backoff_s = min(self._backoff_s * 2.0, self.config.max_backoff_s)
            new = self._open_once()
            if new is not None:
                self.log.info("%s: reopened after %.1f s", self.spec, self._clock() - lost_at)
                self._cap = new
                return new
        self._finish(EndOfStream("stopped"))
        return None

    def _finish(self, end: EndOfStream) -> None:
        if not self._ended:
            self._ended = True
            self.stats.dropped_resample = self._resampler.dropped
            self.stats.repeated_resample = self._resampler.repeated
            self._put_control(end)

    def cleanup(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if not self._ended:
            self._finish(EndOfStream("error", error=f"capture failed: {self.error}" if self.error else None))

    def release(self) -> None:
        """Release a source that was opened but never started (pre-flight checks)."""
        if self.is_alive():
            raise RuntimeError("release() is for a capture that was not started; use close()")
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._first = None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait for it (drains the queue so a blocked put can finish)."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        while self.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self.join(QUEUE_POLL_S)
        if self._cap is not None and not self.is_alive():
            self._cap.release()
            self._cap = None

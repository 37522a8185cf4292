"""Prometheus metrics of a running recognizer, served over HTTP (default port 9108).

Names follow Prometheus conventions: the ``swim_stream_`` prefix, base units (seconds), ``_total``
on counters (added by ``prometheus_client``)::

    swim_stream_frames_captured_total{camera}          swim_stream_frames_processed_total
    swim_stream_frames_dropped_total{arena,reason}     swim_stream_behaviour_seconds_total{arena,behaviour}
    swim_stream_immobile_seconds{arena}                swim_stream_immobility_bouts{arena}
    swim_stream_scoring_window_immobile_seconds{arena} swim_stream_current_behaviour{arena,behaviour} (1/0)
    swim_stream_fps                                    swim_stream_capture_to_decision_seconds (histogram)
    swim_stream_flow_seconds (histogram)               swim_stream_model_seconds (histogram)
    swim_stream_engine_info{...}                       swim_stream_zmq_dropped_messages_total
    swim_stream_capture_gaps_total
    swim_stream_trial_active{arena} (1/0)              swim_stream_trial_elapsed_seconds{arena}
    swim_stream_trial_complete{arena} (last trial, 1/0) swim_stream_trials_finished_total{arena}
    swim_stream_bin_immobile_seconds{arena} (current bin) swim_stream_bin_index{arena} (1-based)
    swim_stream_last_decision_timestamp_seconds{arena} (Unix time: alert on staleness)
    swim_stream_model_fps (the rate the model must keep up with)
    swim_stream_frames_missing_ratio{arena} (share of the trial's frames missing: > 0.05 is not a complete test)
    swim_stream_out_of_depth{arena} (1: the last trial's input or predictions look foreign to the model)
    swim_stream_stride_frames (the model runs on every n-th frame now; raised when the pipeline is behind)

The ``camera`` label is the source (``camera0``, a stream's host and path without credentials, a
video's file name). Every labelled series a panel shows is created at 0 when a source starts
(``start_source``), so a dashboard shows 0, not "No data", before the first event.

Each ``Metrics`` has its own ``CollectorRegistry``: the global one would make a second instance in
the same process (every test) fail with "duplicated timeseries".

``frames_captured`` and ``frames_dropped`` carry labels with defaults, so ``metrics.frames_captured
.inc()`` counts for the default camera and ``.labels(camera="1").inc()`` for a named one;
``frames_dropped.inc()`` counts a whole frame (``arena="all"``) with ``reason="unspecified"``.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from stream.decisions import Decision
from stream.errors import UserError
from stream.network import is_loopback_host, warn_if_exposed
from stream.outputs.base import FrameEvent, GapEvent, Output, Status

__all__ = ["DEFAULT_METRICS_PORT", "Metrics", "camera_label"]

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9108  # issue 7 default; not one of the well-known exporter ports (9100 node, 9090 server)
PREFIX = "swim_stream"
# Capture-to-decision includes the 7-frame look-ahead (0.47 s at 15 fps), so the buckets run to 10 s.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Flow and model time per batch: ~1 ms on a GPU to ~1 s on a slow CPU.
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DEFAULT_CAMERA_LABEL = "main"  # one stream-run watches one camera; the label is for merged dashboards
WHOLE_FRAME_ARENA_LABEL = "all"  # a frame dropped before the arenas are cut out is lost for all of them
DEFAULT_DROP_REASON = "unspecified"


def camera_label(kind: str, location: str) -> str:
    """A source as a label value: never a URL's user name or password."""
    if kind == "camera":
        return f"camera{location}"
    if kind == "url":
        parts = urlsplit(location)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{host}{port}{parts.path}" or location.split("@")[-1]
    return location.replace("\\", "/").rsplit("/", 1)[-1]


class _WithDefaults:
    """A labelled metric usable without ``.labels()``: missing label values take defaults."""

    def __init__(self, metric: Any, defaults: dict[str, str]) -> None:
        self._metric = metric
        self._defaults = defaults

    def labels(self, *values: str, **kwargs: str) -> Any:
        if values:
            return self._metric.labels(*values)
        return self._metric.labels(**{**self._defaults, **kwargs})

    def __getattr__(self, name: str) -> Any:  # inc, set, observe, ... on the default child
        return getattr(self.labels(), name)


class Metrics(Output):
    """The recognizer's metrics; ``port=None`` keeps them in memory only (tests, offline runs).

    An ``Output``: frames, model calls, decisions, gaps and statuses update the metrics.
    ``frame_period_s`` (1 / model fps) turns one decision into seconds of behaviour; ``zmq_dropped_count``
    reads the publisher's drop count at each status.
    """

    def __init__(self, port: int | None = DEFAULT_METRICS_PORT, *, addr: str = "127.0.0.1",
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.frames_captured = _WithDefaults(
            Counter(f"{PREFIX}_frames_captured", "Frames read from the camera or video.", ["camera"], registry=r),
            {"camera": DEFAULT_CAMERA_LABEL},
        )
        self.frames_processed = Counter(
            f"{PREFIX}_frames_processed", "Frames that went through flow and the model.", registry=r)
        self.frames_dropped = _WithDefaults(
            Counter(f"{PREFIX}_frames_dropped", "Frames dropped before classification.", ["arena", "reason"],
                    registry=r),
            {"arena": WHOLE_FRAME_ARENA_LABEL, "reason": DEFAULT_DROP_REASON},
        )
        self.behaviour_seconds = Counter(
            f"{PREFIX}_behaviour_seconds", "Seconds classified as each behaviour.", ["arena", "behaviour"],
            registry=r)
        self.immobile_seconds = Gauge(
            f"{PREFIX}_immobile_seconds", "Immobile seconds in the test so far (bouts only).", ["arena"], registry=r)
        self.immobility_bouts = Gauge(
            f"{PREFIX}_immobility_bouts", "Immobility bouts in the test so far.", ["arena"], registry=r)
        self.scoring_window_immobile_seconds = Gauge(
            f"{PREFIX}_scoring_window_immobile_seconds", "Immobile seconds inside the scoring window.", ["arena"],
            registry=r)
        self.current_behaviour = Gauge(
            f"{PREFIX}_current_behaviour", "1 for the arena's current behaviour, 0 for the others.",
            ["arena", "behaviour"], registry=r)
        self.fps = Gauge(f"{PREFIX}_fps", "Frames processed per second, recent average.", registry=r)
        self.latency_seconds = Histogram(
            f"{PREFIX}_capture_to_decision_seconds", "Time from frame capture to its decision.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.flow_seconds = Histogram(
            f"{PREFIX}_flow_seconds", "Optical flow time per batch.", buckets=STAGE_BUCKETS_S, registry=r)
        self.model_seconds = Histogram(
            f"{PREFIX}_model_seconds", "Model inference time per batch.", buckets=STAGE_BUCKETS_S, registry=r)
        self.engine_info = Info(f"{PREFIX}_engine", "Inference engine, device and model.", registry=r)
        self.zmq_dropped = Counter(
            f"{PREFIX}_zmq_dropped_messages",
            "ZeroMQ messages refused for every subscriber (a slow subscriber's own losses it counts from seq).",
            registry=r)
        self.capture_gaps = Counter(
            f"{PREFIX}_capture_gaps", "Camera outages (reconnections).", registry=r)
        self.trial_active = Gauge(f"{PREFIX}_trial_active", "1 while the arena runs a trial.", ["arena"], registry=r)
        self.trial_elapsed_seconds = Gauge(
            f"{PREFIX}_trial_elapsed_seconds", "Seconds of the running trial decided so far.", ["arena"], registry=r)
        self.trial_complete = Gauge(
            f"{PREFIX}_trial_complete", "1 when the arena's last trial ran its full duration.", ["arena"], registry=r)
        self.trials_finished = Counter(
            f"{PREFIX}_trials_finished", "Trials ended (complete or not).", ["arena"], registry=r)
        self.bin_immobile_seconds = Gauge(
            f"{PREFIX}_bin_immobile_seconds", "Immobile seconds in the current time bin of the trial.", ["arena"],
            registry=r)
        self.bin_index = Gauge(f"{PREFIX}_bin_index", "The current time bin of the trial (1 = first minute).",
                               ["arena"], registry=r)
        self.last_decision_timestamp = Gauge(
            f"{PREFIX}_last_decision_timestamp_seconds", "Unix time of the arena's last decision.", ["arena"],
            registry=r)
        self.model_fps = Gauge(f"{PREFIX}_model_fps", "Frame rate the model runs at (real time).", registry=r)
        self.frames_missing_ratio = Gauge(
            f"{PREFIX}_frames_missing_ratio",
            "Share of the trial's frames missing (dropped or lost); above 0.05 the trial is not a complete test.",
            ["arena"], registry=r)
        self.out_of_depth = Gauge(
            f"{PREFIX}_out_of_depth",
            "1 when the arena's last trial looked foreign to the model (near-constant predictions, input far "
            "outside the training range; stream.input_check).", ["arena"], registry=r)
        self.stride_frames = Gauge(
            f"{PREFIX}_stride_frames", "The model runs on every n-th frame now (raised when the pipeline is behind).",
            registry=r)
        self.camera = DEFAULT_CAMERA_LABEL
        self._behaviours: dict[str, set[str]] = {}
        self.frame_period_s: float | None = None  # set by the run once the model's fps is known
        self.zmq_dropped_count: Any = None  # () -> int, the publisher's dropped messages so far
        self._reported_captured = 0
        self._reported_zmq_dropped = 0
        self._server = None
        self._thread = None
        self.port: int | None = None
        if port is not None:
            try:
                self._server, self._thread = start_http_server(port, addr=addr, registry=r)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UserError(
                        f"metrics port {addr}:{port} is already in use; stop the other program or choose another port"
                    ) from exc
                raise UserError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
            self.port = self._server.server_address[1]
            log.info("metrics on http://%s:%d/metrics", addr, self.port)
            warn_if_exposed("metrics server", f"{addr}:{self.port}", is_loopback_host(addr))

    def start_source(self, camera: str, arenas: list[str], classes: list[str]) -> None:
        """A source starts: its camera label, and every series a panel shows, at 0."""
        self.camera = camera
        self._reported_captured = 0
        self.frames_captured.labels(camera=camera).inc(0)
        self.frames_dropped.labels(reason="queue_full").inc(0)
        for arena in arenas:
            for behaviour in classes:  # (current_behaviour stays absent until the first decision: one-hot or nothing)
                self.behaviour_seconds.labels(arena=arena, behaviour=behaviour).inc(0)
            for gauge in (self.immobile_seconds, self.immobility_bouts, self.scoring_window_immobile_seconds,
                          self.trial_active, self.trial_elapsed_seconds, self.trial_complete, self.bin_immobile_seconds,
                          self.bin_index, self.frames_missing_ratio, self.out_of_depth):
                gauge.labels(arena=arena).set(0)
            self.trials_finished.labels(arena=arena).inc(0)

    # -- Output ---------------------------------------------------------------------------------
    def on_trial_start(self, trial) -> None:
        a = trial.arena_id
        self.trial_active.labels(arena=a).set(1)
        self.trial_elapsed_seconds.labels(arena=a).set(0)
        self.trial_complete.labels(arena=a).set(0)
        for gauge in (self.immobile_seconds, self.immobility_bouts, self.scoring_window_immobile_seconds,
                      self.bin_immobile_seconds, self.frames_missing_ratio):
            gauge.labels(arena=a).set(0)
        self.bin_index.labels(arena=a).set(1)

    def on_trial_end(self, trial, summary) -> None:
        a = trial.arena_id
        self.trial_active.labels(arena=a).set(0)
        counters = summary.counters
        self.out_of_depth.labels(arena=a).set(1 if (summary.input_check or {}).get("warnings") else 0)
        self.trial_complete.labels(arena=a).set(1 if counters.test_complete else 0)
        self.frames_missing_ratio.labels(arena=a).set(counters.missing_share)
        self.trials_finished.labels(arena=a).inc()

    def on_frame(self, frame: FrameEvent) -> None:
        self.flow_seconds.observe(frame.flow_s)
        self.frames_processed.inc()

    def on_model(self, seconds: float) -> None:
        self.model_seconds.observe(seconds)

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        if latency_s is not None:
            self.latency_seconds.observe(latency_s)
        if self.frame_period_s is not None:
            self.observe_decision(arena_id, decision, self.frame_period_s)
            self.trial_elapsed_seconds.labels(arena=arena_id).set(decision.timestamp_s + self.frame_period_s)
        self.last_decision_timestamp.labels(arena=arena_id).set(time.time())
        current = decision.counters.current_bin() if decision.counters is not None else None
        if current is not None:
            self.bin_immobile_seconds.labels(arena=arena_id).set(current.immobile_s)
            self.bin_index.labels(arena=arena_id).set(decision.counters.bins.index(current) + 1)

    def on_gap(self, gap: GapEvent) -> None:
        self.capture_gaps.inc()
        if gap.dropped:
            self.frames_dropped.labels(reason="queue_full").inc(gap.frames_missing)

    def on_status(self, status: Status) -> None:
        """Sampled values: frames read from the source, fps, ZeroMQ drops."""
        if status.frames_captured > self._reported_captured:
            self.frames_captured.labels(camera=self.camera).inc(status.frames_captured - self._reported_captured)
            self._reported_captured = status.frames_captured
        self.fps.set(status.fps)
        self.stride_frames.set(status.stride_frames)
        for arena, counters in status.arenas.items():
            if counters is not None:
                self.frames_missing_ratio.labels(arena=arena).set(counters.missing_share)
        if self.zmq_dropped_count is not None:
            dropped = int(self.zmq_dropped_count())
            if dropped > self._reported_zmq_dropped:
                self.zmq_dropped.inc(dropped - self._reported_zmq_dropped)
                self._reported_zmq_dropped = dropped
        if status.final:
            self._reported_captured = 0  # the next source counts its frames from 0 again

    def observe_decision(self, arena_id: str, decision: Decision, frame_period_s: float) -> None:
        """Account one decision: its frame's seconds, the current behaviour, the counters' gauges.

        ``frames_processed`` is not touched: the pipeline counts frames, not decisions.
        """
        self.behaviour_seconds.labels(arena=arena_id, behaviour=decision.behaviour).inc(frame_period_s)
        known = self._behaviours.setdefault(arena_id, set())
        known.update(decision.probabilities)
        known.add(decision.behaviour)
        for behaviour in known:
            value = 1.0 if behaviour == decision.behaviour else 0.0
            self.current_behaviour.labels(arena=arena_id, behaviour=behaviour).set(value)
        c = decision.counters
        if c is not None:
            self.immobile_seconds.labels(arena=arena_id).set(c.immobile_s)
            self.immobility_bouts.labels(arena=arena_id).set(c.immobility_bouts)
            self.scoring_window_immobile_seconds.labels(arena=arena_id).set(c.scoring_window.immobile_s)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = None

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

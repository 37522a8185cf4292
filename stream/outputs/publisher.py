"""ZeroMQ publisher of per-frame decisions and end-of-test summaries; it never blocks the pipeline.

One multipart message per decision: ``[topic = arena id, body = JSON]``; the body is versioned
(``"schema": SCHEMA_VERSION``) so a subscriber can refuse what it does not understand::

    {"schema": 1, "type": "frame", "arena": "A", "seq": 42, "frame_index": 42, "timestamp_s": 2.8,
     "behaviour": "float", "immobile": true, "probabilities": {...}, "counters": {...}}
    {"schema": 1, "type": "summary", "arena": "A", "seq": 901, "arena_id": "A", "counters": {...}, ...}

Why each subscriber loses only its own messages: the socket is an XPUB *without* ``XPUB_NODROP``.
ZeroMQ keeps one queue per subscriber (``hwm`` messages on each side); when a subscriber stops
reading (``stream-watch`` suspended with Ctrl-Z, a frozen dashboard), its queue fills and further
messages are discarded for that subscriber alone, while everyone else keeps getting everything.
(With ``XPUB_NODROP`` one stalled subscriber made every send fail, which starved all the others.)
The publisher cannot see those per-subscriber drops, so every message carries ``seq``, a counter
per arena that goes up by one with each message of that arena: a subscriber counts its own losses
from the gaps (``SequenceGaps``; ``stream-watch`` shows them). ``Publisher.dropped`` counts only
messages ZeroMQ refused outright, which does not happen with a plain XPUB.

Every socket that receives caps the size of what it accepts (``ZMQ_MAXMSGSIZE``): a peer on the
network that sends a gigabyte is disconnected instead of filling our memory.

Late joiners miss what was published before they connected (ZeroMQ's "slow joiner"); they can ask
the optional state endpoint (REP socket, served by a small thread) for the latest counters of every
arena: send ``b"counters"``, receive ``{"schema": 1, "type": "counters", "arenas": {id: counters},
"finished": [ids that sent their summary]}``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import zmq

from stream.decisions import Decision
from stream.errors import UserError
from stream.network import bind_zmq
from stream.outputs.base import Output
from stream.trial_files import json_default
from stream.trial_summary import TrialSummary, as_summary

__all__ = [
    "DEFAULT_ENDPOINT",
    "SCHEMA_VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "STATE_REQUEST",
    "Publisher",
    "SequenceGaps",
    "decision_message",
    "summary_message",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # loopback only: the lab network gets it through a deliberate flag
DEFAULT_HWM = 1000  # ~1 min of one arena at 15 fps, a few seconds at full speed: enough to ride out a hiccup
STATE_REQUEST = b"counters"
# What our receiving sockets accept (ZMQ_MAXMSGSIZE); a larger message disconnects its sender.
# Subscription notices and state requests are a topic or b"counters": a few bytes; 1 KiB is ample.
MAX_REQUEST_BYTES = 1024
# Messages a subscriber receives: a frame is < 1 kB, a summary with per-minute bins a few kB, the
# state reply one counters dict per arena; 1 MiB leaves room for hundreds of arenas.
MAX_MESSAGE_BYTES = 1 << 20
# The state thread wakes this often to notice close(); shorter only burns CPU for nothing.
_STATE_POLL_MS = 100


def decision_message(arena_id: str, decision: Decision) -> dict[str, Any]:
    current = decision.counters.current_bin() if decision.counters is not None else None
    return {
        "schema": SCHEMA_VERSION,
        "type": "frame",
        "arena": arena_id,
        "frame_index": int(decision.frame_index),
        "timestamp_s": float(decision.timestamp_s),
        "behaviour": decision.behaviour,
        "immobile": bool(decision.immobile),
        "probabilities": {k: float(v) for k, v in decision.probabilities.items()},
        "counters": decision.counters.to_json() if decision.counters is not None else {},
        "bin": current.to_json() if current is not None else None,  # the bin this frame lies in
    }


def summary_message(arena_id: str, summary: TrialSummary | Mapping[str, Any]) -> dict[str, Any]:
    """The ZeroMQ summary message: the summary JSON (``TrialSummary.to_json``) with the envelope."""
    return {**as_summary(summary).to_json(), "schema": SCHEMA_VERSION, "type": "summary", "arena": arena_id}


class SequenceGaps:
    """A subscriber's count of the messages it lost, from the per-arena ``seq`` of each message.

    The first message of an arena sets the start (a late joiner has lost nothing); after that every
    skipped ``seq`` is one message this subscriber did not get. A ``seq`` that goes backwards means
    the recognizer restarted: counting starts again from there.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.lost: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.lost.values())

    def update(self, arena_id: str, seq: object) -> int:
        """Take one message's ``seq``; returns how many messages of this arena were lost before it."""
        if isinstance(seq, bool) or not isinstance(seq, int):
            return 0  # an older publisher without seq: nothing can be counted
        last = self._last.get(arena_id)
        self._last[arena_id] = seq
        if last is None or seq <= last:
            return 0
        missed = seq - last - 1
        if missed:
            self.lost[arena_id] = self.lost.get(arena_id, 0) + missed
        return missed


def _bind(socket: zmq.Socket, endpoint: str, what: str) -> None:
    bind_zmq(socket, endpoint, what, DEFAULT_ENDPOINT)


class Publisher(Output):
    """Publishes decisions and summaries; ``publish`` never waits for a subscriber.

    An ``Output``: every decision is published, and a trial's summary when it ends. ``skip_through``
    (arena id -> frame index) leaves out frames an earlier run already published (``--resume``).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        hwm: int = DEFAULT_HWM,
        state_endpoint: str | None = None,
    ) -> None:
        if hwm < 1:
            raise UserError(f"ZeroMQ high-water mark must be >= 1 message, got {hwm}")
        self.endpoint = endpoint
        self.state_endpoint = state_endpoint
        self._dropped = 0
        self._sent = 0
        self._subscriptions = 0
        self._seq: dict[str, int] = {}  # next seq per arena; only the pipeline thread sends
        self._lock = threading.Lock()  # guards the latest counters shared with the state thread
        self._latest: dict[str, dict] = {}
        self._finished: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: zmq.Socket | None = None
        self._closed = False
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.SNDHWM, hwm)  # per subscriber; beyond it that subscriber loses messages
        self._pub.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # it receives subscription notices
        self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber's subscription, not only the first
        self._pub.setsockopt(zmq.LINGER, 0)
        try:
            _bind(self._pub, endpoint, "ZeroMQ endpoint")
            if state_endpoint is not None:
                self._state = self._ctx.socket(zmq.REP)
                self._state.setsockopt(zmq.LINGER, 0)
                self._state.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
                _bind(self._state, state_endpoint, "ZeroMQ state endpoint")
        except BaseException:
            self._close_sockets()
            raise
        # read before the state thread owns its socket: ZeroMQ sockets are not thread-safe
        self.skip_through: dict[str, int] = {}
        self._trial_ids: dict[str, str] = {}
        self._bound_state = None if self._state is None else self._state.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._state is not None:
            self._thread = threading.Thread(target=self._serve_state, name="zmq-state", daemon=True)
            self._thread.start()
        log.info("publishing on %s%s", endpoint, f", state on {state_endpoint}" if state_endpoint else "")

    @property
    def dropped(self) -> int:
        """Messages ZeroMQ refused for every subscriber at once (not expected with a plain XPUB).

        A slow subscriber's own losses are not visible here: it counts them from ``seq``.
        """
        return self._dropped

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def subscriptions_seen(self) -> int:
        """Subscriptions received so far (one per subscriber and topic): lets a caller wait for a subscriber."""
        if not self._closed:
            self._drain_subscriptions()
        return self._subscriptions

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (resolves a ``tcp://127.0.0.1:*`` wildcard port)."""
        return self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def bound_state_endpoint(self) -> str | None:
        """The state endpoint actually bound, or None without one."""
        return self._bound_state

    # -- Output ---------------------------------------------------------------------------------
    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        done = self.skip_through.get(arena_id)
        if done is not None and decision.frame_index <= done:
            return
        self.publish(arena_id, decision)

    def on_trial_start(self, trial) -> None:
        self._trial_ids[trial.arena_id] = trial.trial_id
        with self._lock:
            if trial.arena_id in self._finished:
                self._finished.remove(trial.arena_id)

    def on_trial_end(self, trial, summary: TrialSummary) -> None:
        self.publish_summary(trial.arena_id, summary)

    def state_reply(self) -> dict:
        """The latest counters of every arena (the state request of late joiners)."""
        with self._lock:
            return {"schema": SCHEMA_VERSION, "type": "counters", "arenas": dict(self._latest),
                    "finished": list(self._finished)}

    # -- publishing -------------------------------------------------------------------------------
    def publish(self, arena_id: str, decision: Decision) -> None:
        message = decision_message(arena_id, decision)
        if arena_id in self._trial_ids:
            message["trial_id"] = self._trial_ids[arena_id]
        with self._lock:
            self._latest[arena_id] = message["counters"]
        self._send(arena_id, message)

    def publish_summary(self, arena_id: str, summary: TrialSummary | Mapping[str, Any]) -> None:
        with self._lock:
            self._latest[arena_id] = as_summary(summary).counters.to_json()
            if arena_id not in self._finished:
                self._finished.append(arena_id)
        if not self._send(arena_id, summary_message(arena_id, summary)):
            log.warning("summary of arena %s could not be published", arena_id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._close_sockets()
        if self._dropped:
            log.warning("%d ZeroMQ messages dropped (slow subscriber)", self._dropped)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _send(self, arena_id: str, body: dict) -> bool:
        if self._closed:
            raise ValueError("publisher is closed")
        self._drain_subscriptions()
        seq = self._seq.get(arena_id, 0)
        self._seq[arena_id] = seq + 1  # a refused message leaves a gap too: subscribers count it
        payload = json.dumps({**body, "seq": seq}, default=json_default, separators=(",", ":")).encode()
        try:
            self._pub.send_multipart([arena_id.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._dropped += 1
            return False
        self._sent += 1
        return True

    def _drain_subscriptions(self) -> None:
        """XPUB queues (un)subscription notices for us to read; read them so they never pile up."""
        while True:
            try:
                notice = self._pub.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if notice[:1] == b"\x01":
                self._subscriptions += 1
                log.debug("subscriber joined (topic %r)", notice[1:])

    def _serve_state(self) -> None:
        assert self._state is not None
        poller = zmq.Poller()
        poller.register(self._state, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(_STATE_POLL_MS):
                continue
            try:
                request = self._state.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                continue
            if request.strip() == STATE_REQUEST:
                reply = self.state_reply()
            else:
                reply = {"schema": SCHEMA_VERSION, "type": "error",
                         "error": f"unknown request {request[:40]!r}; send {STATE_REQUEST!r}"}
            try:
                self._state.send(json.dumps(reply, default=json_default).encode())
            except zmq.ZMQError:
                log.debug("state reply failed", exc_info=True)

    def _close_sockets(self) -> None:
        for sock in (self._pub, self._state):
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()

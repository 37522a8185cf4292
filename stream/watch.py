"""``stream-watch``: live per-arena counters of a running ``stream-run``, in the terminal.

Subscribes to the recognizer's ZeroMQ messages (see ``stream.outputs.publisher``). On a terminal it
redraws a compact table; otherwise (a pipe, a log file) it prints plain lines, at most one per arena
per ``--interval-s``, and every summary. With ``--state-endpoint`` it first asks the recognizer for
the current counters, so a watcher started mid-test shows them at once. It exits when every arena it
follows has sent its end-of-test summary, after ``--count`` messages, on Ctrl-C, or (status 1) when
nothing arrives for ``--timeout-s``.

A watcher that cannot keep up (a slow terminal, a suspended ``stream-watch``) loses messages of its
own, never anybody else's: it counts them from the messages' ``seq`` and shows them in the LOST
column (plain lines: ``lost=N``) and once more on exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import zmq

from stream.counters import Counters, WindowCounts
from stream.errors import UserError, cli_main
from stream.outputs.publisher import DEFAULT_ENDPOINT, MAX_MESSAGE_BYTES, SCHEMA_VERSION, STATE_REQUEST, SequenceGaps
from stream.version import add_version_argument

__all__ = ["ArenaView", "fetch_state", "format_line", "format_summary", "format_table", "main"]

log = logging.getLogger("stream-watch")

STATE_TIMEOUT_S = 2.0  # a recognizer answers in milliseconds; longer means it is not there (yet)
TTY_REFRESH_S = 0.5  # twice a second is live enough for seconds-scale counters without flicker
PLAIN_INTERVAL_S = 1.0  # one line per arena per second keeps a log readable at 15-120 fps
_POLL_MS = 100  # wake-up period to redraw and check the timeout
_CLEAR = "\x1b[H\x1b[J"  # ANSI: cursor home, clear to end of screen


@dataclass
class ArenaView:
    """What the watcher knows about one arena."""

    arena: str
    frame_index: int | None = None
    timestamp_s: float | None = None
    behaviour: str = "-"
    counters: Counters | None = None  # None until a message carried them
    finished: bool = False
    last_printed_s: float = float("-inf")
    lost: int = 0  # messages this watcher missed (gaps in seq): it was too slow or suspended


def _fmt_s(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _counters(d: Any) -> Counters | None:
    """Counters from a message's JSON (the edge); None for none or a malformed block (logged)."""
    if not d or not isinstance(d, Mapping):
        return None
    try:
        return Counters.from_json(d)
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring counters that are not swim-stream's: %.200s", d)
        return None


def _part(x: Counters | WindowCounts | None, name: str) -> Any:
    """An attribute of counters not received yet reads as "-" (None for the seconds)."""
    return getattr(x, name) if x is not None else None


def format_line(view: ArenaView) -> str:
    c = view.counters
    w = c.scoring_window if c is not None else None
    bouts, w_bouts = _part(c, "immobility_bouts"), _part(w, "immobility_bouts")
    return (
        f"arena {view.arena} frame {view.frame_index if view.frame_index is not None else '-'} "
        f"t={_fmt_s(view.timestamp_s)}s behaviour={view.behaviour} "
        f"immobile={_fmt_s(_part(c, 'immobile_s'))}s bouts={'-' if bouts is None else bouts} "
        f"latency={_fmt_s(_part(c, 'latency_to_first_bout_s'))}s | "
        f"window immobile={_fmt_s(_part(w, 'immobile_s'))}s bouts={'-' if w_bouts is None else w_bouts} "
        f"latency={_fmt_s(_part(w, 'latency_to_first_bout_s'))}s | gaps={c.gaps.count if c is not None else 0}"
        + (f" lost={view.lost}" if view.lost else "")
    )


def format_summary(view: ArenaView) -> str:
    c = view.counters
    if c is None:
        return f"arena {view.arena} summary: no counters received"
    w, g = c.scoring_window, c.gaps
    return (
        f"arena {view.arena} summary: immobile {_fmt_s(c.immobile_s)} s in "
        f"{c.immobility_bouts} bouts, latency {_fmt_s(c.latency_to_first_bout_s)} s; "
        f"scoring window {_fmt_s(w.start_s)}-{_fmt_s(w.end_s)} s: immobile "
        f"{_fmt_s(w.immobile_s)} s in {w.immobility_bouts} bouts, latency "
        f"{_fmt_s(w.latency_to_first_bout_s)} s; frames {c.frames_classified}, "
        f"gaps {g.count} ({_fmt_s(g.seconds_missing)} s)"
    )


_COLUMNS = ("ARENA", "FRAME", "TIME_S", "BEHAVIOUR", "IMMOBILE_S", "BOUTS", "LATENCY_S",
            "WIN_IMMOBILE_S", "WIN_BOUTS", "WIN_LATENCY_S", "GAPS", "LOST", "STATE")


def format_table(views: dict[str, ArenaView]) -> list[str]:
    rows = [_COLUMNS]
    for view in views.values():
        c = view.counters
        w = c.scoring_window if c is not None else None
        rows.append((
            view.arena,
            "-" if view.frame_index is None else str(view.frame_index),
            _fmt_s(view.timestamp_s),
            view.behaviour,
            _fmt_s(_part(c, "immobile_s")),
            "-" if c is None else str(c.immobility_bouts),
            _fmt_s(_part(c, "latency_to_first_bout_s")),
            _fmt_s(_part(w, "immobile_s")),
            "-" if w is None else str(w.immobility_bouts),
            _fmt_s(_part(w, "latency_to_first_bout_s")),
            str(c.gaps.count if c is not None else 0),
            str(view.lost),
            "done" if view.finished else "live",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def fetch_state(ctx: zmq.Context, endpoint: str, timeout_s: float = STATE_TIMEOUT_S) -> dict | None:
    """Ask the recognizer's state endpoint for the current counters; None when it does not answer."""
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    try:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise UserError(f"bad state endpoint {endpoint}: {exc.strerror}; use e.g. tcp://127.0.0.1:5556") from exc
        sock.send(STATE_REQUEST)
        if not sock.poll(int(timeout_s * 1000)):
            log.warning("no answer from state endpoint %s within %.1f s", endpoint, timeout_s)
            return None
        reply = json.loads(sock.recv())
    except (ValueError, UnicodeDecodeError):
        log.warning("state endpoint %s sent something that is not JSON", endpoint)
        return None
    finally:
        sock.close(linger=0)
    if not isinstance(reply, dict) or reply.get("type") != "counters":
        log.warning("state endpoint %s answered %r", endpoint, reply)
        return None
    return reply


class _Watcher:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.tty = out.isatty()
        interval = args.interval_s
        self.interval_s = interval if interval is not None else (TTY_REFRESH_S if self.tty else PLAIN_INTERVAL_S)
        self.only = set(args.arena or [])
        self.views: dict[str, ArenaView] = {a: ArenaView(a) for a in sorted(self.only)}
        self.received = 0
        self._last_draw = float("-inf")
        self._warned_schema = False
        self.gaps = SequenceGaps()

    def wanted(self, arena: str) -> bool:
        return not self.only or arena in self.only

    def view(self, arena: str) -> ArenaView:
        if arena not in self.views:
            self.views[arena] = ArenaView(arena)
        return self.views[arena]

    def all_finished(self) -> bool:
        return bool(self.views) and all(v.finished for v in self.views.values())

    def apply_state(self, state: dict) -> None:
        finished = set(state.get("finished") or [])
        for arena, counters in (state.get("arenas") or {}).items():
            if self.wanted(arena):
                v = self.view(arena)
                v.counters = _counters(counters)
                v.timestamp_s = v.counters.last_timestamp_s if v.counters is not None else None
                v.finished = arena in finished
        self.emit(force=True)

    def handle(self, frames: list[bytes]) -> bool:
        """Take one message; True if it was for us."""
        if len(frames) != 2:
            log.warning("ignoring a message of %d parts (expected topic + body)", len(frames))
            return False
        topic = frames[0].decode("utf-8", errors="replace")
        if not self.wanted(topic):
            return False  # a prefix match of the subscription ("A" also matches "A2")
        try:
            body = json.loads(frames[1])
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring a message for arena %s that is not JSON", topic)
            return False
        if not isinstance(body, dict):
            return False
        if body.get("schema") != SCHEMA_VERSION and not self._warned_schema:
            self._warned_schema = True
            log.warning("messages have schema %r, this stream-watch reads schema %d", body.get("schema"),
                        SCHEMA_VERSION)
        v = self.view(topic)
        if self.gaps.update(topic, body.get("seq")):
            v.lost = self.gaps.lost[topic]
        v.counters = _counters(body.get("counters")) or v.counters
        if body.get("type") == "summary":
            v.finished = True
            if v.counters is not None:
                v.timestamp_s = v.counters.last_timestamp_s
            if not self.tty:
                print(format_summary(v), file=self.out, flush=True)
        else:
            v.frame_index = body.get("frame_index")
            v.timestamp_s = body.get("timestamp_s")
            v.behaviour = str(body.get("behaviour", "-"))
            if not self.tty:
                now = time.monotonic()
                if now - v.last_printed_s >= self.interval_s:
                    v.last_printed_s = now
                    print(format_line(v), file=self.out, flush=True)
        self.received += 1
        return True

    def emit(self, *, force: bool = False) -> None:
        """Redraw the table (TTY) or print every arena's line (plain, on force)."""
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_draw >= self.interval_s:
                self._last_draw = now
                self.out.write(_CLEAR + "\n".join(format_table(self.views)) + "\n")
                self.out.flush()
        elif force:
            for v in self.views.values():
                if v.counters or v.frame_index is not None:
                    print(format_summary(v) if v.finished else format_line(v), file=self.out, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-watch", description=__doc__.splitlines()[0])
    add_version_argument(p)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"stream-run's ZeroMQ PUB endpoint ({DEFAULT_ENDPOINT})")
    p.add_argument("--state-endpoint", help="stream-run's state endpoint, asked for the current counters at start")
    p.add_argument("--arena", action="append", metavar="ID", help="follow only this arena (repeat for several)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true",
                      help="show the current counters once (from the state endpoint, else the first message) and exit")
    stop.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--timeout-s", type=float, metavar="S", help="give up (exit 1) when nothing arrives for S seconds")
    p.add_argument("--interval-s", type=float, metavar="S",
                   help=f"refresh period: table {TTY_REFRESH_S} s, plain lines per arena {PLAIN_INTERVAL_S} s")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@cli_main("stream-watch")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.count is not None and args.count < 1:
        raise UserError(f"--count must be >= 1, got {args.count}")
    if args.timeout_s is not None and args.timeout_s <= 0:
        raise UserError(f"--timeout-s must be > 0, got {args.timeout_s}")
    if args.interval_s is not None and args.interval_s < 0:
        raise UserError(f"--interval-s must be >= 0, got {args.interval_s}")
    watcher = _Watcher(args, sys.stdout)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    try:
        try:
            sub.connect(args.endpoint)
        except zmq.ZMQError as exc:
            raise UserError(f"bad endpoint {args.endpoint}: {exc.strerror}; use e.g. {DEFAULT_ENDPOINT}") from exc
        for topic in (sorted(watcher.only) or [""]):
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if args.state_endpoint:
            state = fetch_state(ctx, args.state_endpoint)
            if state is not None:
                watcher.apply_state(state)
                if args.once and watcher.views:
                    return 0
                if watcher.all_finished():
                    return 0
        limit = 1 if args.once else args.count
        last_message = time.monotonic()
        try:
            while True:
                if sub.poll(_POLL_MS):
                    if watcher.handle(sub.recv_multipart()):
                        last_message = time.monotonic()
                        if limit is not None and watcher.received >= limit:
                            watcher.emit(force=watcher.tty)
                            return 0
                        if watcher.all_finished():
                            watcher.emit(force=watcher.tty)
                            return 0
                if args.timeout_s is not None and time.monotonic() - last_message >= args.timeout_s:
                    print(f"stream-watch: nothing from {args.endpoint} for {args.timeout_s:g} s", file=sys.stderr)
                    return 1
                watcher.emit()
        except KeyboardInterrupt:
            watcher.emit(force=True)
            return 0
    finally:
        if watcher.gaps.total:
            print(f"stream-watch: lost {watcher.gaps.total} messages (this watcher read too slowly or was "
                  "suspended; other subscribers were not affected)", file=sys.stderr)
        sub.close(linger=0)
        ctx.term()

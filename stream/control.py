"""The control endpoint of a running ``stream-run``, and ``stream-ctl``, its command-line client.

A ZeroMQ REP socket served by a small thread. Requests are JSON objects, every reply is a JSON
object with ``"ok"``; a bad request gets ``{"ok": false, "error": "..."}``, never silence::

    stream-ctl start --arena A1 --animal M17 --group saline   {"cmd": "start", "arena": "A1", ...}
    stream-ctl stop --arena A1                                {"cmd": "stop", "arena": "A1"}
    stream-ctl status                                         {"cmd": "status"}

The old state request ``b"counters"`` (``stream-watch``, late joiners) is still answered (not
when a token is required: it cannot carry one).

Why it is safe to leave on: it binds to loopback by default (``tcp://127.0.0.1:5556``), and beyond
loopback ``stream-run`` requires a token (``stream.control_token``: every request carries
``"token"``) or ``--allow-remote-control``; a message larger than ``MAX_MESSAGE_BYTES`` is refused
by ZeroMQ itself (``ZMQ_MAXMSGSIZE`` drops the peer) before it reaches us; starts and stops are
applied by the pipeline thread between frames, never from this thread. Whatever a request holds
(JSON nested too deeply to parse, a handler that fails), it gets an ``ok: false`` reply with the
reason and the thread serves the next one: one request never ends the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from stream.control_token import check_token, read_token
from stream.errors import UserError, cli_main
from stream.network import bind_zmq
from stream.version import add_version_argument

__all__ = ["DEFAULT_CONTROL_ENDPOINT", "MAX_MESSAGE_BYTES", "TOKEN_KEY", "ControlServer", "main", "request"]

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5556"  # loopback; the port after the PUB endpoint's 5555
MAX_MESSAGE_BYTES = 4096  # a command is < 200 bytes; anything larger is a mistake or an attack
LEGACY_STATE_REQUEST = b"counters"
_POLL_MS = 100  # the thread wakes this often to notice close()
REQUEST_TIMEOUT_S = 5.0  # stream-ctl gives up on a stream-run that does not answer
EXIT_REFUSED = 1  # stream-ctl: the recognizer answered with an error


TOKEN_KEY = "token"  # the request field that carries the control token
_TOKEN_REFUSED = "wrong or missing token; give stream-ctl --control-token-file FILE (stream-run's token file)"


class ControlServer:
    """Answers requests on ``endpoint`` with ``handler(request dict) -> reply dict`` in its own thread.

    ``legacy_state`` answers the old ``b"counters"`` request (the publisher's latest counters).
    ``token``: when given, every request must carry it (``"token"``), else it is refused unseen.
    """

    def __init__(self, endpoint: str, handler: Callable[[dict], dict],
                 legacy_state: Callable[[], dict] | None = None, *, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.legacy_state = legacy_state
        self._token = token
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            bind_zmq(self._sock, endpoint, "control endpoint", DEFAULT_CONTROL_ENDPOINT)
        except BaseException:
            self._sock.close(linger=0)
            self._ctx.term()
            raise
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control endpoint on %s", self.bound_endpoint)

    def reply_to(self, raw: bytes) -> dict[str, Any]:
        """One request's reply (also callable without a socket, for tests)."""
        if raw.strip() == LEGACY_STATE_REQUEST:
            if self._token is not None:
                return {"ok": False, "error": f"this control endpoint needs a token; {_TOKEN_REFUSED}"}
            if self.legacy_state is None:
                return {"ok": False, "error": "no counters published (stream-run --no-zmq)"}
            return {"ok": True, **self.legacy_state()}
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {"ok": False, "error": 'not JSON; send e.g. {"cmd": "status"}'}
        except RecursionError:
            return {"ok": False, "error": 'JSON nested too deeply; send e.g. {"cmd": "status"}'}
        if not isinstance(request, dict):
            return {"ok": False, "error": 'a request is a JSON object, e.g. {"cmd": "status"}'}
        given = request.pop(TOKEN_KEY, None)  # never handed on, never logged
        if self._token is not None and not check_token(given, self._token):
            log.warning("control request refused: wrong or missing token")
            return {"ok": False, "error": _TOKEN_REFUSED}
        try:
            reply = self.handler(request)
        except UserError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bad command must not kill the service; say what happened
            log.exception("control request %r failed", request)
            return {"ok": False, "error": f"internal error: {exc}"}
        return reply

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(_POLL_MS):
                continue
            try:
                raw = self._sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                log.warning("control endpoint: receive failed", exc_info=True)
                continue
            try:
                self._sock.send(self._answer(raw))
            except zmq.ZMQError:
                log.debug("control reply failed", exc_info=True)

    def _answer(self, raw: bytes) -> bytes:
        """The encoded reply to one request; whatever goes wrong, an ``ok: false`` reply (REP must answer)."""
        try:
            return json.dumps(self.reply_to(raw), default=str).encode()
        except Exception as exc:  # noqa: BLE001 - one request must never end the control loop
            log.exception("control request failed")
            return json.dumps({"ok": False, "error": f"internal error: {type(exc).__name__}"}).encode()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)
        self._ctx.term()


def request(endpoint: str, body: dict | bytes, *, timeout_s: float = REQUEST_TIMEOUT_S,
            token: str | None = None) -> dict:
    """Send one request (with ``token`` when given) and wait for its reply (UserError when nobody answers)."""
    if token is not None and isinstance(body, dict):
        body = {**body, TOKEN_KEY: token}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise UserError(f"bad endpoint {endpoint}: {exc.strerror}; use e.g. {DEFAULT_CONTROL_ENDPOINT}") from exc
        sock.send(body if isinstance(body, bytes) else json.dumps(body).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise UserError(f"no answer from {endpoint} within {timeout_s:g} s; is stream-run running with "
                            "a control endpoint (--control)?")
        return json.loads(sock.recv().decode())
    finally:
        sock.close(linger=0)
        ctx.term()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-ctl", description="start, stop and list trials of a running stream-run")
    add_version_argument(p)
    p.add_argument("--endpoint", default=DEFAULT_CONTROL_ENDPOINT,
                   help="stream-run's control endpoint (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=REQUEST_TIMEOUT_S, help="wait this long for an answer")
    p.add_argument("--control-token-file", "--token-file", type=Path, default=None, metavar="FILE",
                   help="the token file of a stream-run with --control-token-file (needed beyond loopback); "
                        "mode 0600, yours")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a trial in an arena")
    s.add_argument("--arena", required=True)
    s.add_argument("--animal", default="", help="animal ID, e.g. M17")
    s.add_argument("--group", default="", help="treatment group, e.g. saline")
    t = sub.add_parser("stop", help="end an arena's trial now (it is marked incomplete if short)")
    t.add_argument("--arena", required=True)
    sub.add_parser("status", help="every arena's state, trial and elapsed seconds")
    return p


def _print_status(reply: dict) -> None:
    print(f"mode {reply.get('mode', '?')}")
    for arena, st in (reply.get("arenas") or {}).items():
        trial = st.get("trial") or {}
        elapsed = st.get("elapsed_s")
        c = st.get("counters") or {}
        print(f"  {arena}: {st.get('state')}"
              + (f" trial {trial.get('trial_id')} animal {trial.get('animal') or '-'} group {trial.get('group') or '-'}"
                 if trial else "")
              + (f" elapsed {elapsed:.1f} s immobile {c.get('immobile_s', 0.0):.1f} s" if elapsed is not None else ""))


@cli_main("stream-ctl")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.timeout_s > 0:
        raise UserError(f"--timeout-s must be > 0, got {args.timeout_s}")
    body: dict[str, Any] = {"cmd": args.cmd}
    if args.cmd in ("start", "stop"):
        body["arena"] = args.arena
    if args.cmd == "start":
        body.update(animal=args.animal, group=args.group)
    token = read_token(args.control_token_file) if args.control_token_file is not None else None
    reply = request(args.endpoint, body, timeout_s=args.timeout_s, token=token)
    if not reply.get("ok"):
        print(f"stream-ctl: refused: {reply.get('error', reply)}", file=sys.stderr)
        return EXIT_REFUSED
    if args.cmd == "status":
        _print_status(reply)
    else:
        print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())

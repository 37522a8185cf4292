"""The control endpoint: every reply a JSON object, clear errors, bounded messages, stream-ctl's exit codes."""

from __future__ import annotations

import json

import pytest
import zmq

from stream.control import MAX_MESSAGE_BYTES, ControlServer, main, request
from stream.errors import UserError


def handler(req: dict) -> dict:
    if req.get("cmd") == "status":
        return {"ok": True, "mode": "control", "arenas": {"A1": {"state": "waiting", "trial": None,
                                                                  "elapsed_s": None, "counters": None}}}
    if req.get("cmd") == "boom":
        raise RuntimeError("kaput")
    if req.get("cmd") == "user":
        raise UserError("arena A9 does not exist")
    return {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}


@pytest.fixture()
def server():
    srv = ControlServer("tcp://127.0.0.1:*", handler, legacy_state=lambda: {"type": "counters", "arenas": {}})
    yield srv
    srv.close()


def test_replies_are_json_objects_with_clear_errors(server) -> None:
    ep = server.bound_endpoint
    assert request(ep, {"cmd": "status"})["arenas"]["A1"]["state"] == "waiting"
    for body, words in ((b"not json", "not JSON"), (b"[1, 2]", "JSON object"), ({"cmd": "dance"}, "unknown command"),
                        ({"cmd": "boom"}, "internal error: kaput"), ({"cmd": "user"}, "A9")):
        reply = request(ep, body)
        assert reply["ok"] is False and words in reply["error"], (body, reply)
    legacy = request(ep, b"counters")
    assert legacy["ok"] and legacy["type"] == "counters"


def test_an_oversized_message_is_dropped_and_the_server_keeps_serving(server) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.bound_endpoint)
    sock.send(b"x" * (MAX_MESSAGE_BYTES + 1))
    assert not sock.poll(500)  # ZeroMQ disconnected the peer: no reply, no crash
    sock.close()
    ctx.term()
    assert request(server.bound_endpoint, {"cmd": "status"})["ok"]


def test_stream_ctl_prints_status_and_exits_1_when_refused(server, capsys) -> None:
    assert main(["--endpoint", server.bound_endpoint, "status"]) == 0
    assert "A1: waiting" in capsys.readouterr().out
    assert main(["--endpoint", server.bound_endpoint, "stop", "--arena", "A1"]) == 1
    assert "refused" in capsys.readouterr().err


def test_stream_ctl_without_a_server_is_a_one_line_error(capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--endpoint", f"tcp://127.0.0.1:{port}", "--timeout-s", "0.3", "status"]) == 2
    assert "no answer" in capsys.readouterr().err


def test_the_port_in_use_is_a_user_error(server) -> None:
    with pytest.raises(UserError, match="already in use"):
        ControlServer(server.bound_endpoint, handler)
    json.dumps(server.reply_to(b'{"cmd": "status"}'))

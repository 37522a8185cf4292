"""The control endpoint: every reply a JSON object, clear errors, bounded messages, stream-ctl's exit codes."""

from __future__ import annotations

import json
import time

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


# -- issue 24 item 2: one request never kills the service ----------------------------------------------
def _trial_book(tmp_path):
    from stream.decisions import DecisionConfig
    from stream.trials import TrialBook

    config = DecisionConfig(fps=15.0, test_duration_s=4.0, scoring_window_s=2.0, bin_s=1.0)
    return TrialBook(["A1", "A2"], ["swim", "struggle", "float"], config, mode="control", out_dir=tmp_path,
                     source="cam0")


def test_a_300_character_animal_id_is_refused_before_the_reply_and_nothing_starts(tmp_path) -> None:
    book = _trial_book(tmp_path)
    srv = ControlServer("tcp://127.0.0.1:*", book.command)
    try:
        for body, words in (({"cmd": "start", "arena": "A2", "animal": "M" * 300}, "at most 64"),
                            ({"cmd": "start", "arena": "A2", "group": "g" * 65}, "at most 64"),
                            ({"cmd": "start", "arena": "A2", "animal": "M17\n"}, "not allowed"),
                            ({"cmd": "start", "arena": ["A2"]}, "unknown arena"),
                            ({"cmd": "start", "arena": "A2", "animal": 17}, "must be a string")):
            t0 = time.monotonic()
            reply = request(srv.bound_endpoint, body, timeout_s=10)
            assert reply["ok"] is False and words in reply["error"], (body, reply)
            assert time.monotonic() - t0 < 1.0  # refused at once, not queued for the pipeline thread
        book.on_frame(0, 0.0, None, 0)  # a frame: anything queued would be applied now
        assert all(not arena.busy for arena in book.arenas.values())
        assert request(srv.bound_endpoint, {"cmd": "status"})["ok"]
    finally:
        srv.close()


def test_a_trial_id_too_long_for_a_file_name_is_refused() -> None:
    from stream.ids import MAX_TRIAL_ID_CHARS
    from stream.trials import Trial

    Trial(trial_id="A1-t001-" + "M" * 64, arena_id="A1")
    with pytest.raises(UserError, match=f"at most {MAX_TRIAL_ID_CHARS}"):
        Trial(trial_id="A1-t001-" + "M" * 300, arena_id="A1")


def circular_handler(req: dict) -> dict:
    if req.get("cmd") == "circular":
        reply: dict = {"ok": True}
        reply["self"] = reply  # json.dumps raises ValueError (circular reference)
        return reply
    return handler(req)


def test_deeply_nested_json_and_an_unencodable_reply_answer_ok_false_and_the_loop_serves_on() -> None:
    srv = ControlServer("tcp://127.0.0.1:*", circular_handler)
    try:
        nested = b"[" * 1500 + b"]" * 1500  # 3,000 bytes: below MAX_MESSAGE_BYTES, beyond the recursion limit
        assert len(nested) < MAX_MESSAGE_BYTES
        for body, words in ((nested, "nested too deeply"), (b'{"cmd": ' + nested + b"}", "nested too deeply"),
                            ({"cmd": "circular"}, "internal error")):
            reply = request(srv.bound_endpoint, body, timeout_s=3)
            assert reply["ok"] is False and words in reply["error"], reply
            assert request(srv.bound_endpoint, {"cmd": "status"}, timeout_s=3)["ok"]  # still serving
    finally:
        srv.close()


# -- issue 24 item 3: a token, when the endpoint has one -----------------------------------------------
TOKEN = "k" * 43


def test_with_a_token_a_request_without_it_or_with_a_wrong_one_changes_nothing(tmp_path) -> None:
    calls: list[dict] = []

    def counting(req: dict) -> dict:
        calls.append(req)
        return handler(req)

    srv = ControlServer("tcp://127.0.0.1:*", counting, legacy_state=lambda: {"type": "counters"}, token=TOKEN)
    try:
        ep = srv.bound_endpoint
        for token in (None, "", "k" * 42, "k" * 44, 17, ["k" * 43]):
            body: dict = {"cmd": "status"} if token is None else {"cmd": "status", "token": token}
            reply = request(ep, body)
            assert reply["ok"] is False and "token" in reply["error"], (token, reply)
        reply = request(ep, b"counters")
        assert reply["ok"] is False and "token" in reply["error"]
        assert calls == []  # the handler never saw a refused request
        assert request(ep, {"cmd": "status"}, token=TOKEN)["ok"]
        assert calls == [{"cmd": "status"}]  # the token is not handed on
    finally:
        srv.close()


def test_stream_ctl_sends_the_token_of_its_token_file(tmp_path, capsys) -> None:
    srv = ControlServer("tcp://127.0.0.1:*", handler, token=TOKEN)
    try:
        token_file = tmp_path / "control.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        assert main(["--endpoint", srv.bound_endpoint, "status"]) == 1
        assert "token" in capsys.readouterr().err
        assert main(["--endpoint", srv.bound_endpoint, "--control-token-file", str(token_file), "status"]) == 0
        assert "A1: waiting" in capsys.readouterr().out
        token_file.chmod(0o644)
        assert main(["--endpoint", srv.bound_endpoint, "--control-token-file", str(token_file), "status"]) == 2
        assert "readable by others" in capsys.readouterr().err
    finally:
        srv.close()


def test_a_start_refused_at_the_frame_answers_ok_false_and_frames_go_on(tmp_path, monkeypatch) -> None:
    import threading

    book = _trial_book(tmp_path)

    def refuse(*_args, **_kwargs):
        raise UserError("trial number taken")

    monkeypatch.setattr(book, "_new_trial", refuse)
    stop = threading.Event()
    errors: list[BaseException] = []

    def frames() -> None:
        i = 0
        while not stop.is_set():
            try:
                book.on_frame(i, i / 15.0, None, i)
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)
                return
            i += 1
            time.sleep(0.01)

    pump = threading.Thread(target=frames, daemon=True)
    pump.start()
    srv = ControlServer("tcp://127.0.0.1:*", book.command)
    try:
        reply = request(srv.bound_endpoint, {"cmd": "start", "arena": "A1", "animal": "M1"})
        assert reply["ok"] is False and "trial number taken" in reply["error"]
        assert request(srv.bound_endpoint, {"cmd": "status"})["arenas"]["A1"]["state"] == "waiting"
    finally:
        stop.set()
        pump.join()
        srv.close()
    assert errors == []

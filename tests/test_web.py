"""``stream.web``: the page's server over real HTTP on loopback, with a real ``TrialBook`` behind it.

Security (token, Host, origin, the page's header), the trial commands and their validation (the
same as ``stream-ctl``'s), the frame, the arena editor's save, the results and their downloads.
The browser itself is driven in ``test_web_browser.py``.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="aiohttp not installed (pip install -e .)")

from stream.arena_finder import arena_tools  # noqa: E402
from stream.arenas import Arena, load_arena_file  # noqa: E402
from stream.decisions import DecisionConfig  # noqa: E402
from stream.errors import UserError  # noqa: E402
from stream.outputs.results import ResultsTable  # noqa: E402
from stream.preprocess import Roi  # noqa: E402
from stream.trials import TrialBook  # noqa: E402
from stream.web import WebState, parse_web_addr, start_web, web_token_for  # noqa: E402
from stream.web.security import check_request  # noqa: E402
from stream.web.server import WebServer  # noqa: E402
from test_results import summary  # noqa: E402

CLASSES = ["swim", "struggle", "float"]
PAGE = {"Content-Type": "application/json", "X-Swim-Stream": "1"}


def call(server, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method="GET" if body is None else "POST",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={**(PAGE if body is not None else {}), **(headers or {})})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture()
def live(tmp_path):
    """A server on a free loopback port, a control-mode book fed frames by a thread (as the pipeline does)."""
    arenas = [Arena("A1", Roi(0, 0, 32, 32)), Arena("A2", Roi(32, 0, 32, 32))]
    book = TrialBook([a.id for a in arenas], CLASSES, DecisionConfig(fps=15.0), mode="control", out_dir=tmp_path,
                     source="cam")
    state = WebState(out_dir=tmp_path, arena_file=tmp_path / "arenas.json", arena_tools=arena_tools())
    state.attach(book, arenas, "cam")
    state.set_frame(np.full((48, 64, 3), 90, np.uint8), 0, 0.0)
    server = WebServer(state, parse_web_addr("127.0.0.1:0"))
    stop = threading.Event()

    def frames():
        i = 0
        while not stop.wait(0.02):
            book.on_frame(i, i / 15.0, None, i)
            i += 1

    feeder = threading.Thread(target=frames, daemon=True)
    feeder.start()
    yield server, book, tmp_path
    stop.set()
    feeder.join()
    server.close()


def test_start_and_stop_go_through_the_trial_book_with_stream_ctl_validation(live) -> None:
    server, book, _ = live
    status, body, _ = call(server, "/api/trials", {"cmd": "start", "arena": "A1", "animal": "M1;rm -rf", "group": ""})
    assert status == 400 and "animal ID 'M1;rm -rf' has characters that are not allowed" in json.loads(body)["error"]
    status, body, _ = call(server, "/api/trials", {"cmd": "start", "arena": "A1", "animal": "x" * 65})
    assert status == 400 and "at most 64" in json.loads(body)["error"]
    status, body, _ = call(server, "/api/trials", {"cmd": "start", "arena": "A9", "animal": "M1"})
    assert status == 400 and "unknown arena 'A9'" in json.loads(body)["error"]
    status, body, _ = call(server, "/api/trials", {"cmd": "start", "arena": "A1", "animal": "M17", "group": "saline"})
    reply = json.loads(body)
    assert status == 200 and reply["ok"] and reply["trial_id"] == "A1-t001-M17"
    assert book.arenas["A1"].busy and not book.arenas["A2"].busy
    status, body, _ = call(server, "/api/trials", {"cmd": "stop", "arena": "A1"})
    assert status == 200 and json.loads(body)["trial_id"] == "A1-t001-M17"


@pytest.mark.parametrize("headers, body, words", [
    ({"Origin": "http://evil.example"}, {}, "cross-origin"),
    ({"Sec-Fetch-Site": "cross-site"}, {}, "cross-site"),
    ({"X-Swim-Stream": ""}, {}, "come from the page"),
    ({"Content-Type": "text/plain"}, {}, "come from the page"),
    ({"Host": "rebound.example:8080"}, {}, "Host is not this machine"),
])
def test_state_changing_requests_from_elsewhere_are_refused_and_change_nothing(live, headers, body, words) -> None:
    server, book, _ = live
    status, reply, _ = call(server, "/api/trials", {"cmd": "start", "arena": "A1", "animal": "M1"}, headers)
    assert status == 403 and words in json.loads(reply)["error"]
    assert not book.arenas["A1"].busy


def test_token_cookie_flow_beyond_loopback(tmp_path) -> None:
    token_file = tmp_path / "web.token"
    with pytest.raises(UserError, match="listens beyond this machine: give --web-token-file"):
        web_token_for(parse_web_addr("0.0.0.0:8080"), None)
    state = WebState()
    server = start_web("127.0.0.1:0", token_file, state)  # a token file is required all the same when given
    try:
        token = token_file.read_text().strip()
        assert (token_file.stat().st_mode & 0o777) == 0o600
        assert call(server, "/api/state")[0] == 401
        assert call(server, "/?token=wrong")[0] == 401
        status, _, headers = call(server, f"/?token={token}")
        assert status == 302 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert call(server, "/api/state", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        assert call(server, "/api/state", headers={"X-Swim-Stream-Token": token})[0] == 200
        # with a token, any Host (a LAN name) is fine; the origin check still holds for POSTs
        assert call(server, "/api/state", headers={"X-Swim-Stream-Token": token, "Host": "rig-pc:8080"})[0] == 200
    finally:
        server.close()


def test_check_request_rules() -> None:
    ok = {"Host": "127.0.0.1:8080", **PAGE, "Origin": "http://127.0.0.1:8080"}
    assert check_request("POST", ok, {}, None) is None
    assert check_request("GET", {"Host": "localhost:8080"}, {}, None) is None
    assert check_request("GET", {"Host": "[::1]:8080"}, {}, None) is None
    assert "Host" in check_request("GET", {"Host": "127.0.0.1.evil.example"}, {}, None)
    assert "token" in check_request("GET", {"Host": "lab:8080"}, {"swim_stream_token": "nope"}, "s" * 20)


def test_page_and_assets_come_from_the_package_with_a_strict_policy(live) -> None:
    server, _, _ = live
    status, body, headers = call(server, "/")
    assert status == 200 and b"/static/app.js" in body and b"http" not in body.replace(b"http-equiv", b"")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    assert call(server, "/static/app.js")[0] == 200 and call(server, "/static/../server.py")[0] == 404


def test_frame_is_a_jpeg_encoded_on_request_at_most_once_a_second(live) -> None:
    server, _, _ = live
    status, body, headers = call(server, "/api/frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (48, 64, 3)
    state = server.state
    first = state.jpeg()
    state.set_frame(np.zeros((48, 64, 3), np.uint8), 1, 0.1)
    assert state.jpeg() is first  # a new frame within the second: the cached JPEG, no encoding
    snap = json.loads(call(server, "/api/state")[1])
    assert [a["id"] for a in snap["arenas"]] == ["A1", "A2"] and snap["frame"]["size"] == [64, 48]
    assert snap["trials_open"] and snap["trial_mode"] == "control"


def test_arena_editor_saves_a_checked_arena_file(live) -> None:
    server, _, out = live
    arenas = [{"id": "L", "roi": [2, 3, 20, 30]}, {"id": "R", "roi": [30, 3, 20, 30]}]
    status, body, _ = call(server, "/api/arenas/save", {"arenas": arenas})
    assert status == 200 and json.loads(body)["ok"]
    assert load_arena_file(out / "arenas.json") == [Arena("L", Roi(2, 3, 20, 30)), Arena("R", Roi(30, 3, 20, 30))]
    assert (out / "arenas.png").exists()
    for bad, words in (([{"id": "a b", "roi": [0, 0, 20, 20]}], "arena id 'a b'"),
                       ([{"id": "X", "roi": [50, 0, 20, 20]}], "does not fit the 64x48 frames"),
                       ([{"id": "X", "roi": [0, 0, 4, 4]}], "smaller than 8 px"),
                       ([{"id": "X", "roi": [0, 0, 20, 20]}, {"id": "X", "roi": [20, 0, 20, 20]}], "duplicate")):
        status, body, _ = call(server, "/api/arenas/save", {"arenas": bad})
        assert status == 400 and words in json.loads(body)["error"], body


def test_results_table_files_and_downloads(live) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    server, _, out = live
    assert call(server, "/results.xlsx")[0] == 404
    s = summary()
    s["trial"]["trial_id"] = "A1-t001-M1"
    ResultsTable(out).on_trial_end(None, s)
    (out / "A1-t001-M1.frames.csv").write_text("frame\n")
    data = json.loads(call(server, "/api/results")[1])
    assert [r["animal"] for r in data["rows"]] == ["M1"] and "video_start_s" in data["columns"]
    assert data["files"]["A1-t001-M1"] == {"frames": "/files/A1-t001-M1.frames.csv"}
    assert call(server, "/files/A1-t001-M1.frames.csv")[1] == b"frame\n"
    for name in ("..%2Fresults.csv", "results.csv", "A1-t001-M1.trial.json", "x.frames.csv"):
        assert call(server, f"/files/{name}")[0] == 404, name
    assert call(server, "/results.csv")[1] == (out / "results.csv").read_bytes()
    status, body, headers = call(server, "/results.xlsx")
    assert status == 200 and "spreadsheetml" in headers["Content-Type"]
    wb = openpyxl.load_workbook(io.BytesIO(body))
    assert wb["results"]["B2"].value == "M1" and "saline" in wb.sheetnames


def test_stream_run_web_beyond_loopback_without_token_is_one_line(tmp_path, tiny_model, capsys) -> None:
    from conftest import write_moving_square_video
    from stream.run import main

    video = write_moving_square_video(tmp_path / "v.mp4", 10)
    code = main(["--video", str(video), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--no-zmq",
                 "--no-metrics", "-q", "--web", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert code == 2 and "--web 0.0.0.0:0 listens beyond this machine" in err and err.count("\n") == 1
    assert main(["--video", str(video), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--no-zmq",
                 "--no-metrics", "-q", "--web-token-file", str(tmp_path / "t")]) == 2
    assert "--web-token-file goes with --web" in capsys.readouterr().err


def test_stream_arenas_web_serves_the_editor_and_saves_to_out(tmp_path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    from rig_video import write_rig_video

    video = write_rig_video(tmp_path / "rec", 2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rig.arenas.json"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from stream.arena_finder import main; sys.exit(main())",
                             "--video", str(video), "--out", str(out), "--web", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    class Port:
        pass

    server = Port()
    server.port = port
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body, _ = call(server, "/api/arenas")
                break
            except OSError:
                assert time.monotonic() < deadline, "stream-arenas --web never answered"
                time.sleep(0.2)
        proposed = json.loads(body)
        assert [a["id"] for a in proposed["arenas"]] == ["A1", "A2"] and proposed["size"] == [320, 180]
        status, body, _ = call(server, "/api/arenas/save", {"arenas": [{"id": "L", "roi": [10, 10, 100, 100]}]})
        assert status == 200, body
        assert load_arena_file(out) == [Arena("L", Roi(10, 10, 100, 100))]
        assert call(server, "/api/trials", {"cmd": "start", "arena": "L"})[0] == 409  # no trials without a run
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "2 arena(s) proposed" in stdout


def test_the_page_gets_each_arenas_mouse_window_and_none_for_a_roi_model() -> None:
    """A mouse-crop model's windows (what the model sees) reach the page's JSON per arena, in frame
    pixels; a ROI model's frames carry none, and the page draws nothing more."""
    from stream.outputs.base import FrameEvent
    from stream.web.output import WebOutput

    arenas = [Arena("A1", Roi(0, 0, 32, 32)), Arena("A2", Roi(32, 0, 32, 32))]
    state = WebState()
    state.attach(None, arenas, "cam")
    out = WebOutput(state)
    image = np.zeros((48, 64, 3), np.uint8)
    out.on_frame(FrameEvent(7, 0.5, image, 0.0, windows=((4, 2, 16, 16), (40, 10, 16, 16))))
    assert [a["window"] for a in state.snapshot()["arenas"]] == [[4, 2, 16, 16], [40, 10, 16, 16]]
    out.on_frame(FrameEvent(8, 0.6, image, 0.0))
    assert [a["window"] for a in state.snapshot()["arenas"]] == [None, None]
    assert "a.window" in (Path(__file__).parents[1] / "stream" / "web" / "static" / "app.js").read_text()

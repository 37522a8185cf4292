"""sd_notify over a real AF_UNIX datagram socket, as systemd's manager would receive it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.notify import WATCHDOG_FRACTION, SystemdNotifier, notifier_from_env

RECV_TIMEOUT_S = 2.0  # a datagram on a local socket arrives in microseconds; 2 s means "never"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bind_path_socket(directory: Path) -> tuple[socket.socket, str]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer, so fall back to /tmp.
    path = directory / "notify.sock"
    if len(str(path)) > 100:
        path = Path("/tmp") / f"swim-notify-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(RECV_TIMEOUT_S)
    return server, str(path)


@pytest.fixture()
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    server, path = _bind_path_socket(tmp_path)
    yield server, path
    server.close()
    Path(path).unlink(missing_ok=True)


@pytest.fixture()
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"swim-stream-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(RECV_TIMEOUT_S)
    yield server, "@" + name
    server.close()


def _recv(server: socket.socket) -> str:
    return server.recv(4096).decode()


def _assert_nothing_pending(server: socket.socket) -> None:
    server.settimeout(0.05)
    with pytest.raises(TimeoutError):
        server.recv(4096)
    server.settimeout(RECV_TIMEOUT_S)


def test_not_under_systemd_is_a_silent_no_op() -> None:
    notifier = notifier_from_env({})
    assert not notifier.enabled and not notifier.watchdog_enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False


def test_ready_status_stopping_reach_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    server, path = path_socket
    with notifier_from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled and not notifier.watchdog_enabled
        assert notifier.ready("model loaded, 2 arenas")
        assert _recv(server) == "READY=1\nSTATUS=model loaded, 2 arenas"
        assert notifier.status("fps 15.0\nimmobile 12 s")  # a newline would start a new field
        assert _recv(server) == "STATUS=fps 15.0 immobile 12 s"
        assert notifier.stopping("flushing CSVs")
        assert _recv(server) == "STOPPING=1\nSTATUS=flushing CSVs"
        assert notifier.watchdog() is False  # no WatchdogSec: nothing to send
        _assert_nothing_pending(server)


def test_abstract_socket_address(abstract_socket: tuple[socket.socket, str]) -> None:
    server, name = abstract_socket
    notifier = notifier_from_env({"NOTIFY_SOCKET": name})
    assert notifier.ready()
    assert _recv(server) == "READY=1"
    notifier.close()


def test_watchdog_rate_limited_to_half_the_period(path_socket: tuple[socket.socket, str]) -> None:
    server, path = path_socket
    clock = FakeClock()
    notifier = SystemdNotifier(path, watchdog_interval_s=10.0, clock=clock)
    assert notifier.watchdog_period_s == pytest.approx(10.0 * WATCHDOG_FRACTION)

    assert notifier.watchdog() is True  # first call always sends
    assert _recv(server) == "WATCHDOG=1"
    sent = 0
    for _ in range(100):  # a fast loop: 100 iterations in 4.9 s
        clock.now += 0.049
        sent += notifier.watchdog()
    assert sent == 0
    _assert_nothing_pending(server)
    clock.now += 0.2  # now 5.1 s after the last ping
    assert notifier.watchdog() is True
    assert _recv(server) == "WATCHDOG=1"
    assert notifier.watchdog() is False


def test_ready_restarts_the_watchdog_clock(path_socket: tuple[socket.socket, str]) -> None:
    server, path = path_socket
    clock = FakeClock()
    notifier = SystemdNotifier(path, watchdog_interval_s=2.0, clock=clock)
    notifier.ready()
    assert _recv(server) == "READY=1"
    assert notifier.watchdog() is False  # READY is itself a sign of life
    clock.now += 1.0
    assert notifier.watchdog() is True
    assert _recv(server) == "WATCHDOG=1"


def test_watchdog_usec_parsed_from_environment(path_socket: tuple[socket.socket, str]) -> None:
    _, path = path_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert notifier_from_env(env).watchdog_period_s == pytest.approx(15.0)
    env_without_pid = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}
    assert notifier_from_env(env_without_pid).watchdog_period_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},  # the watchdog belongs to another PID
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "main"},
    ],
)
def test_watchdog_off_when_not_ours_or_malformed(
    path_socket: tuple[socket.socket, str], extra: dict[str, str]
) -> None:
    _, path = path_socket
    notifier = notifier_from_env({"NOTIFY_SOCKET": path, **extra})
    assert notifier.enabled and not notifier.watchdog_enabled
    assert notifier.watchdog() is False


def test_watchdog_usec_without_socket_is_ignored() -> None:
    assert not notifier_from_env({"WATCHDOG_USEC": "30000000"}).watchdog_enabled


def test_relative_notify_socket_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.notify"):
        assert not notifier_from_env({"NOTIFY_SOCKET": "relative.sock"}).enabled
    assert "NOTIFY_SOCKET" in caplog.text


def test_dead_socket_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"), watchdog_interval_s=1.0,
                               clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="stream.notify"):
        assert notifier.ready() is False
        assert notifier.status("x") is False
        assert notifier.stopping() is False
    assert caplog.text.count("sd_notify") == 1


def test_invalid_watchdog_interval_rejected() -> None:
    with pytest.raises(ValueError):
        SystemdNotifier("/run/x", watchdog_interval_s=0)


def test_subprocess_sends_ready_over_inherited_environment(
    path_socket: tuple[socket.socket, str]
) -> None:
    """The way systemd uses it: the variable is in the environment of a separate process."""
    server, path = path_socket
    code = "from stream.notify import notifier_from_env; notifier_from_env().ready('hi')"
    env = {**os.environ, "NOTIFY_SOCKET": path}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert _recv(server) == "READY=1\nSTATUS=hi"


# ------------------------------------------------------------------- the real stream-run, end to end
WATCHDOG_TEST_USEC = 10_000_000  # 10 s: pings due every 5 s; a busy CI box still keeps up
STREAM_RUN_TIMEOUT_S = 900.0  # engine build (TorchScript freeze) takes minutes on a busy 2-core box


@pytest.mark.slow
def test_stream_run_sends_ready_watchdog_status_stopping(
    path_socket: tuple[socket.socket, str], tmp_path: Path, tiny_model: Path, moving_square_video
) -> None:
    """stream-run under a stand-in for systemd: READY after start-up, WATCHDOG often enough that
    a real WatchdogSec would never fire, STOPPING at the end."""
    import threading
    import time

    server, path = path_socket
    received: list[tuple[float, str]] = []
    done_reading = threading.Event()

    def read() -> None:
        server.settimeout(0.2)
        while not done_reading.is_set():
            try:
                received.append((time.monotonic(), server.recv(4096).decode()))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    model = tiny_model
    # --realtime: 8 s of video take >= 8 s however fast the box, so pings are due (every 5 s)
    video = moving_square_video(tmp_path / "v.mp4", 120)
    script = Path(sys.executable).with_name("stream-run")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from stream.run import main; sys.exit(main())"]
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_TEST_USEC)}
    env.pop("WATCHDOG_PID", None)
    done = subprocess.run([*command, "--video", str(video), "--model", str(model),
                           "--out", str(tmp_path / "out"), "--no-zmq", "--metrics-port", "0",
                           "--realtime"],
                          env=env, capture_output=True, text=True, timeout=STREAM_RUN_TIMEOUT_S)
    time.sleep(0.5)
    done_reading.set()
    reader.join()
    assert done.returncode == 0, done.stderr
    kinds = [message.split("\n")[0].split("=")[0] for _, message in received]
    assert kinds and kinds[0] == "READY", received
    assert kinds[-1] == "STOPPING", received
    assert "WATCHDOG" in kinds and "STATUS" in kinds, received
    pings = [t for t, message in received if message.startswith(("READY=1", "WATCHDOG=1"))]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    period_s = WATCHDOG_TEST_USEC / 1e6
    assert min(gaps) >= period_s * WATCHDOG_FRACTION * 0.9, f"not rate-limited: {gaps}"
    assert max(gaps) < period_s, f"systemd would have killed it: gaps {gaps}"
    stopping = received[-1][0]
    assert stopping - pings[-1] < period_s, "no ping during the last watchdog period"

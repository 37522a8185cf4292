"""Loopback or beyond: the classification every bind is judged by, and the warning line for beyond.

Tests bind only to loopback (127.0.0.0/8); beyond-loopback logic is tested on the classification
and the warning function, never by binding another address.
"""

from __future__ import annotations

import logging

import pytest
import zmq

from stream.network import bind_zmq, endpoint_host, is_loopback_endpoint, is_loopback_host, warn_if_exposed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost",
                                  "LOCALHOST", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "", "::", "[::]", "192.168.1.10", "10.0.0.1", "128.0.0.1",
                                  "eth0", "lo", "example.org", "::ffff:10.0.0.1", "fe80::1"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(("endpoint", "loopback"), [
    ("tcp://127.0.0.1:5556", True), ("tcp://127.0.0.2:*", True), ("tcp://[::1]:5556", True),
    ("tcp://localhost:5556", True), ("ipc:///tmp/swim.sock", True), ("inproc://control", True),
    ("tcp://0.0.0.0:5556", False), ("tcp://*:5555", False), ("tcp://[::]:5555", False),
    ("tcp://192.168.1.10:5555", False), ("tcp://eth0:5555", False), ("udp://127.0.0.1:5555", False),
    ("epgm://eth0;239.192.1.1:5555", False), ("127.0.0.1:5556", False),
])
def test_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_endpoint_host() -> None:
    assert endpoint_host("tcp://*:5555") == "*"
    assert endpoint_host("tcp://[::1]:5555") == "[::1]"
    assert endpoint_host("ipc:///tmp/x") is None


def test_beyond_loopback_is_one_warning_line_and_loopback_is_silent(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.network"):
        warn_if_exposed("ZeroMQ endpoint", "tcp://*:5555", is_loopback_endpoint("tcp://*:5555"))
        warn_if_exposed("metrics server", "0.0.0.0:9108", is_loopback_host("0.0.0.0"))
        warn_if_exposed("control endpoint", "tcp://127.0.0.1:5556", is_loopback_endpoint("tcp://127.0.0.1:5556"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "tcp://*:5555" in lines[0] and "beyond this machine" in lines[0]
    assert "0.0.0.0:9108" in lines[1]


def test_a_loopback_bind_warns_nothing(caplog) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with caplog.at_level(logging.WARNING, logger="stream.network"):
            bind_zmq(sock, "tcp://127.0.0.2:*", "ZeroMQ endpoint", "tcp://127.0.0.1:5555")
        assert caplog.records == []
    finally:
        sock.close()
        ctx.term()


def test_publisher_control_and_metrics_binds_go_through_the_warning(monkeypatch, caplog) -> None:
    """The wiring, on loopback: each bind asks the classification, and warns when told 'beyond'."""
    import stream.network as network
    import stream.outputs.metrics as metrics_mod
    from stream.control import ControlServer
    from stream.outputs.metrics import Metrics
    from stream.outputs.publisher import Publisher

    monkeypatch.setattr(network, "is_loopback_endpoint", lambda _endpoint: False)
    monkeypatch.setattr(metrics_mod, "is_loopback_host", lambda _host: False)
    with caplog.at_level(logging.WARNING, logger="stream.network"):
        pub = Publisher("tcp://127.0.0.1:*", state_endpoint="tcp://127.0.0.1:*")
        ctl = ControlServer("tcp://127.0.0.1:*", lambda req: {"ok": True})
        met = Metrics(0, addr="127.0.0.1")
        for closer in (pub, ctl, met):
            closer.close()
    text = [r.getMessage() for r in caplog.records]
    for what in ("ZeroMQ endpoint", "ZeroMQ state endpoint", "control endpoint", "metrics server"):
        assert sum(line.startswith(what + " listens beyond") for line in text) == 1, (what, text)

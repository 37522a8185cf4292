"""ZeroMQ publisher: real PUB/SUB round trips on loopback, never blocking, drop counting, state REP."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from stream.decisions import ArenaDecisions, Decision, DecisionConfig
from stream.errors import UserError
from stream.outputs.publisher import MAX_REQUEST_BYTES, SCHEMA_VERSION, Publisher, SequenceGaps

CLASSES = ["swim", "struggle", "float"]
ANY_PORT = "tcp://127.0.0.1:*"
WAIT_S = 5.0  # generous on a loaded 2-core machine; the happy path takes milliseconds


def decisions(n: int, seed: int = 0) -> tuple[ArenaDecisions, list[Decision]]:
    rng = np.random.default_rng(seed)
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=15.0))
    out = []
    for i in range(n):
        out += arena.update(i, i / 15.0, rng.dirichlet(np.ones(3)))
    return arena, out + arena.flush()


def wait_for_subscribers(pub: Publisher, n: int = 1) -> None:
    deadline = time.monotonic() + WAIT_S
    while pub.subscriptions_seen < n:
        assert time.monotonic() < deadline, "subscriber never joined"
        time.sleep(0.01)


@pytest.fixture()
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def subscriber(ctx: zmq.Context, endpoint: str, topic: bytes = b"", rcvhwm: int | None = None) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    if rcvhwm is not None:
        sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    return sub


def recv(sub: zmq.Socket) -> tuple[str, dict]:
    assert sub.poll(int(WAIT_S * 1000)), "no message"
    topic, body = sub.recv_multipart()
    return topic.decode(), json.loads(body)


def test_round_trip_frames_and_summary(ctx) -> None:
    arena, ds = decisions(5)
    with Publisher(ANY_PORT) as pub:
        sub = subscriber(ctx, pub.bound_endpoint)
        wait_for_subscribers(pub)
        for d in ds:
            pub.publish("A", d)
        pub.publish_summary("A", arena.summary())
        got = [recv(sub) for _ in range(len(ds) + 1)]
    assert all(topic == "A" for topic, _ in got)
    frames = [body for _, body in got[:-1]]
    assert [b["frame_index"] for b in frames] == [d.frame_index for d in ds]
    first = frames[0]
    assert first["schema"] == SCHEMA_VERSION and first["type"] == "frame" and first["arena"] == "A"
    assert [b["seq"] for _, b in got] == list(range(len(ds) + 1))  # per arena, summary included
    assert first["behaviour"] == ds[0].behaviour and first["immobile"] == ds[0].immobile
    assert first["timestamp_s"] == pytest.approx(ds[0].timestamp_s)
    assert first["probabilities"] == pytest.approx(ds[0].probabilities)
    assert first["counters"] == ds[0].counters.to_json()
    summary = got[-1][1]
    assert summary["type"] == "summary" and summary["schema"] == SCHEMA_VERSION and summary["arena"] == "A"
    assert summary["counters"]["frames_classified"] == 5
    assert pub.dropped == 0 and pub.sent == 6


def test_topic_filter_per_arena(ctx) -> None:
    _, ds = decisions(2)
    with Publisher(ANY_PORT) as pub:
        sub = subscriber(ctx, pub.bound_endpoint, b"B")
        wait_for_subscribers(pub)
        pub.publish("A", ds[0])
        pub.publish("B", ds[1])
        topic, body = recv(sub)
    assert topic == "B" and body["frame_index"] == ds[1].frame_index


def test_absent_subscriber_never_blocks_and_drops_nothing() -> None:
    _, ds = decisions(1)
    with Publisher(ANY_PORT, hwm=1) as pub:
        start = time.perf_counter()
        for _ in range(2000):
            pub.publish("A", ds[0])
        assert time.perf_counter() - start < 5.0
        assert pub.dropped == 0


def test_slow_subscriber_never_blocks_and_counts_its_own_losses(ctx) -> None:
    _, ds = decisions(1)
    n = 20000
    with Publisher(ANY_PORT, hwm=2) as pub:
        sub = subscriber(ctx, pub.bound_endpoint, rcvhwm=2)  # never reads
        wait_for_subscribers(pub)
        start = time.perf_counter()
        for _ in range(n):
            pub.publish("A", ds[0])
        elapsed = time.perf_counter() - start
        assert elapsed < 10.0  # a blocking send would hang here forever
        assert pub.sent == n and pub.dropped == 0
        gaps = SequenceGaps()
        received = 0
        while sub.poll(500):
            gaps.update("A", json.loads(sub.recv_multipart()[1])["seq"])
            received += 1
        pub.publish("A", ds[0])
        assert sub.poll(int(WAIT_S * 1000))
        gaps.update("A", json.loads(sub.recv_multipart()[1])["seq"])
    assert 0 < received < n
    assert gaps.total == n - received  # what it missed, it knows


def test_stalled_subscriber_does_not_starve_a_reading_one(ctx) -> None:
    """Issue 14.6: with XPUB_NODROP one suspended stream-watch stopped delivery to everybody."""
    _, ds = decisions(1)
    n = 30000  # far more than a stalled subscriber's queues and TCP buffers hold (~8,500 in the issue)
    got: list[int] = []
    with Publisher(ANY_PORT) as pub:
        stalled = subscriber(ctx, pub.bound_endpoint, rcvhwm=50)  # never reads until the end
        reader = subscriber(ctx, pub.bound_endpoint, rcvhwm=0)  # 0: no limit, it reads everything
        wait_for_subscribers(pub, 2)
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set() or reader.poll(0):
                if reader.poll(100):
                    got.append(json.loads(reader.recv_multipart()[1])["seq"])

        thread = threading.Thread(target=read)
        thread.start()
        try:
            for i in range(n):
                pub.publish("A", ds[0])
                if i % 100 == 0:
                    time.sleep(0.002)  # a few thousand messages/s, like a busy station; lets the reader run
            deadline = time.monotonic() + 4 * WAIT_S
            while len(got) < n and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        gaps = SequenceGaps()
        stalled_received = 0
        while stalled.poll(500):  # Ctrl-Z, then fg: what was queued for it ...
            gaps.update("A", json.loads(stalled.recv_multipart()[1])["seq"])
            stalled_received += 1
        pub.publish("A", ds[0])  # ... then the next live message shows what it missed
        assert stalled.poll(int(WAIT_S * 1000))
        gaps.update("A", json.loads(stalled.recv_multipart()[1])["seq"])
    assert got == list(range(n))  # the reading subscriber got every message, in order
    assert stalled_received < n  # the stalled one lost messages of its own ...
    assert gaps.total == n - stalled_received  # ... and counted every one of them


def test_sequence_gaps_count_per_arena_and_restart_after_a_restart() -> None:
    gaps = SequenceGaps()
    assert gaps.update("A", 7) == 0  # a late joiner has lost nothing
    assert gaps.update("A", 8) == 0
    assert gaps.update("B", 0) == 0
    assert gaps.update("A", 12) == 3
    assert gaps.update("B", 2) == 1
    assert gaps.update("A", 0) == 0  # the recognizer restarted
    assert gaps.update("A", 2) == 1
    assert gaps.update("A", None) == 0 and gaps.update("A", True) == 0  # no seq: nothing to count
    assert gaps.lost == {"A": 4, "B": 1} and gaps.total == 5


def test_every_receiving_socket_caps_the_message_size(ctx) -> None:
    """A peer sending a huge request is disconnected; the state endpoint keeps answering others."""
    with Publisher(ANY_PORT, state_endpoint=ANY_PORT) as pub:
        assert pub._pub.getsockopt(zmq.MAXMSGSIZE) == MAX_REQUEST_BYTES
        big = ctx.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(pub.bound_state_endpoint)
        big.send(b"x" * (MAX_REQUEST_BYTES + 1))
        assert not big.poll(500), "an oversized request was answered"
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(pub.bound_state_endpoint)
        req.send(b"counters")
        assert req.poll(int(WAIT_S * 1000))
        assert json.loads(req.recv())["type"] == "counters"
        big.close(linger=0)
        req.close(linger=0)


def test_state_endpoint_answers_late_joiners(ctx) -> None:
    arena_a, ds_a = decisions(4, seed=1)
    _, ds_b = decisions(6, seed=2)
    with Publisher(ANY_PORT, state_endpoint=ANY_PORT) as pub:
        state_endpoint = pub.bound_state_endpoint
        for d in ds_a:
            pub.publish("A", d)
        for d in ds_b:
            pub.publish("B", d)
        req = ctx.socket(zmq.REQ)
        req.connect(state_endpoint)
        req.send(b"counters")
        assert req.poll(int(WAIT_S * 1000))
        reply = json.loads(req.recv())
        assert reply["schema"] == SCHEMA_VERSION and reply["type"] == "counters"
        assert reply["arenas"]["A"] == ds_a[-1].counters.to_json()
        assert reply["arenas"]["B"]["frames_classified"] == 6
        assert reply["finished"] == []
        pub.publish_summary("A", arena_a.summary())
        req.send(b"counters")
        assert req.poll(int(WAIT_S * 1000))
        assert json.loads(req.recv())["finished"] == ["A"]
        req.send(b"hello")
        assert req.poll(int(WAIT_S * 1000))
        assert json.loads(req.recv())["type"] == "error"
        req.close(linger=0)


def test_port_in_use_is_a_user_error_naming_the_endpoint() -> None:
    with Publisher(ANY_PORT) as first:
        taken = first.bound_endpoint
        with pytest.raises(UserError, match=taken.replace(".", r"\.")):
            Publisher(taken)
        with pytest.raises(UserError, match="state endpoint"):
            Publisher(ANY_PORT, state_endpoint=taken)
        _, ds = decisions(1)
        first.publish("A", ds[0])  # the first publisher is unharmed


def test_port_held_by_another_program_is_a_user_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(UserError, match="already in use"):
            Publisher(endpoint)


def test_bad_endpoint_is_a_user_error() -> None:
    with pytest.raises(UserError, match="nonsense"):
        Publisher("nonsense")


def test_ipc_endpoint(ctx, tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/pub.sock"
    _, ds = decisions(1)
    with Publisher(endpoint) as pub:
        sub = subscriber(ctx, endpoint)
        wait_for_subscribers(pub)
        pub.publish("A", ds[0])
        assert recv(sub)[1]["frame_index"] == ds[0].frame_index

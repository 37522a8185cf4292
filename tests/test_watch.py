"""``stream-watch`` against a real publisher on loopback: lines, exits, filters, state, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import zmq

from stream.decisions import ArenaDecisions, DecisionConfig
from stream.outputs.publisher import Publisher
from stream.watch import ArenaView, format_table, main

CLASSES = ["swim", "struggle", "float"]
ANY_PORT = "tcp://127.0.0.1:*"
WAIT_S = 10.0


class Background:
    """Runs ``main(argv)`` in a thread, as a user would run the command next to stream-run."""

    def __init__(self, argv: list[str]) -> None:
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = main(argv)

    def join(self) -> int | None:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "stream-watch did not exit"
        return self.code


def wait_for_subscribers(pub: Publisher, n: int = 1) -> None:
    deadline = time.monotonic() + WAIT_S
    while pub.subscriptions_seen < n:
        assert time.monotonic() < deadline, "stream-watch never subscribed"
        time.sleep(0.01)


def play(pub: Publisher, arena_id: str, pattern: str, fps: float = 1.0) -> ArenaDecisions:
    arena = ArenaDecisions(arena_id, CLASSES, DecisionConfig(fps=fps, test_duration_s=10.0, scoring_window_s=4.0))
    probs = {"S": [0.8, 0.1, 0.1], "F": [0.1, 0.1, 0.8]}
    for i, ch in enumerate(pattern):
        for d in arena.update(i, i / fps, np.array(probs[ch])):
            pub.publish(arena_id, d)
    for d in arena.flush():
        pub.publish(arena_id, d)
    return arena


def test_plain_lines_and_exit_after_all_summaries(capsys) -> None:
    with Publisher(ANY_PORT) as pub:
        watch = Background(["--endpoint", pub.bound_endpoint, "--interval-s", "0", "--timeout-s", "5"])
        wait_for_subscribers(pub)
        a = play(pub, "A", "SFFSFF")
        b = play(pub, "B", "FFFSSS")
        pub.publish_summary("A", a.summary())
        time.sleep(0.1)  # A's summary alone must not end the watch
        assert watch.thread.is_alive()
        pub.publish_summary("B", b.summary())
        assert watch.join() == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("arena A frame") for line in lines) == 6
    assert sum(line.startswith("arena B frame") for line in lines) == 6
    summary_a = next(line for line in lines if line.startswith("arena A summary"))
    assert "immobile 4.0 s in 2 bouts, latency 1.0 s" in summary_a
    summary_b = next(line for line in lines if line.startswith("arena B summary"))
    assert "immobile 3.0 s in 1 bouts, latency 0.0 s" in summary_b
    assert "scoring window 6.0-10.0 s" in summary_b


def test_arena_filter_and_count(capsys) -> None:
    with Publisher(ANY_PORT) as pub:
        watch = Background(["--endpoint", pub.bound_endpoint, "--arena", "A", "--count", "3", "--interval-s", "0",
                            "--timeout-s", "5"])
        wait_for_subscribers(pub)
        play(pub, "A2", "SSSS")  # same prefix: must be filtered out, not counted
        play(pub, "B", "SSSS")
        play(pub, "A", "SSFFF")
        assert watch.join() == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("arena A frame") for line in lines)


def test_state_endpoint_once_shows_counters_without_waiting(capsys) -> None:
    with Publisher(ANY_PORT, state_endpoint=ANY_PORT) as pub:
        play(pub, "A", "FFFSS")  # published before the watcher exists
        code = main(["--endpoint", pub.bound_endpoint, "--state-endpoint", pub.bound_state_endpoint, "--once",
                     "--timeout-s", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "arena A" in out and "immobile=3.0s bouts=1" in out


def test_state_endpoint_reports_finished_arenas(capsys) -> None:
    with Publisher(ANY_PORT, state_endpoint=ANY_PORT) as pub:
        a = play(pub, "A", "FFS")
        pub.publish_summary("A", a.summary())
        code = main(["--endpoint", pub.bound_endpoint, "--state-endpoint", pub.bound_state_endpoint,
                     "--timeout-s", "5"])
    assert code == 0  # nothing left to wait for
    assert "arena A summary: immobile 2.0 s in 1 bouts" in capsys.readouterr().out


def test_timeout_without_messages(capsys) -> None:
    with Publisher(ANY_PORT) as pub:
        start = time.monotonic()
        code = main(["--endpoint", pub.bound_endpoint, "--timeout-s", "0.3"])
        assert time.monotonic() - start < 5.0
    assert code == 1
    assert "nothing from" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    assert main(["--endpoint", "nonsense", "--timeout-s", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-watch: error: bad endpoint nonsense") and err.count("\n") == 1
    assert main(["--count", "0"]) == 2


def test_table_columns() -> None:
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=1.0))
    for i, p in enumerate([[0.1, 0.1, 0.8]] * 3):
        arena.update(i, float(i), np.array(p))
    views = {"A": ArenaView("A", frame_index=2, timestamp_s=2.0, behaviour="float", counters=arena.counters()),
             "B": ArenaView("B")}
    header, row_a, row_b = format_table(views)
    assert header.split()[:4] == ["ARENA", "FRAME", "TIME_S", "BEHAVIOUR"]
    assert row_a.split() == ["A", "2", "2.0", "float", "3.0", "1", "0.0", "0.0", "0", "-", "0", "0", "live"]
    assert row_b.split()[:4] == ["B", "-", "-", "-"]


def test_command_line_times_out_cleanly() -> None:
    with Publisher(ANY_PORT) as pub:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from stream.watch import main; sys.exit(main())",
             "--endpoint", pub.bound_endpoint, "--timeout-s", "0.2"],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "nothing from" in proc.stderr


def test_ctrl_c_exits_zero(monkeypatch) -> None:
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt

    with Publisher(ANY_PORT) as pub:
        monkeypatch.setattr(zmq.Socket, "poll", interrupted)
        assert main(["--endpoint", pub.bound_endpoint]) == 0
    assert calls["n"] == 1


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_refreshing_table(monkeypatch) -> None:
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    with Publisher(ANY_PORT) as pub:
        watch = Background(["--endpoint", pub.bound_endpoint, "--interval-s", "0", "--timeout-s", "5"])
        wait_for_subscribers(pub)
        a = play(pub, "A", "SFF")
        pub.publish_summary("A", a.summary())
        assert watch.join() == 0
    frames = screen.getvalue().split("\x1b[H\x1b[J")[1:]
    assert len(frames) >= 2  # redrawn, not appended
    last = frames[-1].splitlines()
    assert last[0].startswith("ARENA") and last[1].split()[0] == "A" and last[1].split()[-1] == "done"
    assert "arena A frame" not in screen.getvalue()  # no plain lines on a terminal


def test_a_watcher_counts_the_messages_it_missed(capsys) -> None:
    """Issue 14.6: a slow watcher loses its own messages; it says how many (from ``seq``)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ANY_PORT)
    try:
        watch = Background(["--endpoint", pub.getsockopt_string(zmq.LAST_ENDPOINT), "--interval-s", "0",
                            "--timeout-s", "5"])
        assert pub.poll(int(WAIT_S * 1000)) and pub.recv()[:1] == b"\x01"  # subscribed
        for seq in (0, 1, 5):  # 2, 3 and 4 never reached this watcher
            body = {"schema": 1, "type": "frame", "arena": "A", "seq": seq, "frame_index": seq, "timestamp_s": seq,
                    "behaviour": "swim", "counters": {}}
            pub.send_multipart([b"A", json.dumps(body).encode()])
        pub.send_multipart([b"A", json.dumps({"schema": 1, "type": "summary", "arena": "A", "seq": 6,
                                              "counters": {}}).encode()])
        assert watch.join() == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    out, err = capsys.readouterr()
    assert "arena A frame 5" in out and "lost=3" in out
    assert "lost 3 messages" in err

"""Faults a station meets, end to end through the real `stream-run` command (issue 8).

Every run is a subprocess with a time box, because "never a hang" is part of what is tested.
Bad input and bad set-up must end with a non-zero exit and ONE line on stderr
(``stream-run: error: ...``), no traceback, before any frame is processed. SIGTERM must flush the
CSVs and write the summary; kill -9 must leave each per-frame CSV valid up to its last line.
A network camera that goes away must be reconnected with back-off, the gap recorded, the systemd
watchdog fed meanwhile, and after --give-up-s the run must end with exit 1 and its summaries.

Each run costs a Python start with torch (4-7 s measured on the shared 2-core box) and a run that
processes frames also builds the CPU engine (TorchScript freeze: 30 s to 2 min there), so the default run
keeps one representative per kind of refusal (checksum, camera, port, corrupt video); the rest
are ``slow`` (``pytest -m slow tests/test_faults.py``).

Inputs are generated here: a tiny untrained fused I3D (32 px, the card's settings decide the
runtime) and 64x64 videos of a moving square, written with OpenCV (mp4v) or PyAV (grey, RGBA,
odd size, variable frame rate).
"""

from __future__ import annotations

import csv
import fractions
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("stream.run") is None,
                                reason="stream-run not available")

REFUSE_TIMEOUT_S = 180.0  # a refusal comes before the engine is built: ~5 s, minutes means a hang
# A run that processes frames first builds the CPU engine (TorchScript trace + freeze + warm-up):
# up to 2 min measured on the shared 2-core box with 7 busy neighbours. 15 min means a hang.
PROCESS_TIMEOUT_S = 900.0
SIGNAL_TIMEOUT_S = 120.0  # after SIGTERM: finish the frame in flight, flush CSVs, write summaries
MAX_FRAMES = 24  # 16-frame clip + 7 look-ahead + 1: decisions for every arena, little CPU
ROWS_BEFORE_SIGNAL = 3  # frames on disk before we interrupt: proves the run was really going
POLL_S = 0.1
VIDEO_SIZE_PX = 64
MODEL_FPS = 15.0
SHORT_VIDEO_FRAMES = 40  # > 16-frame clip + 7-frame look-ahead: at least one decision per arena
LONG_VIDEO_FRAMES = 900  # a minute at 15 fps: still running when the test sends its signal
CSV_GLOB = "**/*.frames.csv"
SUMMARY_GLOB = "**/*.summary.json"
ERROR_PREFIX = "stream-run: error: "


# ----------------------------------------------------------------------------------- fixtures
def _square_frame(i: int, width: int, height: int) -> np.ndarray:
    """Grey background, a bright square moving right: something for the flow to see."""
    image = np.full((height, width, 3), 40, np.uint8)
    x = (3 * i) % max(1, width - 12)
    y = height // 3
    image[y:y + 10, x:x + 10] = 220
    return image


def write_mp4(path: Path, frames: int, size_px: int = VIDEO_SIZE_PX, fps: float = MODEL_FPS) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size_px, size_px))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(frames):
        writer.write(_square_frame(i, size_px, size_px))
    writer.release()
    return path


def write_pyav(path: Path, *, frames: int, width: int, height: int, codec: str, pix_fmt: str,
               channels: int, pts_ms: list[int] | None = None) -> Path:
    """Videos OpenCV cannot write: true grey or RGBA pixel formats, odd sizes, irregular timestamps."""
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=int(MODEL_FPS))
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if pts_ms is not None:
        stream.time_base = fractions.Fraction(1, 1000)
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
    source_format = {1: "gray", 3: "bgr24", 4: "bgra"}[channels]
    for i in range(frames):
        image = _square_frame(i, width, height)
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 4:
            image = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=source_format)
        if pts_ms is not None:
            frame.pts = pts_ms[i]
            frame.time_base = fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    good = write_mp4(d / "good.mp4", SHORT_VIDEO_FRAMES)
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    damaged = bytearray(data)
    middle = len(damaged) // 3  # inside the first MAX_FRAMES frames (the index is at the end)
    damaged[middle:middle + 64] = bytes(64)  # a run of zeros inside the frame data
    (d / "damaged_middle.mp4").write_bytes(bytes(damaged))
    (d / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    write_mp4(d / "zero_frames.mp4", 0)
    rng = np.random.default_rng(1)
    irregular = np.concatenate([[0], np.cumsum(rng.integers(20, 150, SHORT_VIDEO_FRAMES - 1))])
    return {
        "good": good,
        "truncated": d / "truncated.mp4",
        "damaged_middle": d / "damaged_middle.mp4",
        "random_bytes": d / "random_bytes.mp4",
        "empty": d / "empty.mp4",
        "zero_frames": d / "zero_frames.mp4",
        "grey": write_pyav(d / "grey.mkv", frames=SHORT_VIDEO_FRAMES, width=64, height=64,
                           codec="ffv1", pix_fmt="gray", channels=1),
        "rgba_odd": write_pyav(d / "rgba_odd.mov", frames=SHORT_VIDEO_FRAMES, width=63, height=47,
                               codec="png", pix_fmt="rgba", channels=4),
        "odd_small": write_pyav(d / "odd_small.mkv", frames=SHORT_VIDEO_FRAMES, width=33, height=21,
                                codec="ffv1", pix_fmt="yuv444p", channels=3),
        "vfr": write_pyav(d / "vfr.mkv", frames=SHORT_VIDEO_FRAMES, width=64, height=64,
                          codec="ffv1", pix_fmt="yuv420p", channels=3,
                          pts_ms=[int(t) for t in irregular]),
    }


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("long") / "long.mp4", LONG_VIDEO_FRAMES)


# ------------------------------------------------------------------------------------ helpers
def stream_run_command() -> list[str]:
    script = Path(sys.executable).with_name("stream-run")
    if script.exists():
        return [str(script)]  # the console script, exactly what a user (and systemd) runs
    return [sys.executable, "-c", "import sys; from stream.run import main; sys.exit(main())"]


def quiet_args(out: Path) -> list[str]:
    """No network side effects unless a test asks for them: ZeroMQ off, metrics off."""
    return ["--out", str(out), "--no-zmq", "--metrics-port", "0"]


def run_cli(args: list[str], timeout_s: float = REFUSE_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([*stream_run_command(), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stream-run hung for more than {timeout_s} s: {args}\nstderr: {exc.stderr!r}")


def assert_one_line_error(done: subprocess.CompletedProcess[str], *mentions: str) -> str:
    """Non-zero exit, exactly one line on stderr, the cli_main format, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode > 0, f"exit {done.returncode}; stderr:\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected ONE line on stderr, got {len(lines)}:\n{done.stderr}"
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    for word in mentions:
        assert word.lower() in line.lower(), f"error line does not mention {word!r}: {line}"
    return line


def frame_rows(out: Path) -> dict[Path, list[list[str]]]:
    """Per-frame CSVs under ``out`` -> their complete data rows (header checked)."""
    result = {}
    for path in sorted(out.glob(CSV_GLOB)):
        rows, _ = strict_csv(path)
        result[path] = rows
    return result


def assert_no_frame_processed(out: Path) -> None:
    written = {p: len(rows) for p, rows in frame_rows(out).items() if rows} if out.exists() else {}
    assert not written, f"frames were processed before the error: {written}"


def strict_csv(path: Path) -> tuple[list[list[str]], bool]:
    """Rows of a frames CSV and whether the last line was cut; anything else damaged fails.

    Stricter than ``read_frames_csv``: every line but the last must be complete, parse, have the
    header's field count, and frame indices must increase.
    """
    text = path.read_text(encoding="utf-8")
    if not text:
        return [], False
    lines = text.split("\n")
    cut = lines[-1] != ""
    complete, last = (lines[:-1], lines[-1]) if cut else (lines[:-1], "")
    assert complete, f"{path}: header line incomplete: {text!r}"
    header = next(csv.reader([complete[0]]))
    assert header[:4] == ["frame", "timestamp_s", "behaviour", "immobile"], header
    rows, previous = [], -1
    for number, line in enumerate(complete[1:], start=2):
        fields = next(csv.reader([line]))
        assert len(fields) == len(header), f"{path}:{number}: {len(fields)} fields: {line!r}"
        frame = int(fields[0])
        assert frame > previous, f"{path}:{number}: frame {frame} after {previous}"
        float(fields[1])
        assert fields[3] in ("0", "1"), f"{path}:{number}: immobile={fields[3]!r}"
        probabilities = [float(x) for x in fields[4:]]
        assert all(0.0 <= p <= 1.0 for p in probabilities), f"{path}:{number}: {line!r}"
        rows.append(fields)
        previous = frame
    if cut:
        assert len(last) < 4096, f"{path}: an over-long partial last line"
    return rows, cut


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def occupied_port() -> Iterator[int]:
    """A port someone else holds: bound and listening on loopback for the whole test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------ refused before any frame is processed
def test_model_failing_its_checksum(tiny_model: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    _flip_byte(broken / "model.safetensors")
    out = tmp_path / "out"
    done = run_cli(["--video", videos["good"], "--model", broken, *quiet_args(out)])
    assert_one_line_error(done, "checksum")
    assert_no_frame_processed(out)


# A refusal needs Python, torch and OpenCV in memory (~0.5 GiB); reading a 1 GiB card took 3.4 GiB
REFUSAL_MAX_RSS_KIB = 1 << 20
PEAK_RSS_WRAPPER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
                    "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(status))")


def test_a_1_gib_model_card_is_refused_before_it_is_read(tiny_model: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    """Issue 24: a 1 GB card.json took 3.4 GB of memory before it was refused. The size is checked
    first: one line, and the process never holds the file (its peak memory stays under 1 GiB)."""
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tiny_model / "model.safetensors", model / "model.safetensors")
    card = model / "card.json"
    card.write_text((tiny_model / "card.json").read_text())
    with open(card, "r+b") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB of trailing NULs that take no disk
    out = tmp_path / "out"
    # stream-run's own peak memory: a process started from this big pytest process inherits its
    # high-water mark, so a small Python in between starts it and reports it
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *stream_run_command(), "--video", str(videos["good"]),
                           "--model", str(model), *quiet_args(out)], capture_output=True, text=True,
                          timeout=REFUSE_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
    peak_kib = int(done.stdout.strip())
    assert peak_kib < REFUSAL_MAX_RSS_KIB, f"peak memory {peak_kib / 2**20:.1f} GiB"
    assert_one_line_error(done, str(card), "1024.0 MiB is not a model card")
    assert_no_frame_processed(out)


@pytest.mark.slow
def test_missing_model_directory(videos: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos["good"], "--model", tmp_path / "no-such-model", *quiet_args(out)])
    assert_one_line_error(done, "no-such-model")
    assert_no_frame_processed(out)


WATCHDOG_WAIT_USEC = 2_000_000  # while stream-run waits for a camera, pings must come every <= 1 s


def test_camera_index_that_does_not_exist(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 14.9: a live source missing at start is waited for (STATUS says so, the watchdog is
    fed) up to --give-up-s; then one line, exit 1 like a camera lost mid-run, no empty folder."""
    out = tmp_path / "runs" / "out"
    notify = NotifyListener()
    env = {**os.environ, "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_WAIT_USEC)}
    started = time.monotonic()
    try:
        done = subprocess.run([*stream_run_command(), "--camera", "97", "--model", str(tiny_model),
                               *map(str, quiet_args(out)), "--give-up-s", str(GIVE_UP_WAIT_S),
                               "--reconnect-max-backoff-s", "0.5"], capture_output=True, text=True,
                              timeout=REFUSE_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    finally:
        notify.close()
    line = assert_one_line_error(done, "camera 97", "gave up", "--give-up-s")
    assert done.returncode == 1, line  # systemd's Restart=on-failure starts it again, to wait again
    assert "waiting for camera 97" in done.stdout
    assert not out.exists() and not out.parent.exists(), "a refused start left its output folder"
    assert time.monotonic() - started < REFUSE_TIMEOUT_S
    ready = [t for t, m in notify.messages if m.startswith("READY=1")]
    waiting = [t for t, m in notify.messages if "STATUS=waiting for camera 97" in m]
    assert ready and waiting and waiting[0] > ready[0], notify.messages
    pings = [t for t, m in notify.messages if m.startswith(("READY=1", "WATCHDOG=1"))]
    stopping = [t for t, m in notify.messages if m.startswith("STOPPING=1")] or [max(t for t, _ in notify.messages)]
    gaps = [b - a for a, b in zip(pings, [*pings[1:], stopping[0]])]
    assert len(pings) >= GIVE_UP_WAIT_S and max(gaps) < WATCHDOG_WAIT_USEC / 1e6, f"watchdog pings {gaps} s apart"


@pytest.mark.slow
def test_output_folder_under_a_file(tiny_model: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    """Unwritable even for root (tests may run as root, where chmod protects nothing)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli(["--video", videos["good"], "--model", tiny_model, *quiet_args(blocker / "out")])
    assert_one_line_error(done, "a-file")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_output_folder(tiny_model: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o500)
    try:
        done = run_cli(["--video", videos["good"], "--model", tiny_model, *quiet_args(out)])
    finally:
        out.chmod(0o700)
    assert_one_line_error(done, "read-only")
    assert_no_frame_processed(out)


def test_metrics_port_already_in_use(tiny_model: Path, videos: dict[str, Path], tmp_path: Path,
                                     occupied_port: int) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos["good"], "--model", tiny_model, "--out", out, "--no-zmq",
                    "--metrics-port", occupied_port])
    assert_one_line_error(done, str(occupied_port))
    assert_no_frame_processed(out)


@pytest.mark.slow
def test_zmq_port_already_in_use(tiny_model: Path, videos: dict[str, Path], tmp_path: Path,
                                 occupied_port: int) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos["good"], "--model", tiny_model, "--out", out,
                    "--zmq", f"tcp://127.0.0.1:{occupied_port}", "--metrics-port", "0"])
    assert_one_line_error(done, str(occupied_port))
    assert_no_frame_processed(out)


@pytest.mark.parametrize("name", ["random_bytes", pytest.param("empty", marks=pytest.mark.slow),
                                  pytest.param("zero_frames", marks=pytest.mark.slow)])
def test_unreadable_or_empty_video_is_refused(name: str, tiny_model: Path, videos: dict[str, Path],
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos[name], "--model", tiny_model, *quiet_args(out)])
    assert_one_line_error(done, videos[name].name)
    assert_no_frame_processed(out)


@pytest.mark.slow
def test_missing_video_file(tiny_model: Path, tmp_path: Path) -> None:
    done = run_cli(["--video", tmp_path / "nope.mp4", "--model", tiny_model, *quiet_args(tmp_path / "o")])
    assert_one_line_error(done, "nope.mp4")


# ------------------------------------------------------------------------- handled (or refused)
@pytest.mark.slow
def test_truncated_video_ends_early_or_is_refused(tiny_model: Path, videos: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """mp4v puts the index (moov) at the end: a cut file may be unreadable. Either outcome is
    fine; a hang, a traceback or a damaged CSV is not."""
    out = tmp_path / "out"
    done = run_cli(["--video", videos["truncated"], "--model", tiny_model, *quiet_args(out)])
    if done.returncode == 0:
        assert "Traceback" not in done.stderr, done.stderr
        frame_rows(out)  # whatever was written is valid
    else:
        assert_one_line_error(done, "truncated.mp4")
        assert_no_frame_processed(out)


@pytest.mark.slow
def test_damaged_frames_mid_file_do_not_stop_the_run(tiny_model: Path, videos: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos["damaged_middle"], "--model", tiny_model, *quiet_args(out),
                    "--max-frames", MAX_FRAMES], timeout_s=PROCESS_TIMEOUT_S)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert any(frame_rows(out).values()), "no frame written for a video with 40 decodable frames"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grey", "rgba_odd", "odd_small", "vfr"])
def test_unusual_pixel_formats_sizes_and_timing_are_processed(name: str, tiny_model: Path,
                                                              videos: dict[str, Path],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(["--video", videos[name], "--model", tiny_model, *quiet_args(out),
                    "--max-frames", MAX_FRAMES], timeout_s=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    tables = frame_rows(out)
    assert tables and all(rows for rows in tables.values()), f"no decisions written: {tables.keys()}"
    summaries = sorted(out.glob(SUMMARY_GLOB))
    assert summaries, "no summary JSON"
    for path in summaries:
        json.loads(path.read_text())


# ----------------------------------------------------------------------------------- signals
def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """stream-run in the background; stderr to a file (a pipe nobody reads could block it)."""
    with log.open("w") as stderr:
        return subprocess.Popen([*stream_run_command(), *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True, stdin=subprocess.DEVNULL, env=env)


def _wait_for_rows(process: subprocess.Popen[str], out: Path, rows: int) -> int:
    """Block until some per-frame CSV holds ``rows`` complete lines; returns how many it holds."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"stream-run ended (exit {process.returncode}) before {rows} rows")
        counts = [text.count("\n") - 1 for text in
                  (p.read_text(errors="replace") for p in out.glob(CSV_GLOB))]
        if counts and max(counts) >= rows:
            return max(counts)
        time.sleep(POLL_S)
    process.kill()
    pytest.fail(f"no {rows} CSV rows within {PROCESS_TIMEOUT_S} s")


def _finish(process: subprocess.Popen[str], log: Path) -> tuple[int, str]:
    try:
        process.wait(timeout=SIGNAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"stream-run did not exit within {SIGNAL_TIMEOUT_S} s of the signal:\n"
                    f"{log.read_text()}")
    return process.returncode, log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_flushes_csv_and_writes_summary(sig: signal.Signals, tiny_model: Path,
                                                          long_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    process = _start(["--video", long_video, "--model", tiny_model, *quiet_args(out)], log)
    seen = _wait_for_rows(process, out, ROWS_BEFORE_SIGNAL)
    process.send_signal(sig)
    code, err = _finish(process, log)
    assert code >= 0, f"killed by the signal instead of handling it (exit {code}):\n{err}"
    # SIGTERM is systemd's stop: exit 0, or Restart=on-failure would count it as a failure.
    # SIGINT is Ctrl-C: 130, so a batch script notices.
    assert code == {signal.SIGTERM: 0, signal.SIGINT: 130}[sig], f"exit {code}:\n{err}"
    assert "Traceback" not in err, err
    tables = frame_rows(out)
    for path, rows in tables.items():
        _, cut = strict_csv(path)
        assert not cut, f"{path}: clean shutdown left a partial last line"
    assert max(len(rows) for rows in tables.values()) >= seen
    assert max(len(rows) for rows in tables.values()) < LONG_VIDEO_FRAMES, "ran to the end anyway"
    summaries = sorted(out.glob(SUMMARY_GLOB))
    assert len(summaries) == len(tables), f"summaries {summaries} for CSVs {list(tables)}"
    for path in summaries:
        assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.slow
def test_kill_9_leaves_csv_valid_up_to_the_last_line(tiny_model: Path, long_video: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = _start(["--video", long_video, "--model", tiny_model, *quiet_args(out)],
                     tmp_path / "stderr.txt")
    seen = _wait_for_rows(process, out, ROWS_BEFORE_SIGNAL)
    process.kill()
    process.wait(timeout=SIGNAL_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    tables = frame_rows(out)  # strict: every line but a cut last one is complete and valid
    assert max(len(rows) for rows in tables.values()) >= seen
    from stream.outputs.csv_log import read_frames_csv

    for path, rows in tables.items():
        assert [r["frame"] for r in read_frames_csv(path)] == [int(r[0]) for r in rows]


# ------------------------------------------------------------- a network camera that goes away
class FlakyMjpegCamera:
    """An HTTP MJPEG camera on loopback that the test unplugs and plugs back in.

    Each allowed connection ("session") gets a burst of PROBE_FRAMES at once (FFmpeg reads a few
    to recognise the stream before OpenCV reports it open; stream-run then reads the first to
    check the source), then, once ``streaming`` is set, frames at 15 fps for ``session_s``
    seconds; then the connection closes: the stream ends. Connections beyond the allowed number
    get a 503 (the camera is unplugged) until ``plug_in()`` allows one more session.
    """

    FRAME_PERIOD_S = 1.0 / MODEL_FPS
    PROBE_FRAMES = 8  # measured: FFmpeg's mpjpeg probe needs >= 5 before the open returns

    def __init__(self, session_s: float) -> None:
        import http.server
        import socketserver
        import threading

        self.session_s = session_s
        self.streaming = threading.Event()
        self.allowed = 1
        self.sessions_done = 0
        self._lock = threading.Lock()
        self._started = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with camera._lock:
                    if camera._started >= camera.allowed:
                        self.send_error(503, "unplugged")
                        return
                    camera._started += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(camera.PROBE_FRAMES):
                        self._send(i)
                    camera.streaming.wait()
                    for i in range(camera.PROBE_FRAMES, int(camera.session_s * MODEL_FPS)):
                        self._send(i)
                        time.sleep(camera.FRAME_PERIOD_S)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with camera._lock:
                        camera.sessions_done += 1

            def _send(self, i: int) -> None:
                import cv2

                ok, jpg = cv2.imencode(".jpg", _square_frame(i, VIDEO_SIZE_PX, VIDEO_SIZE_PX))
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                self.wfile.write(head + jpg.tobytes() + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def plug_in(self) -> None:
        with self._lock:
            self.allowed += 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class NotifyListener:
    """Stands in for systemd's notify socket (an abstract one); records (time, message)."""

    def __init__(self) -> None:
        import threading
        import uuid

        self.name = f"@swim-stream-faults-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.name[1:].encode())
        self._sock.settimeout(POLL_S)
        self.messages: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), message))
            if message.startswith("READY=1"):
                self.ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


WATCHDOG_FAULT_USEC = 4_000_000  # shorter than each outage below: pings must go on during them
GIVE_UP_WAIT_S = 3  # a camera missing at start: waited for this long
OUTAGE_S = 3.0  # camera unplugged, then back
GIVE_UP_S = 6.0  # the second, final outage


@pytest.mark.slow
def test_camera_unplugged_reconnects_records_the_gap_then_gives_up(tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    camera = FlakyMjpegCamera(session_s=4.0)
    notify = NotifyListener()
    out = tmp_path / "out"
    env = {**os.environ, "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_FAULT_USEC)}
    log = tmp_path / "stderr.txt"
    process = _start(["--url", camera.url, "--model", tiny_model, *quiet_args(out),
                      "--give-up-s", GIVE_UP_S, "--reconnect-max-backoff-s", "0.5", "-q"], log, env)
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not notify.ready.wait(POLL_S):
            assert process.poll() is None, f"stream-run exited before READY=1: {log.read_text()}"
            assert time.monotonic() < deadline, "stream-run never sent READY=1"
        camera.streaming.set()  # session 1: 4 s of frames, then the stream ends

        def wait_sessions_done(n: int) -> None:
            while camera.sessions_done < n:
                assert time.monotonic() < deadline, f"session {n} never ended"
                assert process.poll() is None, f"stream-run exited early: {log.read_text()}"
                time.sleep(POLL_S)

        wait_sessions_done(1)
        time.sleep(OUTAGE_S)  # unplugged: reconnects get 503
        camera.plug_in()  # back: session 2, 4 s of frames, then unplugged for good
        wait_sessions_done(2)
        try:  # stream-run must give up GIVE_UP_S later
            process.wait(timeout=PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("stream-run did not give up on a camera that never came back")
    finally:
        if process.poll() is None:
            process.kill()
        camera.close()
        notify.close()

    err = log.read_text()
    assert process.returncode == 1, err  # 1: gave up (systemd's Restart=on-failure restarts it)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, err
    tables = frame_rows(out)  # valid CSVs
    assert tables, "no CSV written"
    for rows in tables.values():
        frames = [int(r[0]) for r in rows]
        jumps = [b - a for a, b in zip(frames, frames[1:])]
        assert jumps and max(jumps) > MODEL_FPS, f"no gap of > 1 s in the frame indices: {jumps}"
    summaries = [json.loads(p.read_text()) for p in out.glob(SUMMARY_GLOB)]
    assert len(summaries) == len(tables)
    run = summaries[0]["run"]
    # refused reconnects every <= 0.5 s during the 3 s outage, then the final 6 s
    assert run["gave_up"] is True and run["capture"]["reconnect_attempts"] >= 2, run
    no_frames = [g for g in run["gaps"] if g["reason"] == "no frames"]
    assert any(g["seconds_missing"] >= OUTAGE_S for g in no_frames), run["gaps"]
    # systemd's watchdog would have fired if pings stopped while the camera was away
    pings = [t for t, m in notify.messages if m.startswith(("READY=1", "WATCHDOG=1"))]
    stopping = [t for t, m in notify.messages if m.startswith("STOPPING=1")]
    assert stopping, notify.messages
    gaps = [b - a for a, b in zip(pings, [*pings[1:], stopping[0]])]
    assert max(gaps) < WATCHDOG_FAULT_USEC / 1e6, f"watchdog pings {gaps} s apart: systemd kills it"


@pytest.mark.slow
def test_camera_that_comes_up_late_is_waited_for_then_recorded(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 14.9: an IP camera booting slowly after a power cut: READY=1, STATUS says we wait,
    the watchdog is fed, and once the camera answers the test is recorded as usual."""
    camera = FlakyMjpegCamera(session_s=4.0)
    camera.allowed = 0  # still booting: every connection gets a 503
    notify = NotifyListener()
    out = tmp_path / "out"
    env = {**os.environ, "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_WAIT_USEC)}
    log = tmp_path / "stderr.txt"
    process = _start(["--url", camera.url, "--model", tiny_model, *quiet_args(out), "--give-up-s", "120",
                      "--reconnect-max-backoff-s", "0.5", "--max-frames", MAX_FRAMES, "-q"], log, env)
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not any("STATUS=waiting for" in m for _, m in notify.messages):
            assert process.poll() is None, f"stream-run exited while the camera was booting: {log.read_text()}"
            assert time.monotonic() < deadline, "stream-run never said it was waiting"
            time.sleep(POLL_S)
        time.sleep(2 * WATCHDOG_WAIT_USEC / 1e6)  # longer than the watchdog: pings must go on
        camera.plug_in()
        camera.streaming.set()
        process.wait(timeout=PROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
        camera.close()
        notify.close()
    err = log.read_text()
    assert process.returncode == 0 and "Traceback" not in err, err
    assert any(frame_rows(out).values()), "nothing recorded once the camera came up"
    pings = [t for t, m in notify.messages if m.startswith(("READY=1", "WATCHDOG=1"))]
    opened = next(t for t, m in notify.messages if "STATUS=waiting for" in m)
    waiting_pings = [t for t in pings if t >= opened]
    gaps = [b - a for a, b in zip(waiting_pings, waiting_pings[1:])]
    assert gaps and max(gaps) < WATCHDOG_WAIT_USEC / 1e6, f"watchdog pings {gaps} s apart while waiting"


@pytest.mark.slow
def test_truncated_recording_is_flagged_in_the_summary(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 14.8: a file cut at 30 % was scored as a short test, exit 0, without a word."""
    import cv2

    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), MODEL_FPS, (VIDEO_SIZE_PX, VIDEO_SIZE_PX))
    for i in range(3 * SHORT_VIDEO_FRAMES):
        writer.write(_square_frame(i, VIDEO_SIZE_PX, VIDEO_SIZE_PX))
    writer.release()
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 4 // 10])  # the header still declares 120 frames
    out = tmp_path / "out"
    done = run_cli(["--video", cut, "--model", tiny_model, *quiet_args(out)], timeout_s=PROCESS_TIMEOUT_S)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "truncated" in done.stderr and "cut.avi" in done.stderr  # the warning
    assert "TRUNCATED" in done.stdout  # the summary table
    summaries = [json.loads(p.read_text()) for p in out.glob(SUMMARY_GLOB)]
    assert summaries and all(s["run"]["truncated_recording"] is True for s in summaries)
    capture = summaries[0]["run"]["capture"]
    assert capture["source_frames_declared"] == 3 * SHORT_VIDEO_FRAMES
    assert capture["source_frames"] < capture["source_frames_declared"]


# ------------------------------------------------------------------------- disk full mid-run
FULL_DISK_FILE_BYTES = 10000  # RLIMIT_FSIZE: the per-frame CSV (about 47 bytes a row) fills up after ~210 of the 300 frames; the summary (about 7 kB since it records its run_config and input check) still fits


def _limit_file_size() -> None:
    """In the child: files may not grow past FULL_DISK_FILE_BYTES (a full disk, without root or a tmpfs).
    SIGXFSZ ignored (kept across exec) makes the kernel fail the write with EFBIG instead of killing."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_FILE_BYTES, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_exit_3_and_the_summary_if_it_fits(tiny_model: Path, long_video: Path,
                                                                           tmp_path: Path) -> None:
    """Issue 14.2: the ENOSPC was masked by a ValueError from _end_segment, no summary, rc 1."""
    out = tmp_path / "out"
    done = subprocess.run([*stream_run_command(), "--video", str(long_video), "--model", str(tiny_model),
                           *map(str, quiet_args(out)), "--engine", "torch", "--max-frames", "300", "-q"],
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          preexec_fn=_limit_file_size)
    # the results table (added after this test) also says, once, that the cut trial is incomplete: true and
    # wanted (its seconds are not a result); beside it the error stays one line
    incomplete = [x for x in done.stderr.splitlines() if "WARNING" in x and "is INCOMPLETE" in x]
    assert len(incomplete) <= 1, done.stderr
    done = subprocess.CompletedProcess(done.args, done.returncode, done.stdout,
                                       "\n".join(x for x in done.stderr.splitlines() if x not in incomplete))
    line = assert_one_line_error(done, "arena0.frames.csv", "File too large")
    assert done.returncode == 3, line  # the unit's RestartPreventExitStatus=3
    assert "the summaries were written" in line
    rows, cut = strict_csv(out / "arena0.frames.csv")
    assert rows and not cut, "the CSV must end with a complete row"
    summary = json.loads((out / "arena0.summary.json").read_text())
    assert summary["run"]["error"].startswith("cannot write") and summary["run"]["end_reason"] == "output error"
    assert summary["counters"]["frames_classified"] >= len(rows)

"""``stream-run`` end to end on small generated videos: CSVs, summaries, ZeroMQ, Prometheus, camera.

The model is a tiny untrained fused I3D (32 px). Building a frozen CPU engine costs ~10 s on the
shared test machine, so most tests hand ``stream-run`` one eager torch engine built once for the
module (``stream.runner._build_engine`` is the CLI's single engine hook); the checksum test builds for real.
Label agreement with the shipped trained model is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

import stream.run as run_mod
import stream.runner as runner_mod
from stream import capture as cap_mod
from stream.outputs.csv_log import read_frames_csv

FPS = 15.0
CLASSES = ["swim", "struggle", "float"]
FRAMES = 40
WAIT_S = 60.0  # a hang, not a slow machine


# ------------------------------------------------------------------------------------ fixtures
def write_video(path: Path, frames: int = FRAMES, fps: float = FPS, size: tuple[int, int] = (96, 48)) -> Path:
    """Two arenas side by side, a square moving in each (left fast, right slow)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    w, h = size
    for i in range(frames):
        img = np.full((h, w, 3), 40, np.uint8)
        img[10:20, (3 * i) % (w // 2 - 10):(3 * i) % (w // 2 - 10) + 10] = 220
        x = w // 2 + (i // 4) % (w // 2 - 10)
        img[25:35, x:x + 10] = 200
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


class _NoClose:
    """The shared engine survives each run's close()."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def close(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def shared_engine(model_dir):
    from stream.engine import build_engine

    engine = build_engine("torch", model_dir, device="cpu", optimize=False)
    yield engine
    engine.close()


@pytest.fixture()
def fast_engine(monkeypatch, shared_engine):
    calls = []

    def build(kind, model_dir, device, batch_size):
        calls.append((kind, Path(model_dir), device, batch_size))
        return _NoClose(shared_engine)

    monkeypatch.setattr("stream.runner._build_engine", build)
    return calls


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def video(tmp_path) -> Path:
    path = write_video(tmp_path / "two.mp4")
    arenas = {"arenas": [{"id": "A1", "roi": [0, 0, 48, 48]}, {"id": "A2", "roi": [48, 0, 48, 48]}]}
    (tmp_path / "two.arenas.json").write_text(json.dumps(arenas))  # the simulator's sidecar
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet(out: Path) -> list[str]:
    return ["--out", str(out), "--no-zmq", "--no-metrics", "-q"]


def csv_rows(out: Path, arena: str) -> list[dict]:
    return read_frames_csv(out / f"{arena}.frames.csv")


# ------------------------------------------------------------------------------------ tests
def test_video_two_arenas_writes_csv_summary_zmq_and_metrics(video, model_dir, tmp_path, fast_engine, capsys) -> None:
    out = tmp_path / "out"
    zmq_port, metrics_port = free_port(), free_port()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{zmq_port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    messages: list[tuple[str, dict]] = []
    scraped: list[str] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set() or sub.poll(200):
            if sub.poll(100):
                topic, body = sub.recv_multipart()
                messages.append((topic.decode(), json.loads(body)))

    def scrape() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "swim_stream_frames_processed_total" in text and 'arena="A2"' in text:
                    scraped.append(text)
            except OSError:
                pass
            time.sleep(0.1)

    threads = [threading.Thread(target=listen), threading.Thread(target=scrape)]
    for t in threads:
        t.start()
    try:
        # --realtime: paced like a camera (2.7 s), so the test can scrape metrics mid-run
        code = run_mod.main(["--video", str(video), "--model", str(model_dir), "--out", str(out), "--realtime", "--stride", "2",
                             "--zmq", f"tcp://127.0.0.1:{zmq_port}", "--metrics-port", str(metrics_port)])
    finally:
        time.sleep(0.3)
        done.set()
        for t in threads:
            t.join(WAIT_S)
        sub.close(0)
        ctx.term()
    assert code == 0
    printed = capsys.readouterr().out
    assert "look-ahead" in printed and "A1" in printed and "immobile" in printed  # live line + summary table
    for arena in ("A1", "A2"):
        rows = csv_rows(out, arena)
        assert [r["frame"] for r in rows] == list(range(FRAMES))
        assert all(r["behaviour"] in CLASSES for r in rows)
        assert [r["timestamp_s"] for r in rows[:3]] == pytest.approx([0, 1 / FPS, 2 / FPS], abs=1e-5)
        summary = json.loads((out / f"{arena}.summary.json").read_text())
        counters = summary["counters"]
        assert counters["frames_classified"] == FRAMES
        assert sum(counters["behaviour_s"].values()) == pytest.approx(FRAMES / FPS)
        assert summary["run"]["end_reason"] == "end of file"
        assert summary["run"]["look_ahead_s"] == pytest.approx(7 / FPS, abs=1e-3)
        assert summary["run"]["capture"]["frames_dropped_queue_full"] == 0
        # the run's whole configuration, as stream-run resolved it, is in every summary's provenance
        run_config = summary["provenance"]["run_config"]
        assert run_config["version"] == 1 and run_config["model"]["stride"] == 2 and run_config["source"]["realtime"]
        assert run_config["outputs"]["out"] == str(out)
    frames = [b for t, b in messages if b["type"] == "frame"]
    assert {b["arena"] for b in frames} == {"A1", "A2"}
    assert all(b["schema"] == 1 and set(b["probabilities"]) == set(CLASSES) for b in frames)
    assert len(frames) >= FRAMES  # a late-joining subscriber may miss the very first ones
    summaries = [t for t, b in messages if b["type"] == "summary"]
    assert sorted(summaries) == ["A1", "A2"]
    assert scraped, "the metrics endpoint never answered during the run"
    text = scraped[-1]
    for name in ("swim_stream_frames_captured_total", "swim_stream_frames_processed_total",
                 "swim_stream_behaviour_seconds_total", "swim_stream_current_behaviour",
                 "swim_stream_capture_to_decision_seconds_bucket", "swim_stream_flow_seconds_count",
                 "swim_stream_model_seconds_count", "swim_stream_engine_info", "swim_stream_fps"):
        assert name in text, name
    assert fast_engine and fast_engine[0][3] == 2  # both arenas in one batch


def test_camera_stand_in_reconnects_records_the_gap_then_gives_up(video, model_dir, tmp_path, monkeypatch,
                                                                  fast_engine, capsys) -> None:
    """``--camera 0`` opened as the video file (paced like a 30 fps camera); when it ends the camera
    is 'unplugged', comes back once for a second pass, then stays away: exit 1, complete summary."""
    opened: list[str] = []

    class PacedFile:
        def __init__(self, path: Path, fps: float) -> None:
            self.cap = cv2.VideoCapture(str(path))
            self.period_s = 1.0 / fps
            self.next_s = time.monotonic()

        def read(self):
            self.next_s += self.period_s
            time.sleep(max(0.0, self.next_s - time.monotonic()))
            return self.cap.read()

        def __getattr__(self, name):
            return getattr(self.cap, name)

    def factory(spec, **kw):
        assert spec.kind == "camera" and spec.location == "0"
        opened.append(spec.location)
        if len(opened) in (1, 3):  # first plug-in, and back after one failed attempt
            return PacedFile(video, 30.0)
        return cv2.VideoCapture()  # not opened: unplugged

    monkeypatch.setattr(cap_mod, "open_video_capture", factory)
    out = tmp_path / "cam"
    code = run_mod.main(["--camera", "0", "--model", str(model_dir), *quiet(out), "--arenas",
                         str(video.with_name("two.arenas.json")), "--stride", "8", "--queue-frames", "500",
                         "--reconnect-max-backoff-s", "0.3", "--give-up-s", "1.5"])
    assert code == 1
    assert "gave up" in capsys.readouterr().err
    for arena in ("A1", "A2"):
        rows = csv_rows(out, arena)
        summary = json.loads((out / f"{arena}.summary.json").read_text())
        gaps = summary["counters"]["gaps"]
        assert gaps["count"] == 1 and gaps["frames_missing"] > 0 and gaps["seconds_missing"] > 0.2
        frames = [r["frame"] for r in rows]
        assert frames == sorted(frames) and len(frames) == summary["counters"]["frames_classified"]
        assert frames[-1] - frames[0] + 1 == len(frames) + gaps["frames_missing"]  # indices skip the gap
        assert 30 <= len(frames) <= 44  # two passes of 40 frames at 30 fps, resampled to 15 fps
        assert summary["run"]["gave_up"] and summary["run"]["capture"]["reconnect_attempts"] >= 3


def test_sigterm_flushes_and_writes_the_summary(video, model_dir, tmp_path, fast_engine) -> None:
    out = tmp_path / "sig"

    def terminate_when_rows_appear() -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            path = out / "A1.frames.csv"
            if path.exists() and path.read_text().count("\n") >= 4:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=terminate_when_rows_appear)
    killer.start()
    code = run_mod.main(["--video", str(video), "--model", str(model_dir), *quiet(out), "--realtime", "--stride", "4"])
    killer.join(WAIT_S)
    assert code == 0  # a requested stop is a success for systemd
    rows = csv_rows(out, "A1")
    assert 3 <= len(rows) < FRAMES
    summary = json.loads((out / "A1.summary.json").read_text())
    assert summary["run"]["end_reason"] == "stopped by SIGTERM"
    assert summary["counters"]["frames_classified"] == len(rows)


def test_several_videos_by_glob_get_their_own_folders(tmp_path, model_dir, fast_engine) -> None:
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.mp4", frames=12)
    out = tmp_path / "batch"
    code = run_mod.main(["--video", str(tmp_path / "*.mp4"), "--model", str(model_dir), *quiet(out),
                         "--roi", "0,0,48,48", "--preview", str(tmp_path / "p.mp4"), "--stride", "4"])
    assert code == 0
    for name in ("a", "b"):
        assert [r["frame"] for r in csv_rows(out / name, "arena0")] == list(range(12))
        assert (tmp_path / f"p-{name}.mp4").stat().st_size > 0


def test_video_at_30_fps_is_resampled_to_the_model_rate(tmp_path, model_dir, fast_engine) -> None:
    video = write_video(tmp_path / "v30.mp4", frames=30, fps=30.0)
    out = tmp_path / "o"
    assert run_mod.main(["--video", str(video), "--model", str(model_dir), *quiet(out), "--stride", "4"]) == 0
    rows = csv_rows(out, "arena0")
    assert len(rows) == 15 and rows[-1]["timestamp_s"] == pytest.approx(14 / FPS)


# --------------------------------------------------------------- refused before the first frame
def _no_csv(out: Path) -> bool:
    return not list(out.glob("**/*.frames.csv")) if out.exists() else True


def test_refusals_are_one_line_and_come_before_any_frame(video, model_dir, tmp_path, fast_engine, capsys) -> None:
    out = tmp_path / "o"
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    cases = [
        (["--video", str(video), "--model", str(model_dir), "--out", str(out), "--no-zmq", "--metrics-port", str(port)],
         str(port)),
        (["--video", str(video), "--model", str(model_dir), "--out", str(out), "--no-metrics",
          "--zmq", f"tcp://127.0.0.1:{port}"], str(port)),
        (["--video", str(video), "--model", str(model_dir), *quiet(video / "sub")], "two.mp4"),
        (["--video", str(tmp_path / "none.mp4"), "--model", str(model_dir), *quiet(out)], "none.mp4"),
        (["--video", str(video), "--model", str(tmp_path / "no-model"), *quiet(out)], "no-model"),
        (["--video", str(video), "--model", str(model_dir), *quiet(out), "--roi", "0,0,200,48"], "does not fit"),
        (["--video", str(video), "--model", str(model_dir), *quiet(out), "--stride", "0"], "stride"),
    ]
    try:
        for argv, mention in cases:
            code = run_mod.main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2, argv
            assert len(err) == 1 and err[0].startswith("stream-run: error: ") and mention in err[0], (argv, err)
            assert _no_csv(out), argv
    finally:
        blocker.close()
    assert not fast_engine  # every refusal came before the engine was even built
    # a camera is opened last (after the engine is warm, so its frames are fresh), still before any frame;
    # one that is not there is waited for up to --give-up-s, then exit 1 as for a camera lost mid-run
    assert run_mod.main(["--camera", "97", "--model", str(model_dir), *quiet(out), "--give-up-s", "1",
                         "--reconnect-max-backoff-s", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "camera 97" in err[0] and "gave up" in err[0] and _no_csv(out)


def test_model_failing_its_checksum_is_refused(video, model_dir, tmp_path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    out = tmp_path / "o"
    assert run_mod.main(["--video", str(video), "--model", str(broken), *quiet(out)]) == 2
    assert "checksum" in capsys.readouterr().err
    assert _no_csv(out)


def test_missing_bundled_model_is_a_clear_error(video, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("stream.runner.default_model_dir", lambda: tmp_path / "trained_models" / "fst-side-64")
    assert run_mod.main(["--video", str(video), *quiet(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err


def test_resume_after_a_crash_appends_only_missing_frames(video, model_dir, tmp_path, fast_engine) -> None:
    out = tmp_path / "resume"
    argv = ["--video", str(video), "--model", str(model_dir), *quiet(out), "--stride", "8"]
    assert run_mod.main(argv) == 0
    path = out / "A1.frames.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:11]) + lines[11][:9])  # header + 10 rows + a line cut by kill -9
    assert run_mod.main([*argv, "--resume"]) == 0
    assert [r["frame"] for r in csv_rows(out, "A1")] == list(range(FRAMES))
    assert json.loads((out / "A1.summary.json").read_text())["counters"]["frames_classified"] == FRAMES


def test_a_second_run_into_the_same_folder_is_refused_and_the_results_kept(video, model_dir, tmp_path, fast_engine,
                                                                           capsys) -> None:
    """Issue 14.1: it truncated the first run's CSVs with one WARNING and exited 0."""
    out = tmp_path / "run"
    argv = ["--video", str(video), "--model", str(model_dir), *quiet(out), "--stride", "8"]
    assert run_mod.main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run_mod.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never overwritten" in err[0] and "--out" in err[0] and "--resume" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_refuses_another_video(video, model_dir, tmp_path, fast_engine, capsys) -> None:
    """Issue 14.1: --resume with another video appended its rows to the first video's CSVs."""
    out = tmp_path / "resume"
    args = ["--model", str(model_dir), *quiet(out), "--stride", "8", "--arenas", str(tmp_path / "two.arenas.json")]
    assert run_mod.main(["--video", str(video), *args]) == 0
    csv_path = out / "A1.frames.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:11]))  # a crashed run: 10 rows
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    longer = write_video(other_dir / "two.mp4", frames=FRAMES + 5)  # another recording
    moved = other_dir / "moved.mp4"
    moved.write_bytes(video.read_bytes())  # the same bytes under another path
    capsys.readouterr()
    for candidate, differs in ((longer, "size"), (moved, "path")):
        assert run_mod.main(["--video", str(candidate), *args, "--resume"]) == 2, candidate
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not the video" in err[0] and differs in err[0], err
    (out / "source.json").unlink()  # a folder whose source nobody recorded cannot be continued either
    assert run_mod.main(["--video", str(video), *args, "--resume"]) == 2
    assert "source.json" in capsys.readouterr().err
    before.pop("source.json")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing was appended anywhere


@pytest.mark.parametrize("umask", [0o027, 0o022], ids=["umask0027", "umask0022"])
def test_every_output_file_follows_the_process_umask(video, model_dir, tmp_path, fast_engine, umask) -> None:
    """Issue 14.3: summaries were 0600 (mkstemp) while the CSVs followed the umask, so under the
    unit's UMask=0027 the lab group could read the CSVs but not the summaries."""
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert run_mod.main(["--video", str(video), "--model", str(model_dir), *quiet(out), "--stride", "8",
                             "--preview", str(out / "preview.mp4")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert {"A1.frames.csv", "A1.summary.json", "preview.mp4", "source.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_failed_start_leaves_no_folder_but_a_result_is_never_removed(tmp_path) -> None:
    """Issue 14.2: under systemd a start that failed on a full disk left an empty folder per restart."""
    failed = tmp_path / "runs" / "failed"
    failed.mkdir(parents=True)
    (failed / "source.json").write_text("{}")
    (failed / "A1.frames.csv").write_text("frame,timestamp_s,behaviour,immobile,p_swim\n")  # header only
    runner_mod._remove_start_debris([failed, failed.parent])
    assert not failed.parent.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "A1.frames.csv").write_text("frame,timestamp_s,behaviour,immobile,p_swim\n0,0.0,swim,0,1.0\n")
    runner_mod._remove_start_debris([kept])
    assert (kept / "A1.frames.csv").exists()


def test_streaming_engine_runs_live_on_the_video(video, model_dir, tmp_path) -> None:
    """``--engine streaming`` end to end (the real engine, no stand-in): a decision for every frame."""
    out = tmp_path / "s"
    assert run_mod.main(["--video", str(video), "--model", str(model_dir), *quiet(out), "--engine", "streaming"]) == 0
    for arena in ("A1", "A2"):
        rows = csv_rows(out, arena)
        assert [r["frame"] for r in rows] == list(range(FRAMES))


def test_settings_from_a_toml_file_with_spaces_in_its_paths(tmp_path, model_dir, fast_engine) -> None:
    """Issue 23: `stream-run --config rig.toml` (what the systemd unit passes): paths with spaces in the
    file reach the run whole, relative ones from the file's folder; a flag typed on the command line wins."""
    rig_dir = tmp_path / "rig settings"
    (rig_dir / "my videos").mkdir(parents=True)
    write_video(rig_dir / "my videos" / "cam 0.mp4", frames=12)
    rig = rig_dir / "rig.toml"
    rig.write_text(f'[source]\nvideos = ["my videos/cam 0.mp4"]\n[arenas]\nrois = ["0,0,48,48"]\n'
                   f'[model]\ndir = "{model_dir}"\nstride = 1\n'
                   f'[outputs]\nout = "run dir/first"\nzmq = "tcp://127.0.0.1:1"\nmetrics_port = 0\nquiet = true\n')
    out = tmp_path / "out dir"
    assert run_mod.main(["--config", str(rig), "--out", str(out), "--no-zmq", "--stride", "4"]) == 0
    assert [r["frame"] for r in csv_rows(out, "arena0")] == list(range(12))
    assert not (rig_dir / "run dir").exists()  # --out typed on the command line won over the file's
    provenance = json.loads((out / "arena0.summary.json").read_text())["provenance"]
    assert provenance["run_config"]["model"]["stride"] == 4 and provenance["run_config"]["outputs"]["zmq"] is None
    assert provenance["source"].endswith("cam 0.mp4")


def _trained_for_streaming(model_dir: Path, out: Path) -> Path:
    """A copy of the test model whose card says it was trained for streaming (the weights are the card's)."""
    shutil.copytree(model_dir, out)
    card = json.loads((out / "card.json").read_text())
    card["trained_for"] = "streaming"
    (out / "card.json").write_text(json.dumps(card))
    return out


def test_a_card_trained_for_streaming_runs_streaming_under_auto_and_is_refused_clip_wise(video, model_dir, tmp_path, capsys) -> None:
    """Issue 22: ``auto`` picks the streaming engine for it; a clip-wise engine refuses it in one line."""
    streaming = _trained_for_streaming(model_dir, tmp_path / "streaming-model")
    out = tmp_path / "s"
    assert run_mod.main(["--video", str(video), "--model", str(streaming), *quiet(out)]) == 0
    assert [r["frame"] for r in csv_rows(out, "A1")] == list(range(FRAMES))
    assert json.loads((out / "A1.summary.json").read_text())["run"]["engine"].startswith("streaming")
    capsys.readouterr()
    assert run_mod.main(["--video", str(video), "--model", str(streaming), *quiet(tmp_path / "t"), "--engine", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained for the streaming engine" in err[0] and "--engine streaming" in err[0], err


def test_a_model_trained_on_mouse_crops_runs_and_a_step_wise_engine_refuses_it(video, model_dir, tmp_path, capsys) -> None:
    """Issue 21: a card with crop "mouse" runs on the live mouse windows (the real clip-wise engine, built
    from that card); ``--engine streaming-torch`` refuses it in one line, before any frame or engine."""
    mouse_dir = tmp_path / "mouse-model"
    shutil.copytree(model_dir, mouse_dir)
    card = json.loads((mouse_dir / "card.json").read_text())
    (mouse_dir / "card.json").write_text(json.dumps({**card, "crop": "mouse"}))
    out = tmp_path / "o"
    assert run_mod.main(["--video", str(video), "--model", str(mouse_dir), *quiet(out), "--engine", "torch", "--stride", "4",
                         "--preview", str(out / "preview.mp4")]) == 0
    cap = cv2.VideoCapture(str(out / "preview.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES  # drawn with the mouse windows (tests/test_clip_source.py)
    cap.release()
    for arena in ("A1", "A2"):
        assert [r["frame"] for r in csv_rows(out, arena)] == list(range(FRAMES))
        run = json.loads((out / f"{arena}.summary.json").read_text())["run"]
        assert run["frames_processed"] == FRAMES and run["input_crop"] == "mouse"
    capsys.readouterr()
    refused = tmp_path / "r"
    assert run_mod.main(["--video", str(video), "--model", str(mouse_dir), *quiet(refused), "--engine", "streaming-torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stream-run: error: ") and "which a step-wise engine cannot follow" in err[0], err
    assert _no_csv(refused)

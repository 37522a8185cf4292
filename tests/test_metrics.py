"""Prometheus metrics: scraped over HTTP from the started server, names, values, port errors."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.decisions import ArenaDecisions, DecisionConfig
from stream.errors import UserError
from stream.outputs.metrics import Metrics

CLASSES = ["swim", "struggle", "float"]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scrape_after_decisions() -> None:
    fps = 10.0
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=fps))
    onehot = {"swim": [0.8, 0.1, 0.1], "float": [0.1, 0.1, 0.8]}
    labels = ["swim", "float", "float", "swim", "float"]
    with Metrics(port=0) as m:
        for i, lab in enumerate(labels):
            for d in arena.update(i, i / fps, np.array(onehot[lab])):
                m.observe_decision("A", d, 1 / fps)
        m.frames_captured.inc(5)
        m.frames_captured.labels(camera="2").inc()
        m.frames_processed.inc(5)
        m.frames_dropped.inc()
        m.frames_dropped.labels(arena="A", reason="queue_full").inc(2)
        m.fps.set(14.5)
        m.latency_seconds.observe(0.6)
        m.flow_seconds.observe(0.02)
        m.model_seconds.observe(0.05)
        m.engine_info.info({"engine": "torch", "device": "cpu"})
        m.zmq_dropped.inc(3)
        m.capture_gaps.inc()
        got = scrape(m.port)
    assert got[("swim_stream_behaviour_seconds_total", (("arena", "A"), ("behaviour", "float")))] == pytest.approx(0.3)
    assert got[("swim_stream_behaviour_seconds_total", (("arena", "A"), ("behaviour", "swim")))] == pytest.approx(0.2)
    assert got[("swim_stream_immobile_seconds", (("arena", "A"),))] == pytest.approx(0.3)
    assert got[("swim_stream_immobility_bouts", (("arena", "A"),))] == 2
    assert got[("swim_stream_current_behaviour", (("arena", "A"), ("behaviour", "float")))] == 1
    assert got[("swim_stream_current_behaviour", (("arena", "A"), ("behaviour", "swim")))] == 0
    assert got[("swim_stream_current_behaviour", (("arena", "A"), ("behaviour", "struggle")))] == 0
    assert got[("swim_stream_frames_captured_total", (("camera", "main"),))] == 5
    assert got[("swim_stream_frames_captured_total", (("camera", "2"),))] == 1
    assert got[("swim_stream_frames_processed_total", ())] == 5
    assert got[("swim_stream_frames_dropped_total", (("arena", "all"), ("reason", "unspecified")))] == 1
    assert got[("swim_stream_frames_dropped_total", (("arena", "A"), ("reason", "queue_full")))] == 2
    assert got[("swim_stream_fps", ())] == 14.5
    assert got[("swim_stream_capture_to_decision_seconds_count", ())] == 1
    assert got[("swim_stream_capture_to_decision_seconds_bucket", (("le", "0.75"),))] == 1
    assert got[("swim_stream_capture_to_decision_seconds_bucket", (("le", "0.5"),))] == 0
    assert got[("swim_stream_flow_seconds_sum", ())] == pytest.approx(0.02)
    assert got[("swim_stream_model_seconds_count", ())] == 1
    assert got[("swim_stream_engine_info", (("device", "cpu"), ("engine", "torch")))] == 1
    assert got[("swim_stream_zmq_dropped_messages_total", ())] == 3
    assert got[("swim_stream_capture_gaps_total", ())] == 1


def test_instances_have_their_own_registries() -> None:
    a, b = Metrics(port=None), Metrics(port=None)
    a.frames_processed.inc()
    assert a.registry.get_sample_value("swim_stream_frames_processed_total") == 1
    assert b.registry.get_sample_value("swim_stream_frames_processed_total") == 0
    assert a.port is None
    a.close()
    b.close()


def test_port_in_use_is_a_user_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port} is already in use"):
            Metrics(port=port)


def test_close_frees_the_port() -> None:
    m = Metrics(port=0)
    port = m.port
    m.close()
    again = Metrics(port=port)
    assert scrape(again.port)  # serving again on the same port
    again.close()


def test_scrape_sees_zeroed_series_then_trial_gauges_and_the_source_as_camera() -> None:
    from stream.outputs.metrics import camera_label
    from stream.trials import Trial

    fps = 10.0
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=fps, test_duration_s=2.0, scoring_window_s=1.0, bin_s=1.0))
    with Metrics(port=0) as m:
        m.frame_period_s = 1 / fps
        m.start_source(camera_label("url", "rtsp://user:secret@10.0.0.5:554/cam1"), ["A"], CLASSES)
        before = scrape(m.port)
        assert before[("swim_stream_frames_captured_total", (("camera", "10.0.0.5:554/cam1"),))] == 0
        assert not any("secret" in str(k) for k in before)
        for name in ("swim_stream_trial_active", "swim_stream_trial_elapsed_seconds", "swim_stream_immobile_seconds",
                     "swim_stream_bin_immobile_seconds"):
            assert before[(name, (("arena", "A"),))] == 0, name  # panels show 0, not "No data"
        assert before[("swim_stream_behaviour_seconds_total", (("arena", "A"), ("behaviour", "float")))] == 0
        trial = Trial("A-t001-M1", "A", animal="M1")
        m.on_trial_start(trial)
        for i in range(15):  # 1.5 s of float: the second bin is the current one
            for d in arena.update(i, i / fps, np.array([0.1, 0.1, 0.8])):
                m.on_decision("A", d, 0.5)
        during = scrape(m.port)
        assert during[("swim_stream_trial_active", (("arena", "A"),))] == 1
        assert during[("swim_stream_trial_elapsed_seconds", (("arena", "A"),))] == pytest.approx(1.5)
        assert during[("swim_stream_bin_index", (("arena", "A"),))] == 2
        assert during[("swim_stream_bin_immobile_seconds", (("arena", "A"),))] == pytest.approx(0.5)
        assert during[("swim_stream_last_decision_timestamp_seconds", (("arena", "A"),))] > 1.7e9
        m.on_trial_end(trial, arena.trial_summary())  # 1.5 s of a 6-minute test: not complete
        after = scrape(m.port)
        assert after[("swim_stream_trial_active", (("arena", "A"),))] == 0
        assert after[("swim_stream_trials_finished_total", (("arena", "A"),))] == 1
        assert after[("swim_stream_trial_complete", (("arena", "A"),))] == 0


def test_camera_label_names_the_source_without_credentials() -> None:
    from stream.outputs.metrics import camera_label

    assert camera_label("camera", "0") == "camera0"
    assert camera_label("file", "/data/runs/mouse 3.mp4") == "mouse 3.mp4"
    assert camera_label("url", "http://cam.lab:8080/video?x=1") == "cam.lab:8080/video"


def test_missing_frames_stride_and_out_of_depth_are_metrics() -> None:
    """Issue 24: the share of a trial's frames missing (alerted on above 5 %), the stride in use, and
    a trial the model was out of its depth on."""
    from stream.decisions import ArenaDecisions, DecisionConfig
    from stream.outputs.base import Status
    from stream.trials import Trial

    m = Metrics(port=None)
    m.start_source("cam", ["A"], ["swim", "struggle", "float"])
    arena = ArenaDecisions("A", ["swim", "struggle", "float"], DecisionConfig(fps=10.0))
    for i in list(range(10)) + list(range(14, 20)):  # 4 of 20 frames dropped
        arena.update(i, i / 10, np.array([0.8, 0.1, 0.1]))
    m.on_status(Status(frames_processed=16, frames_captured=20, fps=9.0, frames_dropped=4, gaps=1,
                       arenas={"A": arena.counters()}, stride_frames=4))
    reg = m.registry
    assert reg.get_sample_value("swim_stream_frames_missing_ratio", {"arena": "A"}) == pytest.approx(0.2)
    assert reg.get_sample_value("swim_stream_stride_frames") == 4
    trial = Trial("A-t001", "A")
    ended = arena.trial_summary()
    m.on_trial_end(trial, dataclasses.replace(ended, input_check={"warnings": ["brightness ..."]}))
    assert reg.get_sample_value("swim_stream_out_of_depth", {"arena": "A"}) == 1
    m.on_trial_start(trial)
    m.on_trial_end(trial, dataclasses.replace(ended, counters=dataclasses.replace(ended.counters, test_complete=True),
                                              input_check={"warnings": []}))
    assert reg.get_sample_value("swim_stream_out_of_depth", {"arena": "A"}) == 0


def test_alert_rules_cover_missing_frames() -> None:
    import shutil
    import subprocess

    from pathlib import Path

    import yaml

    rules = Path(__file__).resolve().parents[1] / "monitoring" / "alerts.yml"
    alerts = {r["alert"]: r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert "swim_stream_frames_missing_ratio" in alerts["SwimStreamFramesMissing"]["expr"]
    assert "0.05" in alerts["SwimStreamFramesMissing"]["expr"]
    if shutil.which("promtool"):
        subprocess.run(["promtool", "check", "rules", str(rules)], check=True)

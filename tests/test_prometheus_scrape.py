"""A real Prometheus server scrapes our metrics endpoint; we read the values back through its API.

This is what a station's monitoring does, so it catches what a unit test of the exposition cannot:
names Prometheus rejects, an endpoint it cannot parse, dashboard queries that are not valid PromQL
or name metrics we do not export. Needs the `prometheus` binary (Debian package `prometheus`,
installed by .ci/install-system-deps.sh); skips with that reason when it is absent.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.outputs.metrics import Metrics

REPO = Path(__file__).parents[1]
DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"
PROMETHEUS_CONFIG_EXAMPLE = REPO / "monitoring" / "prometheus.yml"
ALERT_RULES = REPO / "monitoring" / "alerts.yml"
SCRAPE_INTERVAL_S = 1  # the shortest Prometheus takes comfortably; a test waits a few of these
STARTUP_TIMEOUT_S = 30.0  # TSDB creation + config load, on a busy 2-core CI box
SCRAPE_TIMEOUT_S = 30.0  # until a scraped value is queryable: first scrape + query staleness
POLL_S = 0.25
HTTP_TIMEOUT_S = 5.0
JOB = "swim-stream"
# Grafana's template variables and interval macros, replaced so the queries run as-is.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__range": "5m", "$job": ".*", "$instance": ".*",
                  "$arena": ".*"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return json.load(response)


class PrometheusServer:
    """A throw-away Prometheus on loopback: temp config and TSDB, killed at the end."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                       "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{"job_name": JOB, "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                                "static_configs": [{"targets": targets}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S) as response:
                    if response.status == 200:
                        return
            time.sleep(POLL_S)
        raise AssertionError(f"prometheus not ready after {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def query(self, promql: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            return _get_json(url)
        except urllib.error.HTTPError as exc:  # 400 = bad PromQL: return the error body
            return json.load(exc)

    def wait_value(self, promql: str, predicate, what: str,
                   timeout_s: float = SCRAPE_TIMEOUT_S) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` holds; fail with the last answer."""
        deadline = time.monotonic() + timeout_s
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = self.query(promql)
            result = answer.get("data", {}).get("result", [])
            if answer.get("status") == "success" and result and predicate(result):
                return result
            time.sleep(POLL_S)
        raise AssertionError(f"{what}: last answer to {promql!r}: {answer}\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus binary not installed (Debian package 'prometheus'; "
                    ".ci/install-system-deps.sh installs it)")
    return exe


@contextlib.contextmanager
def running_prometheus(workdir: Path, targets: list[str]) -> Iterator[PrometheusServer]:
    server = PrometheusServer(prometheus_binary(), workdir, targets)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, Metrics]]:
    """Our real metrics HTTP endpoint (ephemeral port) and a Prometheus scraping it every second."""
    prometheus_binary()
    metrics = Metrics(port=0, addr="127.0.0.1")
    try:
        with running_prometheus(tmp_path_factory.mktemp("prometheus"),
                                [f"127.0.0.1:{metrics.port}"]) as server:
            yield server, metrics
    finally:
        metrics.close()


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def test_prometheus_scrapes_our_endpoint_and_serves_the_values_back(
    scraped: tuple[PrometheusServer, Metrics]
) -> None:
    server, metrics = scraped
    metrics.frames_processed.inc(42)
    metrics.immobile_seconds.labels(arena="0").set(12.5)
    metrics.current_behaviour.labels(arena="0", behaviour="float").set(1)
    metrics.latency_seconds.observe(0.6)

    server.wait_value(f'up{{job="{JOB}"}}', lambda r: _value(r[0]) == 1.0, "target never up")
    server.wait_value("swim_stream_frames_processed_total", lambda r: _value(r[0]) == 42.0,
                      "processed frames never read back")
    result = server.wait_value('swim_stream_immobile_seconds{arena="0"}',
                               lambda r: _value(r[0]) == 12.5, "immobile seconds never read back")
    assert result[0]["metric"]["job"] == JOB

    metrics.frames_processed.inc(8)  # a live value: the next scrape must see the change
    server.wait_value("swim_stream_frames_processed_total", lambda r: _value(r[0]) == 50.0,
                      "a later increment was never scraped")
    server.wait_value('swim_stream_current_behaviour{arena="0",behaviour="float"}',
                      lambda r: _value(r[0]) == 1.0, "current behaviour never read back")


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and "label_values" in query.get("query", ""):
            # label_values(metric{sel}, label) is Grafana's, not PromQL: check its selector part.
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    assert exprs, "dashboard has no queries"
    return exprs


def _grafana_to_promql(expr: str) -> str:
    for macro in sorted(GRAFANA_MACROS, key=len, reverse=True):
        expr = expr.replace(macro, GRAFANA_MACROS[macro])
    return expr


def _exported_series_names(metrics: Metrics) -> set[str]:
    """Every series name the endpoint can expose, from the registry's metric families."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "info": ["_info"], "gauge": [""], "summary": ["", "_sum", "_count", "_created"]}
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_dashboard_uses_only_exported_metric_names() -> None:
    metrics = Metrics(port=None)
    exported = _exported_series_names(metrics)
    used = {name for expr in _dashboard_exprs() for name in re.findall(r"\bswim_stream_\w+", expr)}
    assert used, "dashboard queries no swim_stream_ metric"
    assert not used - exported, f"dashboard names metrics we do not export: {sorted(used - exported)}"
    # The panels the issue asks for: current behaviour, immobile seconds, fps, latency, drops.
    for required in ("swim_stream_current_behaviour", "swim_stream_immobile_seconds", "swim_stream_fps",
                     "swim_stream_capture_to_decision_seconds_bucket", "swim_stream_frames_dropped_total"):
        assert required in used, f"dashboard lacks a panel on {required}"


def test_dashboard_queries_are_valid_promql(scraped: tuple[PrometheusServer, Metrics]) -> None:
    server, _ = scraped
    errors = []
    for expr in _dashboard_exprs():
        answer = server.query(_grafana_to_promql(expr))
        if answer.get("status") != "success":
            errors.append(f"{expr}: {answer.get('error')}")
    assert not errors, "\n".join(errors)


def test_example_scrape_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    done = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG_EXAMPLE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    done = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_cover_the_issue_and_name_only_exported_metrics() -> None:
    import yaml

    rules = [r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"SwimStreamDown", "SwimStreamBelowRealTime", "SwimStreamStaleDecisions",
                                           "SwimStreamCaptureGaps"}
    exported = _exported_series_names(Metrics(port=None))
    used = {n for r in rules for n in re.findall(r"\bswim_stream_\w+", r["expr"])}
    assert used and not used - exported, sorted(used - exported)
    for r in rules:
        assert r["annotations"]["summary"] and r["labels"]["severity"] in ("warning", "critical")


def test_dashboard_has_trial_and_bin_panels() -> None:
    used = {name for expr in _dashboard_exprs() for name in re.findall(r"\bswim_stream_\w+", expr)}
    for required in ("swim_stream_trial_active", "swim_stream_trial_elapsed_seconds",
                     "swim_stream_last_decision_timestamp_seconds", "swim_stream_bin_immobile_seconds"):
        assert required in used, f"dashboard lacks a panel on {required}"


# ------------------------------------------------------------------- a running stream-run, end to end
STREAM_RUN_START_TIMEOUT_S = 900.0  # engine build (TorchScript freeze) takes minutes on a busy box
STREAM_RUN_STOP_TIMEOUT_S = 120.0
LIVE_VIDEO_FRAMES = 1800  # 2 min at 15 fps with --realtime: outlives the test, which stops it


@pytest.mark.slow
def test_prometheus_scrapes_a_running_stream_run(tmp_path: Path, tiny_model: Path, moving_square_video) -> None:
    """The issue's check: Prometheus scrapes `stream-run` itself while it works on a paced video."""
    import signal
    import sys

    metrics_port = _free_port()
    model = tiny_model
    video = moving_square_video(tmp_path / "live.mp4", LIVE_VIDEO_FRAMES)
    script = Path(sys.executable).with_name("stream-run")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from stream.run import main; sys.exit(main())"]
    with running_prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"]) as server:
        process = subprocess.Popen(
            [*command, "--video", str(video), "--realtime", "--model", str(model),
             "--out", str(tmp_path / "out"), "--no-zmq", "--metrics-port", str(metrics_port), "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            server.wait_value("swim_stream_frames_processed_total", lambda r: _value(r[0]) > 0,
                              "stream-run processed no frame Prometheus could see",
                              timeout_s=STREAM_RUN_START_TIMEOUT_S)
            server.wait_value(f'up{{job="{JOB}"}}', lambda r: _value(r[0]) == 1.0, "target down")
            current = server.wait_value(
                "sum by (arena) (swim_stream_current_behaviour)", lambda r: True,
                "no current behaviour", timeout_s=STREAM_RUN_START_TIMEOUT_S)
            assert all(_value(sample) == 1.0 for sample in current), current  # one-hot per arena
            # zero-initialised when the source starts, 1 once the arena's trial (--video: now) has begun
            server.wait_value("swim_stream_trial_active", lambda r: len(r) > 0 and all(_value(x) == 1.0 for x in r),
                              "trial gauge never showed a running trial")
            server.wait_value("swim_stream_trial_elapsed_seconds", lambda r: _value(r[0]) > 0, "trial clock stands")
            info = server.wait_value("swim_stream_engine_info", lambda r: True, "no engine info")
            assert info[0]["metric"].get("model") == "tiny-test", info
            assert process.poll() is None, "stream-run ended before the test stopped it"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                _, err = process.communicate(timeout=STREAM_RUN_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
        assert process.returncode == 0, err

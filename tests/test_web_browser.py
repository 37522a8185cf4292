"""The lab's page in a real browser: Debian's chromium, driven by Selenium, on a ``--realtime`` run.

It opens the page of ``stream-run --web`` on a generated two-cylinder video (``tiny_model``), sees
the arenas and counters update, starts and stops a trial with an animal ID, draws an ROI and saves
the arena file, and downloads the ``.xlsx``, which openpyxl reads back. Screenshots of each tab are
written to the test's tmp folder (``SWIM_STREAM_SCREENSHOTS=DIR`` copies them there too).

Marked ``browser``: not in the default run (Chromium's install takes about a minute on CI, see
README "The lab's screen"); ``.ci/run`` runs these where ``/usr/bin/chromium`` is. Without chromium,
its driver or Selenium they skip and say why. The browser never reaches the network: it starts with
background networking, component updates and sync off, from a fresh profile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rig_video import write_rig_video

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
START_TIMEOUT_S = 300.0  # model load and engine warm-up on a busy 2-core box
WAIT_S = 30.0
VIDEO_S = 120.0  # long enough for every step; the run is stopped with SIGTERM at the end


def _need_browser():
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")
    return pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the page or the server is not there yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} (last: {last!r})")


def _browser(downloads: Path, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1280,860"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def _save_shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"web-{name}.png"
    driver.save_screenshot(str(path))
    extra = os.environ.get("SWIM_STREAM_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def test_page_of_a_realtime_run_end_to_end(tmp_path, tiny_model) -> None:
    _need_browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    openpyxl = pytest.importorskip("openpyxl")
    t0 = time.monotonic()
    video = write_rig_video(tmp_path / "rec", VIDEO_S)
    out, port = tmp_path / "out", _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stream.run import main; sys.exit(main())", "--video", str(video),
         "--realtime", "--model", str(tiny_model), "--engine", "torch", "--device", "cpu", "--out", str(out),
         "--no-zmq", "--no-metrics", "-q", "--trials", "control", "--web", f"127.0.0.1:{port}",
         "--test-duration-s", "60", "--scoring-window-s", "30", "--bin-s", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = None
    try:
        def state():
            with urllib.request.urlopen(url + "api/state", timeout=2) as r:
                return json.load(r)

        _wait(lambda: (state().get("frame") or {}).get("seq", 0) > 2 and state()["trials_open"],
              "stream-run's page never showed frames", START_TIMEOUT_S)
        started_run = time.monotonic()
        driver = _browser(tmp_path / "downloads", tmp_path / "profile")
        driver.get(url)
        # live view: the picture, both arenas drawn, counters moving
        _wait(lambda: driver.find_element(By.ID, "live-img").get_attribute("src").startswith(url + "api/frame.jpg"),
              "no picture")
        _wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#live-svg rect")) == 2, "arenas not drawn")
        pill = driver.find_element(By.ID, "status")
        first = _wait(lambda: pill.text if "frames" in pill.text else None, "no counters")
        _wait(lambda: pill.text != first and "frames" in pill.text, "frame counter does not move")
        # trials: start A1 with an animal ID, watch its clock, stop it
        driver.find_element(By.ID, "animal-A1").send_keys("M7")
        driver.find_element(By.ID, "group-A1").send_keys("saline")
        driver.find_element(By.ID, "start-A1").click()
        msg = driver.find_element(By.ID, "msg-A1")
        _wait(lambda: "started A1-t001-M7" in msg.text, "start not confirmed")
        card = driver.find_element(By.ID, "card-A1")
        elapsed = card.find_element(By.CSS_SELECTOR, '[data-k="elapsed"]')
        _wait(lambda: float(elapsed.text) >= 3.0 if elapsed.text != "-" else False, "trial clock stands")
        assert card.find_element(By.CSS_SELECTOR, '[data-k="state"]').text == "running"
        assert card.find_element(By.CSS_SELECTOR, '[data-k="animal"]').text == "M7 / saline"
        assert card.find_elements(By.CSS_SELECTOR, ".bars div")  # the per-bin bar
        _save_shot(driver, tmp_path, "live")
        driver.find_element(By.ID, "stop-A1").click()
        _wait(lambda: "stopped A1-t001-M7" in msg.text, "stop not confirmed")
        _wait(lambda: (out / "results.csv").exists(), "no results row after the stop")
        # a bad ID is refused with stream-ctl's message
        animal = driver.find_element(By.ID, "animal-A2")
        animal.send_keys("M8;rm")
        driver.find_element(By.ID, "start-A2").click()
        _wait(lambda: "not allowed" in driver.find_element(By.ID, "msg-A2").text, "bad ID not refused")
        # arenas: draw a third ROI on the picture and save the arena file
        driver.find_element(By.ID, "tab-arenas").click()
        canvas = driver.find_element(By.ID, "edit-canvas")
        _wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#arena-list .arena-item")) == 2, "arenas not listed")
        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(driver).move_to_element_with_offset(canvas, int(-w * 0.45), int(-h * 0.4)).click_and_hold() \
            .move_by_offset(int(w * 0.08), int(h * 0.3)).move_by_offset(int(w * 0.02), int(h * 0.1)).release().perform()
        _wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#arena-list .arena-item")) == 3, "ROI not drawn")
        driver.find_element(By.ID, "save").click()
        _wait(lambda: "saved 3 arena(s)" in driver.find_element(By.ID, "arena-msg").text, "arena file not saved")
        saved = json.loads((out / "arenas.json").read_text())["arenas"]
        assert [a["id"] for a in saved] == ["A1", "A2", "A3"] and saved[2]["roi"][2] >= 8
        _save_shot(driver, tmp_path, "arenas")
        # results: the row, its files, the .xlsx download read back
        driver.find_element(By.ID, "tab-results").click()
        _wait(lambda: "M7" in driver.find_element(By.ID, "results-table").text, "results row not shown")
        _save_shot(driver, tmp_path, "results")
        driver.find_element(By.ID, "dl-xlsx").click()
        xlsx = tmp_path / "downloads" / "results.xlsx"
        _wait(lambda: xlsx.exists() and xlsx.stat().st_size > 0, "no .xlsx downloaded")
        wb = openpyxl.load_workbook(xlsx)
        header = [c.value for c in wb["results"][1]]
        row = [c.value for c in wb["results"][2]]
        assert row[header.index("animal")] == "M7" and row[header.index("group")] == "saline"
        assert "saline" in wb.sheetnames
        print(f"browser test: run up in {started_run - t0:.1f} s, page steps {time.monotonic() - started_run:.1f} s")
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err

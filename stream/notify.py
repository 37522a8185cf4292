"""Tell systemd how the service is doing (sd_notify), without a dependency on libsystemd.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the unit started, and with
``WatchdogSec=`` it kills and restarts a service that stops sending ``WATCHDOG=1``: that is how a
station left alone overnight recovers from a hung camera driver or a deadlocked pipeline. The
protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket), so we write it directly.

Outside systemd (a terminal, a test, CI) ``$NOTIFY_SOCKET`` is unset and every call is a no-op,
so the pipeline calls the notifier unconditionally. A failed send is logged once and never
raised: losing a status line must not stop a recording.

    notifier = notifier_from_env()
    notifier.ready("model loaded, 2 arenas")
    while running:
        ...
        notifier.watchdog()          # every loop; sends at most every WatchdogSec / 2
    notifier.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "notifier_from_env", "WATCHDOG_FRACTION"]

log = logging.getLogger(__name__)

# sd_watchdog_enabled(3) recommends pinging at half the watchdog period, so one late loop
# iteration (a slow model call, a camera re-open) does not get the service killed.
WATCHDOG_FRACTION = 0.5

# systemd's STATUS= is shown in one line of `systemctl status`; longer text is only noise there.
MAX_STATUS_CHARS = 200


def _socket_address(value: str) -> str | bytes:
    """``@name`` means a Linux abstract socket: the address starts with a NUL byte."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _one_line(text: str) -> str:
    """STATUS= ends at the newline that separates fields; keep the text on one line."""
    flat = " ".join(str(text).split())
    return flat[:MAX_STATUS_CHARS]


class SystemdNotifier:
    """Sends sd_notify messages to one socket; a no-op when ``socket_path`` is None.

    ``watchdog_interval_s`` is the full WatchdogSec period (None when the watchdog is off);
    ``clock`` is injectable so the rate limit can be tested without sleeping.
    """

    def __init__(
        self,
        socket_path: str | None,
        *,
        watchdog_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if watchdog_interval_s is not None and watchdog_interval_s <= 0:
            raise ValueError(f"watchdog_interval_s must be > 0, got {watchdog_interval_s}")
        self._address = _socket_address(socket_path) if socket_path else None
        self._socket_path = socket_path
        self._watchdog_interval_s = watchdog_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._last_watchdog: float | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.enabled and self._watchdog_interval_s is not None

    @property
    def watchdog_period_s(self) -> float | None:
        """How often ``watchdog()`` actually sends; None when the watchdog is off."""
        if not self.watchdog_enabled:
            return None
        assert self._watchdog_interval_s is not None
        return self._watchdog_interval_s * WATCHDOG_FRACTION

    def ready(self, status: str = "") -> bool:
        """The service is up: systemd marks the unit started and starts the watchdog clock."""
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        sent = self.send("\n".join(fields))
        if sent and self.watchdog_enabled:
            # READY counts as the first sign of life; the next ping is due half a period later.
            with self._lock:
                self._last_watchdog = self._clock()
        return sent

    def watchdog(self) -> bool:
        """Cheap enough to call on every loop; sends ``WATCHDOG=1`` at most every period/2."""
        period_s = self.watchdog_period_s
        if period_s is None:
            return False
        now = self._clock()
        with self._lock:
            if self._last_watchdog is not None and now - self._last_watchdog < period_s:
                return False
            self._last_watchdog = now
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free text shown by ``systemctl status`` (e.g. fps and immobile seconds)."""
        return self.send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up/stop time (model warm-up on a slow CPU) than TimeoutStartSec."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def stopping(self, status: str = "") -> bool:
        """Shutdown has begun (flushing CSVs, writing the summary)."""
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send("\n".join(fields))

    def send(self, message: str) -> bool:
        """Send one raw datagram; False (and one warning) when not possible. Never raises."""
        if self._address is None:
            return False
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed (%s); further failures are silent",
                            self._socket_path, exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """WatchdogSec as systemd hands it over, or None when it is off or meant for another process.

    systemd sets WATCHDOG_PID to the main PID; a child that inherited the environment
    (a capture process forked by the pipeline) must not think the watchdog is its job.
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID=%r", pid_text)
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    return usec / 1_000_000 if usec > 0 else None


def notifier_from_env(environ: Mapping[str, str] | None = None) -> SystemdNotifier:
    """The notifier for this process: real under systemd, a no-op anywhere else."""
    env = os.environ if environ is None else environ
    socket_path = env.get("NOTIFY_SOCKET") or None
    if socket_path is not None and not (socket_path.startswith("/") or socket_path.startswith("@")):
        log.warning("ignoring NOTIFY_SOCKET=%r: not a path or an abstract socket", socket_path)
        socket_path = None
    interval_s = _watchdog_interval_s(env) if socket_path else None
    notifier = SystemdNotifier(socket_path, watchdog_interval_s=interval_s)
    if notifier.enabled:
        log.debug("systemd notify socket %s, watchdog period %s s", socket_path,
                  notifier.watchdog_period_s)
    return notifier

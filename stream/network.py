"""Which addresses a socket is bound to: loopback (this machine only) or beyond, and a warning for beyond.

Every port ``stream-run`` opens (ZeroMQ PUB, control, Prometheus) binds to loopback by default. A
lab that binds one to another address (``tcp://0.0.0.0:5555``, ``tcp://*:5556``,
``--metrics-addr 0.0.0.0``) exposes it to its network; that must never happen without a word, so
each such bind logs one warning line naming the port. The control endpoint takes commands, so
beyond loopback it also needs a token or an explicit ``--allow-remote-control``
(``stream.control_token``, ``stream.run``).

What counts as loopback: IPv4 127.0.0.0/8, IPv6 ``::1`` (also as ``::ffff:127.x.y.z``) and the
name ``localhost``; ZeroMQ's ``ipc://`` and ``inproc://`` endpoints never leave the machine.
Everything else is beyond: ``*``, ``0.0.0.0``, ``::``, an empty address, any other IP, a host or
interface name (a name's address is not ours to guess; ``lo`` may be called anything).
"""

from __future__ import annotations

import ipaddress
import logging

import zmq

from stream.errors import UserError

__all__ = ["bind_zmq", "endpoint_host", "is_loopback_endpoint", "is_loopback_host", "warn_if_exposed"]

log = logging.getLogger(__name__)

LOCAL_TRANSPORTS = ("ipc", "inproc")  # ZeroMQ transports that cannot leave the machine
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (an IP address or ``localhost``) can only be reached from this machine."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # "*", "", an interface or host name: not provably loopback
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def endpoint_host(endpoint: str) -> str | None:
    """The host a ZeroMQ endpoint binds to (``tcp://HOST:PORT``); None for ``ipc://`` / ``inproc://``."""
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint  # not an endpoint at all: ZeroMQ will refuse it; treat it as not loopback
    if transport.lower() in LOCAL_TRANSPORTS:
        return None
    host, _, _port = rest.rpartition(":")
    return host if host else rest


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when a ZeroMQ endpoint can only be reached from this machine."""
    transport = endpoint.partition("://")[0].lower()
    host = endpoint_host(endpoint)
    if host is None:
        return True
    return transport == "tcp" and is_loopback_host(host)


def warn_if_exposed(what: str, where: str, loopback: bool) -> None:
    """One warning line for a port that listens beyond this machine."""
    if not loopback:
        log.warning("%s listens beyond this machine on %s: anyone on the network who can reach it can connect; "
                    "firewall it (README, 'Network ports and security')", what, where)


def bind_zmq(socket: zmq.Socket, endpoint: str, what: str, example: str) -> None:
    """Bind ``socket`` with one-line errors (``example``: an endpoint to suggest), warning when not loopback."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise UserError(f"{what} {endpoint} is already in use; stop the other program or choose another") from exc
        raise UserError(f"cannot bind {what} {endpoint}: {exc.strerror}; use e.g. {example}") from exc
    warn_if_exposed(what, endpoint, is_loopback_endpoint(endpoint))

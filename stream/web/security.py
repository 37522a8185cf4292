"""Who may use the web page: the address it binds, its token, and the checks on every request.

The page starts and stops trials and shows the camera, so it is held to the control endpoint's
rules (``stream.control_token``, ``stream.network``):

* it binds to loopback by default (``127.0.0.1:8080``);
* another address needs ``--web-token-file FILE`` (created mode 0600 if missing, refused if others
  can read it) and logs the "listens beyond this machine" warning; the browser presents the token
  once as ``http://HOST:PORT/?token=...`` and gets it back as an HttpOnly, SameSite=Strict cookie;
  every request without it is refused (401);
* every state-changing request (POST) must come from the page itself: a JSON body, the page's own
  header (``X-Swim-Stream: 1``, which a cross-site form cannot send without a CORS preflight that
  this server never grants), and, where the browser says, ``Origin`` equal to the page's own origin
  and ``Sec-Fetch-Site: same-origin``; plus the token where one is set;
* without a token (loopback) the ``Host`` header must name a loopback host, so that a web site
  cannot reach the page through DNS rebinding (a name that resolves to 127.0.0.1).

Inputs are validated where ``stream-ctl``'s are: starts and stops go to ``TrialBook.command``
(``stream.ids``), arena files through ``stream.arenas.arenas_from_data``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stream.control_token import check_token, load_or_create_token
from stream.errors import UserError
from stream.network import is_loopback_host, warn_if_exposed

__all__ = ["DEFAULT_WEB_ADDR", "PAGE_HEADER", "TOKEN_COOKIE", "WebAddress", "check_request", "parse_web_addr",
           "web_token_for"]

log = logging.getLogger(__name__)

DEFAULT_WEB_ADDR = "127.0.0.1:8080"  # loopback; 8080 is the usual "second web server" port
TOKEN_COOKIE = "swim_stream_token"
TOKEN_QUERY = "token"
TOKEN_HEADER = "X-Swim-Stream-Token"  # scripts (curl) may send the token as a header instead of the cookie
PAGE_HEADER = "X-Swim-Stream"  # the page's fetch() sends it; a cross-site form or image cannot
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class WebAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)


def parse_web_addr(text: str) -> WebAddress:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``PORT`` -> WebAddress; one-line error otherwise."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or DEFAULT_WEB_ADDR.partition(":")[0]
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"--web {text}: give HOST:PORT, e.g. {DEFAULT_WEB_ADDR}") from None
    if not 0 <= port < 65536:
        raise UserError(f"--web {text}: port must be 0..65535")
    return WebAddress(host, port)


def web_token_for(addr: WebAddress, token_file: Path | None) -> str | None:
    """The token the page will require (None: none), or a one-line refusal to serve beyond loopback without one."""
    if token_file is not None:
        token = load_or_create_token(token_file)
    elif addr.loopback:
        token = None
    else:
        raise UserError(f"--web {addr} listens beyond this machine: give --web-token-file FILE (the browser opens "
                        "http://HOST:PORT/?token=<the file's token> once)")
    warn_if_exposed("web page", str(addr), addr.loopback)
    return token


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


def check_request(method: str, headers, cookies, token: str | None) -> str | None:
    """Why a request is refused (one line), or None when it may go on. ``headers``: case-insensitive mapping."""
    if token is None and not is_loopback_host(_host_name(headers.get("Host", ""))):
        return "Host is not this machine (the page answers loopback names only without a token)"
    if token is not None and not (check_token(cookies.get(TOKEN_COOKIE), token)
                                  or check_token(headers.get(TOKEN_HEADER), token)):
        return f"wrong or missing token: open http://HOST:PORT/?{TOKEN_QUERY}=<the token in --web-token-file>"
    if method in SAFE_METHODS:
        return None
    if headers.get(PAGE_HEADER) != "1" or not headers.get("Content-Type", "").startswith("application/json"):
        return f"state-changing requests come from the page (JSON with {PAGE_HEADER}: 1)"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != headers.get("Host", ""):
        return "cross-origin request refused"
    if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    return None
